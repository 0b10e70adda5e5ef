"""What the component functions of :mod:`components.ops` share: turning a step's result into KFP outputs.
(Imported by the components at run time from the installed package: a component ships only its own source.)"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ahps_core.checks import finite_items


def log_metrics(metrics: Any, values: Mapping[str, Any], keys: Iterable[str] | None = None) -> None:
    """The finite numeric entries of ``values`` (only ``keys`` when given) as KFP metrics of ``metrics``."""
    chosen = values if keys is None else {k: values.get(k) for k in keys}
    for key, value in finite_items(chosen).items():
        metrics.log_metric(key, value)


def set_metadata(artifact: Any, values: Mapping[str, Any], keys: Iterable[str]) -> None:
    """``artifact.metadata[key] = values[key]`` for every key."""
    for key in keys:
        artifact.metadata[key] = values.get(key)


def scalars(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A step's summary without its nested values: what a ParallelFor iteration hands to the fan-in step."""
    return {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}


def pack_outputs(pack: Any, summaries: list[Mapping[str, Any]], model: Any, metrics: Any,
                 keys: Iterable[str]) -> list[dict[str, Any]]:
    """A pack's KFP outputs: its model artifact's metadata (label, architectures, trainings, reused, MLflow run ids),
    each run's ``keys`` as metrics named ``<arch>-<arm>-s<seed>-<key>``; returns the runs' :func:`scalars`."""
    from ahps_core.storage import slug

    model.metadata.update({"label": pack.get("label", ""), "archs": list(pack.get("archs", [])),
                           "trainings": len(summaries),
                           "reused": sum(1 for s in summaries if s.get("reused")),
                           "mlflow_run_ids": [s.get("mlflow_run_id") for s in summaries]})
    for s in summaries:
        name = f"{slug(str(s.get('arch')))}-{s.get('arm') or s.get('recipe')}-s{s.get('seed')}"
        log_metrics(metrics, {f"{name}-{k}": s.get(k) for k in keys})
    return [scalars(s) for s in summaries]

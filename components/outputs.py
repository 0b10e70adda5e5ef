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

"""What every pipeline step shares: the two arms, artifact file names, the per-task environment, the run-group
key and its parent run, the dataset a step trains on, and the assembly of one training's configuration.

Arms (the word "recipe" in MLflow tags and run keys means the arm): **autoscaled** trains with the LR transferred
from the proxy's base LR and the architecture-aware init; **fixed** trains every architecture with one LR and the
default (PyTorch) init: the family's fixed arm (:data:`ahps_core.protocol.FIXED_ARMS`: NB201's LR 0.1 for nb201,
the base LR for mlp/cnn). The training *preset* (optimizer, schedule, batch: :mod:`ahps_core.presets`) is a
different thing and applies to both arms.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError

ARMS = ("autoscaled", "fixed")
INIT_OF_ARM = {"autoscaled": "arch-aware", "fixed": "default"}

SEARCH_FILE = "search.json"
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
SUMMARY_MD_FILE = "summary.md"
SAMPLE_FILE = "sample.json"
RANKING_REPORT_FILE = "ranking_report.json"


def log(step: str, message: str) -> None:
    """A progress line of a step (the local runner shows exactly these lines); one line, credentials redacted."""
    from ahps_core.errors import one_line, redact_secrets

    print(f"[ahps {step}] {redact_secrets(one_line(message))}", flush=True)


def log_journaled(step: str, tr, what: str) -> None:
    """Say what did not reach MLflow (``tr`` journaled it, see :mod:`ahps_core.tracking.journal`), if anything."""
    if tr.journaled:
        log(step, f"{what}: MLflow unavailable ({tr.offline}): {tr.journaled} operation(s) not logged, kept in "
                  f"{tr.journal.path}; `ahps sync` or the next run of run group {tr.run_group!r} replays them")


def prepare_env(s3_endpoint: str = "") -> None:
    """Per-task environment: the S3 endpoint (data, checkpoints, MLflow's client-side S3 artifacts), a usable
    dataset cache dir, quiet MLflow, and in a kfp executor process the fast exit once the task is done
    (:mod:`ahps_core.fast_exit`). Credentials are never parameters: they come from the environment (Kubernetes
    secrets as env vars on a cluster)."""
    from ahps_core import fast_exit

    fast_exit.install()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLBACKEND", "Agg")
    if s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3_endpoint
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", s3_endpoint)
    cache = os.environ.get("AHPS_DATA_CACHE")
    if cache:  # the cluster mounts a cache volume there; elsewhere (a compiled YAML run locally) it may not exist
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
            usable = os.access(cache, os.W_OK)
        except OSError:
            usable = False
        if not usable:
            os.environ.pop("AHPS_DATA_CACHE")


def resolve_run_group(run_group: str, job_id: str = "") -> str:
    """The run-group key: ``run_group`` when given, else the pipeline job's id (unique per KFP run, kept by KFP
    when a failed run is retried, so a retry reuses what the failed attempt finished)."""
    group = (run_group or "").strip()
    if group:
        return group
    job = (job_id or "").strip()
    if not job or job.startswith("{{"):
        raise ConfigError("run_group is empty and no pipeline job id is available: pass run_group")
    return f"kfp-{job}"


def tracker(tracking_uri: str, experiment: str, run_group: str):
    """The :class:`~ahps_core.tracking.Tracker` of a run group (mlflow is imported on first use)."""
    from ahps_core.tracking import Tracker

    return Tracker(tracking_uri, experiment, run_group)


def open_run_group(*, pipeline: str, tracking_uri: str, experiment: str, run_group: str, name: str,
                   params: Mapping[str, Any], tags: Mapping[str, Any], step: str):
    """``(tracker, parent run)`` of a pipeline run: the only place a parent run is created. The tracking store is
    checked first (before anything is trained or fetched), then what an earlier run of this group journaled is
    replayed; the parent is created when missing (claimed: concurrent runs of the group share one), with the
    pipeline's parameters as params (a reused group with other params is a ConfigError) and ``tags``."""
    from ahps_core.tracking import check_tracking_uri, journal_root, pending_files, replay

    uri = check_tracking_uri(tracking_uri)
    if pending_files(journal_root(), run_group):  # what an earlier run of this group could not log
        report = replay(uri, journal_root(), run_group=run_group, log=lambda line: log(step, line))
        log(step, report.line())
    tr = tracker(uri, experiment, run_group)
    parent = tr.ensure_parent(name=name, params=dict(params), tags={"pipeline": pipeline, **tags})
    log(step, f"MLflow parent run {parent.run_id} ({'reused' if parent.reused else 'created'}), run group "
              f"{run_group!r}, experiment {experiment!r} ({tr.experiment_id})")
    return tr, parent


def load_training_data(dataset: str, data_source: str, *, checksums_file: str = "", eval_part: str = "",
                       s3_endpoint: str = "", split_file: str = ""):
    """The :class:`ahps_core.data.DatasetSplit` a step uses: ``dataset`` from ``data_source``, verified against
    ``checksums_file`` when it applies there (:func:`ahps_core.data.checksums.load_checksums`), split by NB201's
    ``split_file`` (a path or ``s3://``; empty: a seeded half, :mod:`ahps_core.data.datasets`), evaluated on
    ``eval_part`` (a part of the split; empty: the dataset's eval part)."""
    from ahps_core.data import load_dataset
    from ahps_core.data.checksums import load_checksums

    checksums = load_checksums(checksums_file, data_source=data_source) if checksums_file else None
    data = load_dataset(dataset, data_source or None, checksums=checksums, endpoint_url=s3_endpoint or None,
                        split_file=split_file or None)
    if eval_part and eval_part != data.eval_part:
        if eval_part not in data.parts:
            raise ConfigError(f"dataset {dataset} has no part {eval_part!r} to evaluate on: it has "
                              f"{', '.join(data.parts)}")
        data = dataclasses.replace(data, eval_part=eval_part)
    return data


def data_info(data) -> dict[str, Any]:
    """What a training was evaluated on, for its result: the split (a file's md5 and whether it is NB201's), the
    evaluated part, its size and a hash of its indices where the split carved it."""
    meta = data.metadata
    info = {"dataset": data.name, "split": meta.get("split"), "eval_part": data.eval_part,
            "eval_images": len(data.eval)}
    for key in ("split_md5", "split_nb201", "split_verified"):
        if key in meta:
            info[key] = meta[key]
    if data.eval_part in (meta.get("part_indices") or {}):
        info["eval_indices"] = meta["part_indices"][data.eval_part]
    return info


def train_config(
    *, family: str, arch: str, dataset: str, data_source: str = "", epochs: int, lr: float, init: str, seed: int,
    train_recipe: str = "", batch_size: int = 0, width: int = 0, max_steps_per_epoch: int = 0, device: str = "auto",
    C: int = 0, N: int = 0, amp: str = "", cell: str = "", indegree: str = "",
):
    """The :class:`ahps_core.train.TrainConfig` of one training of a pipeline.

    ``train_recipe``: a preset of :data:`ahps_core.presets.PRESETS`; empty: the family's default
    (:func:`ahps_core.presets.default_preset`: NB201's recipe for ``nb201``, the reference experiments' plain SGD
    at the probe's batch and width for ``mlp``/``cnn``, so the transferred LR is used in the setting it was found
    in). ``0`` for batch_size/width/max_steps_per_epoch and the nb201 macro network's ``C``/``N``: the preset's
    (TrainConfig's) value; empty ``amp``/``cell``/``indegree``: the preset's (TrainConfig's). Evaluation runs at
    least at the last epoch.
    """
    from ahps_core.presets import default_preset, default_width, preset_values
    from ahps_core.train_config import TrainConfig

    values = preset_values(train_recipe or default_preset(family), family=family, dataset=dataset)
    if family in ("mlp", "cnn") and values.get("width") is None:
        values["width"] = default_width(family, dataset)
    values.update(family=family, arch=arch, dataset=dataset, data_root=data_source or None, epochs=int(epochs),
                  lr=float(lr), init=init, seed=int(seed), device=device or "auto")
    if not values.get("eval_every"):
        values["eval_every"] = max(int(epochs), 1)  # accuracy is the point: evaluate at the last epoch at least
    for name, value in (("batch_size", batch_size), ("width", width), ("max_steps_per_epoch", max_steps_per_epoch),
                        ("C", C), ("N", N)):
        if value:
            values[name] = int(value)
    for name, text in (("amp", amp), ("cell", cell), ("indegree", indegree)):
        if text:
            values[name] = str(text)
    return TrainConfig.from_dict(values).validated()


def accuracy_of(result: Mapping[str, Any]) -> float:
    """Accuracy of a training for a comparison: its final eval accuracy; a diverged (or unevaluated) run counts
    as 0, so it ranks last."""
    acc = result.get("eval_acc")
    if result.get("status") != "completed" or acc is None:
        return 0.0
    acc = float(acc)
    return acc if math.isfinite(acc) else 0.0


def competition_ranks(values: Mapping[str, float]) -> dict[str, int]:
    """Rank 1 = the largest value; ties share the better rank (1, 2, 2, 4)."""
    return {key: 1 + sum(1 for other in values.values() if other > value) for key, value in values.items()}

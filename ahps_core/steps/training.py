"""The training step of both pipelines: one architecture x arm x seed, idempotent on its run key.

Checkpoints live at ``<checkpoint_root>/<group>/<arch>/<arm>/<seed>/`` (a directory or an S3 prefix: downloaded
before training, uploaded after every epoch), so a retried (preempted) task resumes where the last one stopped;
with an empty root they live in the task's model artifact. Epoch metrics go to MLflow as step metrics as they
come, from a background thread (training never waits on MLflow; epochs a resumed run already holds are not logged
again); when MLflow is unavailable they, and everything else the step logs, are journaled for a later replay
(:mod:`ahps_core.tracking.journal`). ``result.json`` is written to the model directory before anything is
reported to MLflow.

The bookkeeping of one training (:class:`RunSpec`: what it is and how it is recorded; :class:`RunRecorder`: its
checkpoint, epoch metrics, files and final metrics) is shared with the packed step (:mod:`ahps_core.steps.pack`),
so a run trained in a pack records exactly the MLflow run and the files :func:`train_step` records.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahps_core.checks import as_int
from ahps_core.errors import AhpsError
from ahps_core.jsonio import write_json
from ahps_core.reports import fmt
from ahps_core.steps.common import (
    INIT_OF_ARM,
    RESULT_FILE,
    data_info,
    load_training_data,
    log,
    log_journaled,
    tracker,
    train_config,
)


@dataclass
class RunSpec:
    """What one training of a plan item is: its configuration and hash, run key parts, MLflow tags and params,
    output directory and progress label (:func:`run_spec`)."""

    item: Mapping[str, Any]
    config: Any
    chash: str
    arch: str
    arm: str
    seed: int
    tags: dict[str, Any]
    params: dict[str, Any]
    model_path: Path
    label: str
    code: str = ""

    @property
    def run_name(self) -> str:
        """One display name per cell: its short code (``ahps.arch_code``; the NB201 string is ``ahps.arch_string``),
        so MLflow never truncates it."""
        return f"{self.arm} {self.code or self.arch} s{self.seed}"


def arch_code(family: str, arch: str, item: Mapping[str, Any]) -> str:
    """The short name of a target: the plan's ``arch_code``, NB201's digit code of a cell string, else ``arch``."""
    if item.get("arch_code"):
        return str(item["arch_code"])
    if family == "nb201" and "|" in arch:
        from ahps_core.graph import nb201_code, parse_arch

        try:
            return nb201_code(parse_arch(arch, "nb201"))
        except ValueError:
            return arch
    return arch


def run_spec(
    *, item: Mapping[str, Any], family: str, dataset: str, data_source: str, epochs: int, train_recipe: str,
    batch_size: int, width: int, max_steps_per_epoch: int, device: str, rule: str, convention: str, model_dir: str,
    C: int = 0, N: int = 0, eval_part: str = "", split_file: str = "", amp: str = "", cell: str = "",
    indegree: str = "", extra_tags: Mapping[str, Any] | None = None, extra_params: Mapping[str, Any] | None = None,
) -> RunSpec:
    """The :class:`RunSpec` of plan ``item`` (``arch``, ``arm``, ``seed``, ``lr``, ``init``, ...); no torch import,
    so a finished run can be looked up before anything heavy is loaded."""
    arch, arm, seed = str(item["arch"]), str(item["arm"]), as_int(item["seed"], "seed")
    lr, init = float(item["lr"]), str(item.get("init") or INIT_OF_ARM[arm])
    config = train_config(family=family, arch=arch, dataset=dataset, data_source=data_source, epochs=as_int(epochs),
                          lr=lr, init=init, seed=seed, train_recipe=train_recipe, batch_size=as_int(batch_size),
                          width=as_int(width), max_steps_per_epoch=as_int(max_steps_per_epoch), device=device,
                          C=as_int(C or 0), N=as_int(N or 0), amp=amp, cell=cell, indegree=indegree)
    data_extra = {k: v for k, v in (("eval_part", eval_part), ("split_file", split_file)) if v}
    chash = config.hash(data_extra) if data_extra else config.hash()
    code = arch_code(family, arch, item)
    tags = {"recipe": arm, "family": family, "arch": arch, "dataset": dataset, "seed": seed, "rule": rule,
            "convention": convention, "ahps.arch_code": code, "ahps.arch_string": arch, **dict(extra_tags or {})}
    params = {"lr": lr, "base_lr": float(item.get("base_lr", lr)), "lr_ratio": float(item.get("ratio", 1.0)),
              "init": init, "epochs": config.epochs, "batch_size": config.batch_size, "momentum": config.momentum,
              "weight_decay": config.weight_decay, "schedule": config.schedule, "width": config.width,
              "seed": seed, "recipe": arm, "arch": arch, "max_steps_per_epoch": config.max_steps_per_epoch,
              "train_recipe": train_recipe or _default_preset(family)}
    if family == "nb201":
        params.update(C=config.C, N=config.N, cell=config.cell)
    if config.indegree != "live":
        params["indegree"] = config.indegree
    if config.amp != "auto":
        params["amp"] = config.amp
    params.update(data_extra)
    params.update(dict(extra_params or {}))
    return RunSpec(item, config, chash, arch, arm, seed, tags, params, Path(model_dir), f"{arch} {arm} seed {seed}",
                   code)


def step_data(dataset: str, data_source: str, *, checksums_file: str = "", eval_part: str = "",
              split_file: str = "", s3_endpoint: str = ""):
    """The dataset a training step loads itself (checksums, another eval part or a split file asked for), or None:
    the engine loads the dataset's default. A run's summary records what it was evaluated on (``data``) exactly
    when the step loaded it, packed or not."""
    if not (checksums_file or eval_part or split_file):
        return None
    return load_training_data(dataset, data_source, checksums_file=checksums_file, eval_part=eval_part,
                              s3_endpoint=s3_endpoint, split_file=split_file)


def reused_summary(run, spec: RunSpec) -> dict[str, Any]:
    """The recorded summary of a reused (finished) run, written to the run's ``result.json``."""
    spec.model_path.mkdir(parents=True, exist_ok=True)
    summary = {**(run.summary or {}), "reused": True, "mlflow_run_id": run.run_id}
    write_json(spec.model_path / RESULT_FILE, summary)
    log("train", f"{spec.label}: reused the finished MLflow run {run.run_id} (not retrained): "
                 f"eval acc {fmt(summary.get('eval_acc'))}")
    return summary


def log_start(run, spec: RunSpec) -> None:
    c = spec.config
    log("train", f"{spec.label}: LR {c.lr:.6g}, init {c.init}, {c.epochs} epochs, batch {c.batch_size} "
                 f"-> MLflow run {run.run_id}{' (resumed)' if run.resumed else ''}")


def log_end(spec: RunSpec, summary: Mapping[str, Any]) -> None:
    log("train", f"{spec.label}: {summary['status']}, eval acc {fmt(summary.get('eval_acc'))} "
                 f"({summary['seconds']:.1f} s)")


def add_extra_metrics(run, summary: dict[str, Any],
                      extra_metrics: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None) -> None:
    """``extra_metrics(summary)`` logged to ``run`` and kept in ``summary`` (nothing without one)."""
    if extra_metrics is not None:
        extra = dict(extra_metrics(summary))
        run.log_metrics(extra)
        summary.update(extra)


def train_step(
    *, item: Mapping[str, Any], family: str, dataset: str, data_source: str, epochs: int, train_recipe: str,
    batch_size: int, width: int, max_steps_per_epoch: int, device: str, rule: str, convention: str,
    tracking_uri: str, experiment: str, run_group: str, checkpoint_root: str, s3_endpoint: str, model_dir: str,
    C: int = 0, N: int = 0, checksums_file: str = "", eval_part: str = "", split_file: str = "", amp: str = "",
    cell: str = "", indegree: str = "",
    extra_tags: Mapping[str, Any] | None = None, extra_params: Mapping[str, Any] | None = None,
    extra_metrics: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``item`` (``arch``, ``arm``, ``seed``, ``lr``, ``init``, ...: one entry of the plan). A FINISHED MLflow
    run of the same key ``<group>/<arch>/<arm>/<seed>`` and configuration is returned as it is ("reused").

    ``C``/``N``: the nb201 macro network (0: the default 16/5). ``checksums_file``: md5s of dataset files without
    a known checksum (generated data). ``eval_part``: the dataset part evaluated (default: the dataset's eval
    part). ``split_file``: NB201's split file of the dataset (path or ``s3://``; the summary's ``data`` records what
    was evaluated). ``amp``/``cell``/``indegree``: training options (empty: the preset's). ``extra_tags``/
    ``extra_params`` are added to the MLflow run's; ``extra_metrics(summary)`` gives metrics logged (and kept in the
    summary) once the training is done.
    """
    from ahps_core.tracking import tracked_step

    spec = run_spec(item=item, family=family, dataset=dataset, data_source=data_source, epochs=epochs,
                    train_recipe=train_recipe, batch_size=batch_size, width=width,
                    max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule, convention=convention,
                    model_dir=model_dir, C=C, N=N, eval_part=eval_part, split_file=split_file, amp=amp, cell=cell,
                    indegree=indegree, extra_tags=extra_tags, extra_params=extra_params)
    spec.model_path.mkdir(parents=True, exist_ok=True)
    tr = tracker(tracking_uri, experiment, run_group)
    with tracked_step(tr, tr.key(spec.arch, spec.arm, spec.seed), name=spec.run_name, kind="train",
                      identity=spec.chash, tags=spec.tags, params=spec.params,
                      log=lambda line: log("train", line)) as run:
        if run.reused:
            return reused_summary(run, spec)
        log_start(run, spec)
        recorder = RunRecorder(run, spec, checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint,
                               run_group=run_group)
        data = step_data(dataset, data_source, checksums_file=checksums_file, eval_part=eval_part,
                         split_file=split_file, s3_endpoint=s3_endpoint)
        from ahps_core.train import train

        result = train(recorder.config, data=data, callback=recorder.on_epoch, progress=False)
        summary = recorder.finish(result, data)
        add_extra_metrics(run, summary, extra_metrics)
        run.summary = summary
    log_end(spec, summary)
    log_journaled("train", tr, spec.label)
    return summary


def _default_preset(family: str) -> str:
    from ahps_core.presets import default_preset

    return default_preset(family)


def _checkpoint_sync(checkpoint_root: str, run_group: str, arch: str, arm: str, seed: int, s3_endpoint: str,
                     model_path: Path):
    """``(sync, scratch dir or None)``: where this training's checkpoint lives (see the module docstring)."""
    from ahps_core.storage import CheckpointSync, checkpoint_location

    if not checkpoint_root:
        return CheckpointSync(str(model_path / "checkpoint")), None
    location = checkpoint_location(checkpoint_root, run_group, arch, arm, seed)
    scratch = tempfile.mkdtemp(prefix="ahps-ckpt-") if location.startswith("s3://") else None
    return CheckpointSync(location, scratch, endpoint_url=s3_endpoint or None), scratch


class RunRecorder:
    """The bookkeeping of one training around the engine: its checkpoint location (pulled on start, pushed after
    every epoch), the epoch metrics to MLflow as they come (:meth:`on_epoch`, the engine's callback; sent from a
    background thread, epochs a resumed run already holds skipped), and the summary, files and final metrics once
    it is done (:meth:`finish`). ``config`` is the training's configuration with its local checkpoint directory."""

    def __init__(self, run, spec: RunSpec, *, checkpoint_root: str, s3_endpoint: str, run_group: str) -> None:
        self.run, self.spec = run, spec
        self.sync, self.scratch = _checkpoint_sync(checkpoint_root, run_group, spec.arch, spec.arm, spec.seed,
                                                   s3_endpoint, spec.model_path)
        pulled = self.sync.pull()
        if pulled:
            log("train", f"{spec.label}: fetched {', '.join(pulled)} from {self.sync.location}")
        self.config = spec.config.replace(checkpoint_dir=str(self.sync.local_dir))
        #: a resumed run: the epochs that reached MLflow before
        self.logged_epochs: set[int] = run.logged_steps("train_loss")

    def on_epoch(self, record: dict[str, Any]) -> None:
        label, config = self.spec.label, self.spec.config
        try:
            self.sync.push()
        except AhpsError as exc:  # the next epoch tries again; the final push must succeed
            log("train", f"{label}: checkpoint upload failed ({exc}); retrying after the next epoch")
        epoch = int(record["epoch"])
        if epoch not in self.logged_epochs:
            self.run.log_history_async([record])  # sent (or journaled) in the background: training goes on
            self.logged_epochs.add(epoch)
        if epoch in (1, config.epochs) or epoch % max(1, config.epochs // 4) == 0:  # a few lines per training
            log("train", f"{label}: epoch {epoch}/{config.epochs} loss {fmt(record.get('train_loss'))} "
                         f"eval acc {fmt(record.get('eval_acc'))}")

    def finish(self, result, data=None) -> dict[str, Any]:
        """The summary of the finished ``result`` (``data``: the dataset the step loaded, recorded as the summary's
        ``data``): written to the output directory first, then logged."""
        run, spec, sync, config, item = self.run, self.spec, self.sync, self.spec.config, self.spec.item
        model_path, chash, arm = spec.model_path, spec.chash, spec.arm
        sync.push()
        final = result.final or {}
        summary = {
            "arch": config.arch, "arm": arm, "recipe": arm, "seed": config.seed, "lr": config.lr,
            "base_lr": float(item.get("base_lr", config.lr)),
            "predicted_lr": float(item.get("predicted_lr", config.lr)),
            "ratio": float(item.get("ratio", 1.0)), "init": config.init, "status": result.status,
            "eval_acc": final.get("eval_acc"), "eval_loss": final.get("eval_loss"),
            "train_loss": final.get("train_loss"), "train_acc": final.get("train_acc"), "epochs": config.epochs,
            "epochs_done": len(result.history), "resumed_from": result.resumed_from, "seconds": result.seconds,
            "images_per_s": result.images_per_s, "num_params": result.num_params, "device": result.device,
            "amp": result.amp, "config_hash": chash, "reused": False, "mlflow_run_id": run.run_id,
            "checkpoint": sync.location,
        }
        if data is not None:
            summary["data"] = data_info(data)
        # 1. results to the output directory (the KFP artifact), 2. then to MLflow.
        write_json(model_path / RESULT_FILE, {**summary, "history": result.history, "config": result.config})
        if sync.local_dir != model_path / "checkpoint":
            for name in ("checkpoint.json", "checkpoint.pt", RESULT_FILE):
                src = sync.local_dir / name
                if src.is_file():
                    (model_path / "checkpoint").mkdir(exist_ok=True)
                    shutil.copy2(src, model_path / "checkpoint" / name)
        run.flush()
        missing = [r for r in result.history if int(r["epoch"]) not in self.logged_epochs]
        if missing:  # epochs of an earlier attempt (restored from the checkpoint) that never reached MLflow
            run.log_history(missing)
        run.log_metrics({"final_eval_acc": final.get("eval_acc"), "final_train_loss": final.get("train_loss"),
                         "final_train_acc": final.get("train_acc"), "images_per_s": result.images_per_s,
                         "train_seconds": result.seconds, "num_params": result.num_params},
                        step=len(result.history))
        run.set_tags({"ahps.status": result.status})
        run.log_file(model_path / RESULT_FILE)
        ckpt = sync.local_dir / "checkpoint.pt"
        if ckpt.is_file():
            run.log_file(ckpt, "model")
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return summary

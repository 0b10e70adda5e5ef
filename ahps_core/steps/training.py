"""The training step of both pipelines: one architecture x arm x seed, idempotent on its run key.

Checkpoints live at ``<checkpoint_root>/<group>/<arch>/<arm>/<seed>/`` (a directory or an S3 prefix: downloaded
before training, uploaded after every epoch), so a retried (preempted) task resumes where the last one stopped;
with an empty root they live in the task's model artifact. Epoch metrics go to MLflow as step metrics as they
come, from a background thread (training never waits on MLflow; epochs a resumed run already holds are not logged
again); when MLflow is unavailable they, and everything else the step logs, are journaled for a later replay
(:mod:`ahps_core.tracking.journal`). ``result.json`` is written to the model directory before anything is
reported to MLflow.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
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

    arch, arm, seed = str(item["arch"]), str(item["arm"]), as_int(item["seed"], "seed")
    lr, init = float(item["lr"]), str(item.get("init") or INIT_OF_ARM[arm])
    model_path = Path(model_dir)
    model_path.mkdir(parents=True, exist_ok=True)
    config = train_config(family=family, arch=arch, dataset=dataset, data_source=data_source, epochs=as_int(epochs),
                          lr=lr, init=init, seed=seed, train_recipe=train_recipe, batch_size=as_int(batch_size),
                          width=as_int(width), max_steps_per_epoch=as_int(max_steps_per_epoch), device=device,
                          C=as_int(C or 0), N=as_int(N or 0), amp=amp, cell=cell, indegree=indegree)
    data_extra = {k: v for k, v in (("eval_part", eval_part), ("split_file", split_file)) if v}
    chash = config.hash(data_extra) if data_extra else config.hash()
    tr = tracker(tracking_uri, experiment, run_group)
    label = f"{arch} {arm} seed {seed}"
    tags = {"recipe": arm, "family": family, "arch": arch, "dataset": dataset, "seed": seed, "rule": rule,
            "convention": convention, **dict(extra_tags or {})}
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
    with tracked_step(tr, tr.key(arch, arm, seed), name=f"{arm} {arch} s{seed}", kind="train", identity=chash,
                      tags=tags, params=params, log=lambda line: log("train", line)) as run:
        if run.reused:
            summary = {**(run.summary or {}), "reused": True, "mlflow_run_id": run.run_id}
            write_json(model_path / RESULT_FILE, summary)
            log("train", f"{label}: reused the finished MLflow run {run.run_id} (not retrained): "
                         f"eval acc {fmt(summary.get('eval_acc'))}")
            return summary
        log("train", f"{label}: LR {lr:.6g}, init {init}, {config.epochs} epochs, batch {config.batch_size} "
                     f"-> MLflow run {run.run_id}{' (resumed)' if run.resumed else ''}")
        summary = _train_and_log(run, config, item, label=label, arm=arm, chash=chash, model_path=model_path,
                                 checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, run_group=run_group,
                                 data_args=(dataset, data_source, checksums_file, eval_part, split_file))
        if extra_metrics is not None:
            extra = dict(extra_metrics(summary))
            run.log_metrics(extra)
            summary.update(extra)
        run.summary = summary
    log("train", f"{label}: {summary['status']}, eval acc {fmt(summary.get('eval_acc'))} "
                 f"({summary['seconds']:.1f} s)")
    log_journaled("train", tr, label)
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


def _train_and_log(run, config, item: Mapping[str, Any], *, label: str, arm: str, chash: str, model_path: Path,
                   checkpoint_root: str, s3_endpoint: str, run_group: str,
                   data_args: tuple[str, str, str, str, str]):
    from ahps_core.train import train

    sync, scratch = _checkpoint_sync(checkpoint_root, run_group, config.arch, arm, config.seed, s3_endpoint,
                                     model_path)
    pulled = sync.pull()
    if pulled:
        log("train", f"{label}: fetched {', '.join(pulled)} from {sync.location}")
    logged_epochs: set[int] = run.logged_steps("train_loss")  # a resumed run: what reached MLflow before

    def on_epoch(record: dict[str, Any]) -> None:
        try:
            sync.push()
        except AhpsError as exc:  # the next epoch tries again; the final push must succeed
            log("train", f"{label}: checkpoint upload failed ({exc}); retrying after the next epoch")
        epoch = int(record["epoch"])
        if epoch not in logged_epochs:
            run.log_history_async([record])  # sent (or journaled) in the background: training goes on
            logged_epochs.add(epoch)
        if epoch in (1, config.epochs) or epoch % max(1, config.epochs // 4) == 0:  # a few lines per training
            log("train", f"{label}: epoch {epoch}/{config.epochs} loss {fmt(record.get('train_loss'))} "
                         f"eval acc {fmt(record.get('eval_acc'))}")

    dataset, data_source, checksums_file, eval_part, split_file = data_args
    data = None
    if checksums_file or eval_part or split_file:
        data = load_training_data(dataset, data_source, checksums_file=checksums_file, eval_part=eval_part,
                                  s3_endpoint=s3_endpoint, split_file=split_file)
    result = train(config.replace(checkpoint_dir=str(sync.local_dir)), data=data, callback=on_epoch, progress=False)
    sync.push()
    final = result.final or {}
    summary = {
        "arch": config.arch, "arm": arm, "recipe": arm, "seed": config.seed, "lr": config.lr,
        "base_lr": float(item.get("base_lr", config.lr)), "predicted_lr": float(item.get("predicted_lr", config.lr)),
        "ratio": float(item.get("ratio", 1.0)), "init": config.init, "status": result.status,
        "eval_acc": final.get("eval_acc"), "eval_loss": final.get("eval_loss"), "train_loss": final.get("train_loss"),
        "train_acc": final.get("train_acc"), "epochs": config.epochs, "epochs_done": len(result.history),
        "resumed_from": result.resumed_from, "seconds": result.seconds, "images_per_s": result.images_per_s,
        "num_params": result.num_params, "device": result.device, "amp": result.amp, "config_hash": chash,
        "reused": False, "mlflow_run_id": run.run_id, "checkpoint": sync.location,
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
    missing = [r for r in result.history if int(r["epoch"]) not in logged_epochs]
    if missing:  # epochs of an earlier attempt (restored from the checkpoint) that never reached MLflow
        run.log_history(missing)
    run.log_metrics({"final_eval_acc": final.get("eval_acc"), "final_train_loss": final.get("train_loss"),
                     "final_train_acc": final.get("train_acc"), "images_per_s": result.images_per_s,
                     "train_seconds": result.seconds, "num_params": result.num_params}, step=len(result.history))
    run.set_tags({"ahps.status": result.status})
    run.log_file(model_path / RESULT_FILE)
    ckpt = sync.local_dir / "checkpoint.pt"
    if ckpt.is_file():
        run.log_file(ckpt, "model")
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary

"""What the pipeline steps do, as plain Python functions (no kfp): the KFP components in :mod:`components.ops`
are one-line wrappers around these, so the steps can be tested, reused (e.g. by a ``reevaluate`` pipeline) and
run without a pipeline.

Every step takes the MLflow tracking URI, the experiment and the run-group key, and is idempotent (see
:mod:`ahps_core.tracking`): a finished training is never re-run for the same key, its recorded result is
returned instead. Every step writes its results to its output directory *before* reporting them to MLflow, so
nothing already computed is lost when the tracking server fails.

Recipes (issue #5): **autoscaled** trains with the LR transferred from the proxy's base LR
(:class:`ahps_core.scaling.Transferer`) and the architecture-aware init; **fixed** trains every architecture
with one LR (the base LR, or ``fixed_lr``) and the family's default init (PyTorch's).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ahps_core.errors import AhpsError, ArchSpecError, ConfigError

RECIPES = ("autoscaled", "fixed")
INIT_OF_RECIPE = {"autoscaled": "arch-aware", "fixed": "default"}
LR_SEARCH_KEY = "lr-search"
COMPARE_KEY = "compare"
SUMMARY_FILE = "summary.json"
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"


def log(step: str, message: str) -> None:
    print(f"[ahps {step}] {message}", flush=True)


# --- environment --------------------------------------------------------------------------------------------


def prepare_env(s3_endpoint: str = "") -> None:
    """Per-task environment: the S3 endpoint (for data, checkpoints and MLflow's client-side S3 artifacts), a
    usable dataset cache dir, quiet MLflow. Credentials are never parameters: they come from the environment
    (Kubernetes secrets as env vars on a cluster)."""
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


def load_checksums(path: str | os.PathLike[str], *, data_source: str | None = None) -> dict[str, str] | None:
    """The ``{relative file name: md5}`` map of a checksums file, for dataset files without a known checksum
    (generated or custom data; ``load_dataset(checksums=...)`` verifies against it).

    The file is JSON: a plain map, or a manifest ``{"data_source": DIR, "synthetic": bool, "md5": {...}}`` as
    ``ahps run reevaluate`` writes next to its generated data. A manifest describes one data source: given
    ``data_source`` and a manifest for another one, the result is None (the checksums do not apply there).
    A missing or malformed file is a :class:`ConfigError` naming it.
    """
    manifest = read_checksums_manifest(path)
    if data_source is not None and manifest.get("data_source") and not _same_source(manifest["data_source"],
                                                                                  data_source):
        return None
    return dict(manifest["md5"])


def read_checksums_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checksums file (see :func:`load_checksums`) as a manifest ``{"data_source", "synthetic", "md5"}``."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"checksums_file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"checksums_file {str(path)!r} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("md5"), dict):
        md5, manifest = data["md5"], data
    else:
        md5, manifest = data, {}
    if not isinstance(md5, dict) or not md5 or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 32 for k, v in md5.items()
    ):
        raise ConfigError(f"checksums_file {str(path)!r} must map relative file names to md5 hex digests, e.g. "
                          '{"cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f"}')
    return {"data_source": str(manifest.get("data_source") or ""), "synthetic": bool(manifest.get("synthetic")),
            "md5": md5}


def _same_source(a: str, b: str) -> bool:
    if a.startswith("s3://") or b.startswith("s3://"):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def load_training_data(dataset: str, data_source: str, *, checksums_file: str = "", eval_part: str = "",
                       s3_endpoint: str = ""):
    """The :class:`ahps_core.data.DatasetSplit` a training step uses: ``dataset`` from ``data_source``, verified
    against ``checksums_file`` when it applies there (:func:`load_checksums`), evaluated on ``eval_part`` (a part
    of the split; empty: the dataset's eval part)."""
    import dataclasses

    from ahps_core.data import load_dataset

    checksums = load_checksums(checksums_file, data_source=data_source) if checksums_file else None
    data = load_dataset(dataset, data_source or None, checksums=checksums, endpoint_url=s3_endpoint or None)
    if eval_part and eval_part != data.eval_part:
        if eval_part not in data.parts:
            raise ConfigError(f"dataset {dataset} has no part {eval_part!r} to evaluate on: it has "
                              f"{', '.join(data.parts)}")
        data = dataclasses.replace(data, eval_part=eval_part)
    return data


def tracker(tracking_uri: str, experiment: str, run_group: str):
    from ahps_core.tracking import Tracker

    return Tracker(tracking_uri, experiment, run_group)


def as_int(value: Any) -> int:
    """ParallelFor items and Struct outputs carry numbers as floats: ``2.0`` -> ``2``."""
    if isinstance(value, bool):
        raise ConfigError(f"expected an integer, got {value!r}")
    f = float(value)
    if not f.is_integer():
        raise ConfigError(f"expected an integer, got {value!r}")
    return int(f)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, sort_keys=False))
    os.replace(tmp, path)
    return path


# --- training configuration ---------------------------------------------------------------------------------


def train_config(
    *, family: str, arch: str, dataset: str, data_source: str = "", epochs: int, lr: float, init: str, seed: int,
    train_recipe: str = "", batch_size: int = 0, width: int = 0, max_steps_per_epoch: int = 0, device: str = "auto",
    C: int = 0, N: int = 0,
):
    """The :class:`ahps_core.train.TrainConfig` of one training of the pipeline.

    ``train_recipe``: a preset of :data:`ahps_core.presets.PRESETS`; empty: the family's default
    (:func:`ahps_core.presets.default_preset`) -- ``nb201`` for nb201; for ``mlp``/``cnn`` ``reference``, the
    reference experiments' plain SGD at a constant LR with the batch size and hidden width of the base-LR probe,
    so the transferred LR is used in the setting it was found in. ``0`` for batch_size/width/max_steps_per_epoch and the
    nb201 macro network's ``C``/``N``: the recipe's (TrainConfig's) value. Evaluation runs at least at the last
    epoch.
    """
    from ahps_core.presets import default_preset, default_width, preset_values
    from ahps_core.train import TrainConfig

    values = preset_values(train_recipe or default_preset(family), family=family, dataset=dataset)
    values.update(family=family, arch=arch, dataset=dataset, data_root=data_source or None, epochs=int(epochs),
                  lr=float(lr), init=init, seed=int(seed), device=device or "auto")
    if not values.get("eval_every"):
        values["eval_every"] = max(int(epochs), 1)  # accuracy is the point: evaluate at the last epoch at least
    if batch_size:
        values["batch_size"] = int(batch_size)
    if width:
        values["width"] = int(width)
    elif family in ("mlp", "cnn"):
        values["width"] = default_width(family, dataset)
    if max_steps_per_epoch:
        values["max_steps_per_epoch"] = int(max_steps_per_epoch)
    if C:
        values["C"] = int(C)
    if N:
        values["N"] = int(N)
    return TrainConfig.from_dict(values).validated()


# --- step 1: base LR on the proxy ---------------------------------------------------------------------------


def find_base_lr_step(
    *, family: str, dataset: str, data_source: str, base_lr: float, lr_grid: Sequence[float], lr_seeds: int,
    width: int, tracking_uri: str, experiment: str, run_group: str, parent_params: Mapping[str, Any],
    out_dir: str, pipeline: str = "transfer", C: int = 0, N: int = 0, checksums_file: str = "",
    s3_endpoint: str = "",
) -> dict[str, Any]:
    """Create (or find) the run group's parent run, then find the base LR on the family's proxy -- or take
    ``base_lr`` when it is > 0 -- and record it in a ``lr-search`` child run. Idempotent: a finished search of
    the same group is reused. Writes ``search.json`` (+ ``lr_curve.png``) to ``out_dir``.

    ``C``/``N`` (nb201; 0: the model's default) size the proxy's macro network; ``checksums_file`` (see
    :func:`load_checksums`): md5s of dataset files without a known checksum (generated data)."""
    from ahps_core.tracking import check_tracking_uri

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = check_tracking_uri(tracking_uri)  # up front: before any training
    tr = tracker(tracking_uri, experiment, run_group)
    parent = tr.ensure_parent(
        name=f"{pipeline} {family}/{dataset} [{run_group}]",
        params={k: v for k, v in parent_params.items()},
        tags={"pipeline": pipeline, "family": family, "dataset": dataset},
    )
    log("find-base-lr", f"MLflow parent run {parent.run_id} ({'reused' if parent.reused else 'created'}), "
                        f"run group {run_group!r}, experiment {experiment!r} ({tr.experiment_id})")
    key = tr.key(LR_SEARCH_KEY)
    given = float(base_lr or 0.0)
    identity = {"family": family, "dataset": dataset, "given": given, "grid": list(lr_grid or []),
                "seeds": int(lr_seeds), "width": int(width or 0)}
    if C or N:
        identity.update(C=int(C or 0), N=int(N or 0))
    chash = _hash(identity)
    ref = tr.find(key)
    if ref is not None and ref.finished and ref.tags.get("ahps.config_hash") == chash:
        summary = tr.load_summary(ref.run_id)
        if summary and summary.get("base_lr"):
            summary["reused"] = True
            write_json(out / "search.json", summary)
            log("find-base-lr", f"reused the finished LR search {ref.run_id}: base LR {summary['base_lr']:.6g}")
            return summary
    ref = tr.start_run(key, name="lr-search", kind="lr-search", config_hash=chash,
                       tags={"family": family, "dataset": dataset})
    t0 = time.perf_counter()
    try:
        if given > 0:
            from ahps_core.checks import check_lr

            summary = {"base_lr": check_lr(given, "base_lr"), "source": "given", "curve": [], "grid": []}
            log("find-base-lr", f"base LR given: {given:.6g} (no search)")
        else:
            from ahps_core.lr_search import default_width, find_base_lr

            extra: dict[str, Any] = {}
            if C:
                extra["C"] = int(C)
            if N:
                extra["N"] = int(N)
            if checksums_file:
                extra["data"] = load_training_data(dataset, data_source, checksums_file=checksums_file,
                                                   s3_endpoint=s3_endpoint)
            result = find_base_lr(
                family, dataset, data_root=data_source or None, grid=list(lr_grid) or None,
                seeds=list(range(int(lr_seeds))),
                width=int(width) if width else (default_width(family, dataset)), **extra,
            )
            summary = {"base_lr": result.best_lr, "source": "search", **result.to_dict()}
            log("find-base-lr", f"base LR {result.best_lr:.6g} from {result.runs_used} probe runs "
                                f"({result.seconds:.1f} s){' -- at the grid edge' if result.at_edge else ''}")
        summary["seconds"] = time.perf_counter() - t0
        summary["run_group"] = run_group
        summary["reused"] = False
        write_json(out / "search.json", summary)
        plot = None
        if summary.get("curve"):
            from ahps_core.plots import plot_lr_curve

            plot = plot_lr_curve(summary, out / "lr_curve.png", title=f"Base-LR search on the {family} proxy")
    except BaseException:
        _safe_finish(tr, ref.run_id, "FAILED")
        raise
    tr.log_params(ref.run_id, {"base_lr": summary["base_lr"], "source": summary["source"],
                               "lr_seeds": int(lr_seeds), "grid_points": len(summary.get("grid") or [])},
                  existing=ref.params, what=key)
    tr.log_metrics(ref.run_id, {"base_lr": summary["base_lr"], "runs_used": summary.get("runs_used", 0),
                                "search_seconds": summary["seconds"]})
    for i, point in enumerate(summary.get("curve") or []):
        tr.log_metrics(ref.run_id, {"probe_mean_loss": point.get("mean_loss"), "probe_lr": point.get("lr")}, step=i)
    tr.log_file(ref.run_id, out / "search.json")
    if plot is not None:
        tr.log_file(ref.run_id, plot, "plots")
    tr.save_summary(ref.run_id, summary)
    tr.finish(ref.run_id)
    tr.log_params(parent.run_id, {"base_lr": summary["base_lr"]}, existing=parent.params, what="parent run")
    return summary


def _hash(data: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(_jsonable(data), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe_finish(tr, run_id: str, status: str) -> None:
    try:
        tr.finish(run_id, status)
    except AhpsError:
        pass


# --- step 2: transfer ---------------------------------------------------------------------------------------


def transfer_step(
    *, family: str, targets: Sequence[str], seeds: Sequence[Any], base_lr: float, fixed_lr: float, rule: str,
    convention: str, tracking_uri: str, experiment: str, run_group: str, out_dir: str,
    recipes: Sequence[str] = RECIPES,
) -> list[dict[str, Any]]:
    """The LR + init plan of every target and recipe and seed (the items of the training ParallelFor).
    ``recipes``: which of :data:`RECIPES` to plan (the re-evaluation trains only ``autoscaled``).

    Targets without an input->output path (or with a malformed spec) are skipped and recorded with their reason
    in ``plan.json``; the batch goes on. The plan is also logged to the parent run (``plan.json``, and a
    ``predicted_lr`` tag set per target).
    """
    from ahps_core.graph import parse_arch
    from ahps_core.scaling import Transferer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_lr = float(base_lr)
    fixed = float(fixed_lr) if fixed_lr and float(fixed_lr) > 0 else base_lr
    transferer = Transferer(family, base_lr, rule=rule, convention=convention)
    seeds = [as_int(s) for s in seeds]
    planned, skipped, items = [], [], []
    for spec in targets:
        spec = str(spec)
        try:
            t = transferer(parse_arch(spec, family))
        except ArchSpecError as exc:  # NoPathError included: recorded, never an exit
            skipped.append({"arch": spec, "reason": str(exc)})
            log("transfer", f"skipped {spec}: {exc}")
            continue
        planned.append({"arch": spec, "predicted_lr": t.lr, "ratio": t.ratio, "fixed_lr": fixed,
                        "transfer": t.to_dict()})
        log("transfer", f"{spec}: LR {t.lr:.6g} (x{t.ratio:.4g} of base {base_lr:.6g})"
                        + (f"; fixed LR {fixed:.6g}" if "fixed" in recipes else ""))
        for recipe in recipes:
            for seed in seeds:
                items.append({
                    "arch": spec, "recipe": recipe, "seed": seed,
                    "lr": t.lr if recipe == "autoscaled" else fixed,
                    "init": INIT_OF_RECIPE[recipe], "base_lr": base_lr, "predicted_lr": t.lr, "ratio": t.ratio,
                    "run_group": run_group,
                })
    plan = {"family": family, "rule": rule, "convention": convention, "base_lr": base_lr, "fixed_lr": fixed,
            "seeds": seeds, "recipes": list(recipes), "targets": planned, "skipped": skipped, "items": items,
            "run_group": run_group}
    write_json(out / PLAN_FILE, plan)
    tr = tracker(tracking_uri, experiment, run_group)
    parent = tr.ensure_parent()
    tr.log_dict(parent.run_id, _jsonable(plan), "transfer/plan.json")
    tr.set_tags(parent.run_id, {"ahps.targets_planned": len(planned), "ahps.targets_skipped": len(skipped)})
    if not items:
        log("transfer", "no target can be trained (all skipped): nothing to train")
    return items


# --- step 3: train ------------------------------------------------------------------------------------------


def train_step(
    *, item: Mapping[str, Any], family: str, dataset: str, data_source: str, epochs: int, train_recipe: str,
    batch_size: int, width: int, max_steps_per_epoch: int, device: str, rule: str, convention: str,
    tracking_uri: str, experiment: str, run_group: str, checkpoint_root: str, s3_endpoint: str, model_dir: str,
    C: int = 0, N: int = 0, checksums_file: str = "", eval_part: str = "",
    extra_tags: Mapping[str, Any] | None = None, extra_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One architecture x recipe x seed. Idempotent on the run key ``<group>/<arch>/<recipe>/<seed>``: a FINISHED
    MLflow run of the same key and configuration is returned as it is, without training ("reused").

    Checkpoints live at ``<checkpoint_root>/<group>/<arch>/<recipe>/<seed>/`` (a directory or an S3 prefix:
    downloaded before training, uploaded after every epoch), so a retried (preempted) task resumes where the
    last one stopped; with an empty root they live in the task's model artifact. Epoch metrics go to MLflow as
    step metrics as they come; a tracking failure during training does not stop it (the history is logged at
    the end). ``result.json`` is written to ``model_dir`` before anything is reported to MLflow.

    ``C``/``N``: the nb201 macro network (0: the default 16/5). ``checksums_file`` (:func:`load_checksums`): md5s
    of dataset files without a known checksum (generated data). ``eval_part``: the dataset part evaluated
    (default: the dataset's eval part; the re-evaluation evaluates the part the benchmark reports).
    ``extra_tags``/``extra_params`` are added to the MLflow run's.
    """
    from ahps_core.storage import CheckpointSync, checkpoint_location
    from ahps_core.train import train

    arch, recipe, seed = str(item["arch"]), str(item["recipe"]), as_int(item["seed"])
    lr, init = float(item["lr"]), str(item.get("init") or INIT_OF_RECIPE[recipe])
    model_path = Path(model_dir)
    model_path.mkdir(parents=True, exist_ok=True)
    config = train_config(family=family, arch=arch, dataset=dataset, data_source=data_source, epochs=as_int(epochs),
                          lr=lr, init=init, seed=seed, train_recipe=train_recipe, batch_size=as_int(batch_size),
                          width=as_int(width), max_steps_per_epoch=as_int(max_steps_per_epoch), device=device,
                          C=as_int(C or 0), N=as_int(N or 0))
    chash = config.hash({"eval_part": eval_part}) if eval_part else config.hash()
    tr = tracker(tracking_uri, experiment, run_group)
    key = tr.key(arch, recipe, seed)
    label = f"{arch} {recipe} seed {seed}"
    ref = tr.find(key)
    if ref is not None and ref.finished and ref.tags.get("ahps.config_hash") == chash:
        summary = tr.load_summary(ref.run_id)
        if summary is not None:
            summary = {**summary, "reused": True, "mlflow_run_id": ref.run_id}
            write_json(model_path / RESULT_FILE, summary)
            log("train", f"{label}: reused the finished MLflow run {ref.run_id} (not retrained): "
                         f"eval acc {_fmt(summary.get('eval_acc'))}")
            return summary
    tags = {"recipe": recipe, "family": family, "arch": arch, "dataset": dataset, "seed": seed, "rule": rule,
            "convention": convention, **dict(extra_tags or {})}
    params = {"lr": lr, "base_lr": float(item.get("base_lr", lr)), "lr_ratio": float(item.get("ratio", 1.0)),
              "init": init, "epochs": config.epochs, "batch_size": config.batch_size, "momentum": config.momentum,
              "weight_decay": config.weight_decay, "schedule": config.schedule, "width": config.width,
              "seed": seed, "recipe": recipe, "arch": arch, "train_recipe": train_recipe or f"{family}-default",
              "max_steps_per_epoch": config.max_steps_per_epoch}
    if family == "nb201":
        params.update(C=config.C, N=config.N)
    if eval_part:
        params["eval_part"] = eval_part
    params.update(dict(extra_params or {}))
    ref = tr.start_run(key, name=f"{recipe} {arch} s{seed}", kind="train", tags=tags, params=params,
                       config_hash=chash)
    log("train", f"{label}: LR {lr:.6g}, init {init}, {config.epochs} epochs, batch {config.batch_size} "
                 f"-> MLflow run {ref.run_id}{' (resumed)' if ref.reused else ''}")

    scratch = None
    if checkpoint_root:
        location = checkpoint_location(checkpoint_root, run_group, arch, recipe, seed)
        if location.startswith("s3://"):
            scratch = tempfile.mkdtemp(prefix="ahps-ckpt-")
        sync = CheckpointSync(location, scratch, endpoint_url=s3_endpoint or None)
    else:
        sync = CheckpointSync(str(model_path / "checkpoint"))
    pulled = sync.pull()
    if pulled:
        log("train", f"{label}: fetched {', '.join(pulled)} from {sync.location}")

    logged_epochs: set[int] = set()
    tracking_down = []

    def on_epoch(record: dict[str, Any]) -> None:
        try:
            sync.push()
        except AhpsError as exc:  # the next epoch tries again; the final push must succeed
            log("train", f"{label}: checkpoint upload failed ({exc}); retrying after the next epoch")
        if not tracking_down:
            try:
                tr.log_history(ref.run_id, [record])
                logged_epochs.add(int(record["epoch"]))
            except AhpsError as exc:
                tracking_down.append(str(exc))
                log("train", f"{label}: MLflow unavailable ({exc}); training goes on, metrics are logged at the end")
        epoch = int(record["epoch"])
        if epoch in (1, config.epochs) or epoch % max(1, config.epochs // 4) == 0:  # a few lines per training
            log("train", f"{label}: epoch {epoch}/{config.epochs} loss {_fmt(record.get('train_loss'))} "
                         f"eval acc {_fmt(record.get('eval_acc'))}")

    try:
        data = None
        if checksums_file or eval_part:
            data = load_training_data(dataset, data_source, checksums_file=checksums_file, eval_part=eval_part,
                                      s3_endpoint=s3_endpoint)
        result = train(config.replace(checkpoint_dir=str(sync.local_dir)), data=data, callback=on_epoch,
                       progress=False)
        sync.push()
    except BaseException:
        _safe_finish(tr, ref.run_id, "FAILED")
        raise
    final = result.final or {}
    summary = {
        "arch": arch, "recipe": recipe, "seed": seed, "lr": lr, "base_lr": float(item.get("base_lr", lr)),
        "predicted_lr": float(item.get("predicted_lr", lr)), "ratio": float(item.get("ratio", 1.0)), "init": init,
        "status": result.status, "eval_acc": final.get("eval_acc"), "eval_loss": final.get("eval_loss"),
        "train_loss": final.get("train_loss"), "train_acc": final.get("train_acc"),
        "epochs": config.epochs, "epochs_done": len(result.history), "resumed_from": result.resumed_from,
        "seconds": result.seconds, "images_per_s": result.images_per_s, "num_params": result.num_params,
        "device": result.device, "config_hash": chash, "reused": False, "mlflow_run_id": ref.run_id,
        "checkpoint": sync.location,
    }
    # 1. results to the output directory (the KFP artifact), 2. then to MLflow.
    write_json(model_path / RESULT_FILE, {**summary, "history": result.history, "config": result.config})
    if sync.local_dir != model_path / "checkpoint":
        for name in ("checkpoint.pt", RESULT_FILE):
            src = sync.local_dir / name
            if src.is_file():
                (model_path / "checkpoint").mkdir(exist_ok=True)
                shutil.copy2(src, model_path / "checkpoint" / name)
    missing = [r for r in result.history if int(r["epoch"]) not in logged_epochs]
    if missing:
        tr.log_history(ref.run_id, missing)
    tr.log_metrics(ref.run_id, {"final_eval_acc": final.get("eval_acc"), "final_train_loss": final.get("train_loss"),
                                "final_train_acc": final.get("train_acc"), "images_per_s": result.images_per_s,
                                "train_seconds": result.seconds, "num_params": result.num_params},
                   step=len(result.history))
    tr.set_tags(ref.run_id, {"ahps.status": result.status})
    tr.log_file(ref.run_id, model_path / RESULT_FILE)
    ckpt = sync.local_dir / "checkpoint.pt"
    if ckpt.is_file():
        tr.log_file(ref.run_id, ckpt, "model")
    tr.save_summary(ref.run_id, summary)
    tr.finish(ref.run_id)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    log("train", f"{label}: {result.status}, eval acc {_fmt(final.get('eval_acc'))} ({result.seconds:.1f} s)")
    return summary


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(float(value), spec)


# --- step 4: compare ----------------------------------------------------------------------------------------


def accuracy_of(result: Mapping[str, Any]) -> float:
    """Accuracy of a training for the comparison: its final eval accuracy; a diverged (or unevaluated) run counts
    as 0, so it ranks last."""
    acc = result.get("eval_acc")
    if result.get("status") != "completed" or acc is None:
        return 0.0
    acc = float(acc)
    return acc if math.isfinite(acc) else 0.0


def compare_step(
    *, results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], family: str, dataset: str,
    tracking_uri: str, experiment: str, run_group: str, out_dir: str, n_boot: int = 1000,
) -> dict[str, Any]:
    """Fan-in: accuracy per architecture and recipe (mean over seeds), the rank of every architecture under each
    recipe, Kendall tau-b and Spearman rho between the two recipes' accuracies (with bootstrap CIs), the accuracy
    deltas (autoscaled - fixed), and two plots. Writes ``summary.json``, ``summary.md`` and the plots to
    ``out_dir``, then records a ``compare`` child run (idempotent on its key and inputs) and the headline numbers
    on the parent run, which it marks FINISHED."""
    from ahps_core import ranking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_arch: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in results:
        by_arch.setdefault(str(r["arch"]), {}).setdefault(str(r["recipe"]), []).append(r)
    planned = {t["arch"]: t for t in plan.get("targets", [])}
    order = [a for a in planned if a in by_arch] + sorted(a for a in by_arch if a not in planned)
    acc = {recipe: {} for recipe in RECIPES}
    rows = []
    for arch in order:
        row: dict[str, Any] = {"arch": arch, "predicted_lr": planned.get(arch, {}).get("predicted_lr"),
                               "ratio": planned.get(arch, {}).get("ratio")}
        for recipe in RECIPES:
            runs = by_arch[arch].get(recipe, [])
            if not runs:
                row[f"{recipe}_acc"] = None
                continue
            values = [accuracy_of(r) for r in runs]
            mean = sum(values) / len(values)
            acc[recipe][arch] = mean
            row[f"{recipe}_acc"] = mean
            row[f"{recipe}_lr"] = float(runs[0].get("lr"))
            row[f"{recipe}_diverged"] = sum(1 for r in runs if r.get("status") == "diverged")
            row[f"{recipe}_seeds"] = len(runs)
            row[f"{recipe}_runs"] = [r.get("mlflow_run_id") for r in runs]
        if row.get("autoscaled_acc") is not None and row.get("fixed_acc") is not None:
            row["delta"] = row["autoscaled_acc"] - row["fixed_acc"]
        rows.append(row)
    for recipe in RECIPES:  # rank 1 = best accuracy under that recipe; ties share the better rank
        values = acc[recipe]
        for row in rows:
            a = values.get(row["arch"])
            row[f"rank_{recipe}"] = None if a is None else 1 + sum(1 for v in values.values() if v > a)

    common = sorted(set(acc["autoscaled"]) & set(acc["fixed"]))
    fixed_acc = {a: acc["fixed"][a] for a in common}
    auto_acc = {a: acc["autoscaled"][a] for a in common}
    stats: dict[str, Any] = {"n": len(common)}
    if common:
        top = ranking.topk_correlations(fixed_acc, auto_acc, ks=(100,), n_boot=n_boot)[0]
        delta = ranking.accuracy_delta(fixed_acc, auto_acc, n_boot=n_boot)
        deltas = [auto_acc[a] - fixed_acc[a] for a in common]
        stats.update({
            "kendall_tau_b": _num(top.tau), "kendall_tau_b_ci": [_num(x) for x in top.tau_ci],
            "spearman_rho": _num(top.spearman), "spearman_rho_ci": [_num(x) for x in top.spearman_ci],
            "mean_accuracy_delta": _num(delta.mean), "mean_accuracy_delta_ci": [_num(delta.ci_low), _num(delta.ci_high)],
            "median_accuracy_delta": sorted(deltas)[len(deltas) // 2] if len(deltas) % 2 else
            (sorted(deltas)[len(deltas) // 2 - 1] + sorted(deltas)[len(deltas) // 2]) / 2,
            "autoscaled_wins": sum(1 for d in deltas if d > 0), "fixed_wins": sum(1 for d in deltas if d < 0),
            "ties": sum(1 for d in deltas if d == 0),
            "mean_acc_autoscaled": sum(auto_acc.values()) / len(common),
            "mean_acc_fixed": sum(fixed_acc.values()) / len(common),
            "rank_changes": sum(1 for r in rows if r.get("rank_autoscaled") != r.get("rank_fixed")),
            # the ranking module's benchmark noise-floor remark does not apply to a recipe-vs-recipe comparison
            "note": "; ".join(n for n in top.note.split("; ") if n and "noise floor" not in n),
        })
    else:
        stats["note"] = "no architecture was trained under both recipes"
    stats["diverged_autoscaled"] = sum(r.get("autoscaled_diverged", 0) for r in rows)
    stats["diverged_fixed"] = sum(r.get("fixed_diverged", 0) for r in rows)

    plots = {}
    if rows:
        plots["accuracy"] = str(_plot_accuracy(rows, out / "accuracy_by_arch.png", family, dataset))
        plots["predicted_lr"] = str(_plot_lrs(rows, plan, out / "predicted_lr_by_arch.png", family))
    summary = {
        "pipeline": "transfer", "run_group": run_group, "family": family, "dataset": dataset,
        "rule": plan.get("rule"), "convention": plan.get("convention"), "base_lr": plan.get("base_lr"),
        "fixed_lr": plan.get("fixed_lr"), "seeds": plan.get("seeds"), "rows": rows,
        "skipped": plan.get("skipped", []), "stats": stats, "plots": plots,
        "trainings": len(results), "reused_trainings": sum(1 for r in results if r.get("reused")),
        "output_dir": str(out),
    }
    write_json(out / SUMMARY_FILE, summary)
    (out / "summary.md").write_text(format_markdown(summary))

    tr = tracker(tracking_uri, experiment, run_group)
    key = tr.key(COMPARE_KEY)
    inputs_hash = _hash(sorted((r.get("mlflow_run_id") or "", str(r.get("arch")), str(r.get("recipe")),
                                str(r.get("seed"))) for r in results))
    parent = tr.ensure_parent()
    ref = tr.find(key)
    if ref is not None and ref.finished and ref.tags.get("ahps.inputs_hash") == inputs_hash:
        log("compare", f"reused the finished comparison run {ref.run_id} (same trainings)")
    else:
        ref = tr.start_run(key, name="compare autoscaled vs fixed", kind="compare",
                           tags={"family": family, "dataset": dataset, "rule": plan.get("rule"),
                                 "convention": plan.get("convention"), "ahps.inputs_hash": inputs_hash})
        headline = {k: v for k, v in stats.items() if not isinstance(v, (list, str))}
        for name, ci in (("kendall_tau_b", "kendall_tau_b_ci"), ("spearman_rho", "spearman_rho_ci"),
                         ("mean_accuracy_delta", "mean_accuracy_delta_ci")):
            if stats.get(ci):
                headline[f"{name}_ci_low"], headline[f"{name}_ci_high"] = stats[ci]
        headline["base_lr"] = plan.get("base_lr")
        headline["n_skipped"] = len(plan.get("skipped", []))
        tr.log_metrics(ref.run_id, headline)
        for i, row in enumerate(rows):
            from ahps_core.storage import slug

            tr.log_metrics(ref.run_id, {f"acc_autoscaled/{slug(row['arch'])}": row.get("autoscaled_acc"),
                                        f"acc_fixed/{slug(row['arch'])}": row.get("fixed_acc"),
                                        f"accuracy_delta/{slug(row['arch'])}": row.get("delta"),
                                        f"predicted_lr/{slug(row['arch'])}": row.get("predicted_lr")})
            tr.log_metrics(ref.run_id, {"accuracy_delta_by_index": row.get("delta")}, step=i)
        for path in [out / SUMMARY_FILE, out / "summary.md", *plots.values()]:
            tr.log_file(ref.run_id, path, "comparison" if str(path).endswith((".json", ".md")) else "plots")
        tr.save_summary(ref.run_id, {"stats": stats, "rows": rows})
        tr.finish(ref.run_id)
        parent_metrics = {k: stats.get(k) for k in ("kendall_tau_b", "spearman_rho", "mean_accuracy_delta",
                                                    "autoscaled_wins", "fixed_wins", "rank_changes")}
        parent_metrics["base_lr"] = plan.get("base_lr")
        tr.log_metrics(parent.run_id, parent_metrics)
        for path in plots.values():
            tr.log_file(parent.run_id, path, "plots")
    tr.finish(parent.run_id)
    summary["mlflow"] = {"tracking_uri": tr.uri, "experiment": experiment, "experiment_id": tr.experiment_id,
                         "parent_run_id": parent.run_id, "compare_run_id": ref.run_id}
    write_json(out / SUMMARY_FILE, summary)
    log("compare", f"{len(rows)} architectures, tau-b {_fmt(stats.get('kendall_tau_b'), '.3f')}, mean delta "
                   f"{_fmt(stats.get('mean_accuracy_delta'), '+.4f')}; comparison run {ref.run_id}")
    return summary


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# --- reports ------------------------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def format_table(summary: Mapping[str, Any]) -> str:
    """The summary table of a transfer run (architecture, predicted LR, accuracies, ranks) as text."""
    head = ["architecture", "predicted LR", "autoscaled acc %", "fixed acc %", "delta", "rank auto", "rank fixed"]
    body = []
    for r in summary.get("rows", []):
        div_a = " (div)" if r.get("autoscaled_diverged") else ""
        div_f = " (div)" if r.get("fixed_diverged") else ""
        delta = r.get("delta")
        body.append([
            r["arch"], "-" if r.get("predicted_lr") is None else f"{r['predicted_lr']:.4g}",
            _pct(r.get("autoscaled_acc")) + div_a, _pct(r.get("fixed_acc")) + div_f,
            "-" if delta is None else f"{100 * delta:+.1f}",
            "-" if r.get("rank_autoscaled") is None else str(r["rank_autoscaled"]),
            "-" if r.get("rank_fixed") is None else str(r["rank_fixed"]),
        ])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt(head), fmt(["-" * w for w in widths]), *(fmt(row) for row in body)]
    for s in summary.get("skipped", []):
        lines.append(f"skipped {s['arch']}: {s['reason']}")
    return "\n".join(lines)


def format_stats(summary: Mapping[str, Any]) -> str:
    s = summary.get("stats", {})

    def ci(name: str, spec: str = ".3f") -> str:
        lo, hi = (s.get(name) or [None, None])
        return "" if lo is None or hi is None else f" [{format(lo, spec)}, {format(hi, spec)}]"

    if not s.get("n"):
        return f"no comparison: {s.get('note', '')}"
    tau = "undefined" if s.get("kendall_tau_b") is None else f"{s['kendall_tau_b']:.3f}{ci('kendall_tau_b_ci')}"
    rho = "undefined" if s.get("spearman_rho") is None else f"{s['spearman_rho']:.3f}{ci('spearman_rho_ci')}"
    delta = s.get("mean_accuracy_delta")
    dci = s.get("mean_accuracy_delta_ci") or [None, None]
    dci_text = "" if dci[0] is None or dci[1] is None else f" [{100 * dci[0]:+.2f}, {100 * dci[1]:+.2f}]"
    delta_text = "-" if delta is None else f"{100 * delta:+.2f}"
    lines = [
        f"base LR {summary.get('base_lr'):.4g} (fixed recipe LR {summary.get('fixed_lr'):.4g}); "
        f"rule {summary.get('rule')}, convention {summary.get('convention')}",
        f"autoscaled better on {s.get('autoscaled_wins', 0)}/{s['n']} architectures, mean accuracy delta "
        f"(autoscaled - fixed) {delta_text} points{dci_text}",
        f"ranking autoscaled vs fixed: Kendall tau-b {tau}, Spearman rho {rho}; {s.get('rank_changes', 0)} "
        "architecture(s) changed rank",
    ]
    if s.get("diverged_autoscaled") or s.get("diverged_fixed"):
        lines.append(f"diverged trainings (counted as 0% accuracy): autoscaled {s.get('diverged_autoscaled', 0)}, "
                     f"fixed {s.get('diverged_fixed', 0)}")
    if s.get("note"):
        lines.append(f"note: {s['note']}")
    return "\n".join(lines)


def format_markdown(summary: Mapping[str, Any]) -> str:
    rows = summary.get("rows", [])
    lines = [f"# ahps transfer: {summary.get('family')} on {summary.get('dataset')} (run group {summary.get('run_group')})",
             "", "| architecture | predicted LR | autoscaled acc % | fixed acc % | delta | rank autoscaled | rank fixed |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = r.get("delta")
        lr = "-" if r.get("predicted_lr") is None else format(r["predicted_lr"], ".4g")
        d = "-" if delta is None else format(100 * delta, "+.1f")
        lines.append(f"| `{r['arch']}` | {lr} | {_pct(r.get('autoscaled_acc'))} | {_pct(r.get('fixed_acc'))} | {d} | "
                     f"{r.get('rank_autoscaled') or '-'} | {r.get('rank_fixed') or '-'} |")
    lines += ["", "```", format_stats(summary), "```"]
    for s in summary.get("skipped", []):
        lines.append(f"- skipped `{s['arch']}`: {s['reason']}")
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------------------------------


def _figure(width: float = 7.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), layout="constrained")
    return fig, fig.add_subplot()


def _short(arch: str, n: int = 18) -> str:
    return arch if len(arch) <= n else arch[: n - 1] + "…"


def _plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path, family: str, dataset: str) -> Path:
    fig, ax = _figure(max(6.0, 1.1 * len(rows) + 2))
    x = list(range(len(rows)))
    w = 0.38
    shown: list[float] = []
    for off, recipe, color in ((-w / 2, "autoscaled", "tab:blue"), (w / 2, "fixed", "tab:orange")):
        ys = [100 * (r.get(f"{recipe}_acc") or 0.0) for r in rows]
        shown += ys
        bars = ax.bar([i + off for i in x], ys, w, label=recipe, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    if shown:  # the differences between recipes are a few points: zoom on them (the axis says where it starts)
        lo, hi = min(shown), max(shown)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - 3 * pad), min(100.0, hi + pad))
    ax.set_xticks(x, [_short(r["arch"]) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("final eval accuracy (%)")
    ax.set_title(f"Autoscaled vs fixed recipe: {family} on {dataset}")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _plot_lrs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], path: Path, family: str) -> Path:
    fig, ax = _figure(max(6.0, 1.0 * len(rows) + 2))
    x = list(range(len(rows)))
    ax.bar(x, [r.get("predicted_lr") or 0.0 for r in rows], 0.6, color="tab:blue", label="transferred LR (autoscaled)")
    if plan.get("base_lr"):
        ax.axhline(plan["base_lr"], color="gray", ls="--", lw=1, label=f"base LR {plan['base_lr']:.3g} (proxy)")
    if plan.get("fixed_lr") and plan.get("fixed_lr") != plan.get("base_lr"):
        ax.axhline(plan["fixed_lr"], color="tab:orange", ls=":", lw=1, label=f"fixed LR {plan['fixed_lr']:.3g}")
    ax.set_xticks(x, [_short(r["arch"]) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Predicted LR per architecture ({family}, rule {plan.get('rule')}, {plan.get('convention')})")
    ax.legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path


# =============================================================================================================
# The ``reevaluate`` pipeline (issue #6): sample NB201 cells from benchmark records -> transfer the base LR ->
# train every cell with NB201's recipe at its own LR and init -> rank against the benchmark.
# =============================================================================================================

REEVAL_RECIPE = "autoscaled"
SAMPLE_FILE = "sample.json"
RANKING_KEY = "ranking"
RANKING_REPORT_FILE = "ranking_report.json"
#: NB201's own network and budget (Dong & Yang 2020): C=16 channels, N=5 cells per stage, 200 epochs, batch 256.
NB201_BUDGET = {"C": 16, "N": 5, "epochs": 200, "batch_size": 256}
#: Which part of our split holds the set the benchmark's headline accuracy is measured on
#: (:data:`ahps_core.benchmarks.DATASETS`): the re-trained network is evaluated there.
HEADLINE_PART = {"cifar10": "test", "cifar10-valid": "valid", "cifar100": "test", "ImageNet16-120": "test"}
DEDUP_RULES = ("function", "graph", "nb201", "none")
#: Mean test-accuracy gains of Chen et al. (ICLR 2024, §4.3) over the NB201 tables, in points.
PAPER_MEAN_GAIN = {"cifar10": 0.44, "cifar100": 1.24, "ImageNet16-120": 2.09}


def budget_info(*, C: int, N: int, epochs: int, batch_size: int = 0, max_steps_per_epoch: int = 0,
                synthetic: bool = False, benchmark: str = "") -> dict[str, Any]:
    """Whether a re-evaluation runs NB201's network and budget (:data:`NB201_BUDGET`) on real data, and if not,
    why: ``{"reduced": bool, "label": "nb201" | "reduced", "reasons": [...], "text": one line}``. A reduced run
    is a smoke test of the pipeline, not a re-evaluation of the benchmark; every report and MLflow run says so."""
    reasons = []
    if int(C) != NB201_BUDGET["C"]:
        reasons.append(f"C={int(C)} channels (NB201: 16)")
    if int(N) != NB201_BUDGET["N"]:
        reasons.append(f"N={int(N)} cells per stage (NB201: 5)")
    if int(epochs) != NB201_BUDGET["epochs"]:
        reasons.append(f"{int(epochs)} epoch{'s' if int(epochs) != 1 else ''} (NB201: 200)")
    if batch_size and int(batch_size) != NB201_BUDGET["batch_size"]:
        reasons.append(f"batch {int(batch_size)} (NB201: 256)")
    if max_steps_per_epoch:
        reasons.append(f"epochs truncated to {int(max_steps_per_epoch)} steps")
    if synthetic:
        reasons.append("synthetic data (generated in the dataset's format, not the real images)")
    notes = []
    if benchmark == FIXTURE:
        notes.append("benchmark: the 3-architecture NATS-Bench fixture shipped with ahps: rank correlations exist "
                     "only for top-K sets of 3 cells (K >= 67%) and are coarse (tau-b of 3 cells is -1, -1/3, "
                     "1/3 or 1)")
    reduced = bool(reasons)
    text = ("REDUCED network/budget: " + "; ".join(reasons) + " -- a smoke test of the pipeline, NOT a "
            "re-evaluation of NAS-Bench-201") if reduced else "NB201 network and budget (C=16, N=5, 200 epochs)"
    return {"reduced": reduced, "label": "reduced" if reduced else "nb201", "reasons": reasons, "notes": notes,
            "text": text}


def is_synthetic(checksums_file: str, data_source: str) -> bool:
    """Whether ``checksums_file`` is the manifest of generated data (``"synthetic": true``) for ``data_source``."""
    if not checksums_file:
        return False
    manifest = read_checksums_manifest(checksums_file)
    return manifest["synthetic"] and (not manifest["data_source"] or _same_source(manifest["data_source"],
                                                                                   data_source))


FIXTURE = "fixture"


def benchmark_path(benchmark: str) -> str:
    """The benchmark records to open: ``benchmark``, or the shipped fixture for ``"fixture"``."""
    benchmark = (benchmark or "").strip()
    if not benchmark:
        raise ConfigError("benchmark is empty: give the benchmark records (a NATS-Bench topology '*-simple' "
                          "directory or a NAS-Bench-201 .pth file, a path or s3://bucket/key), or 'fixture' for the "
                          "3 architectures shipped with ahps")
    if benchmark != FIXTURE:
        return benchmark
    from ahps_core.resources import NATS_TSS_FIXTURE

    return str(NATS_TSS_FIXTURE)


class _Listing:
    """What unstratified sampling needs of benchmark records (their architectures), from an S3 listing."""

    def __init__(self, arch_strs: list[str]) -> None:
        self._archs = arch_strs

    def arch_strs(self) -> list[str]:
        return list(self._archs)

    def accuracies(self, dataset: str, archs=None) -> dict[str, float]:  # pragma: no cover - not used unstratified
        raise ConfigError("stratified sampling needs every record: it cannot run on a listing")


def _s3_benchmark(uri: str, *, s3_endpoint: str = "", cache_dir: str | os.PathLike[str] | None = None):
    """``(client, bucket, key or prefix, local mirror path, kind)`` of an S3 benchmark; kind ``file`` (a ``.pth`` or
    ``.pickle.pbz2``) or ``simple`` (a ``-simple`` prefix)."""
    from ahps_core.data import default_cache_dir
    from ahps_core.data.s3 import make_client, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    local = root / "benchmarks" / bucket / key
    kind = "file" if key.endswith((".pth", ".pickle.pbz2")) else "simple"
    return make_client(s3_endpoint or None), bucket, key, local, kind


def _fetch(client, bucket: str, key: str, dest: Path) -> None:
    from ahps_core.data.s3 import fetch_object
    from ahps_core.errors import BenchmarkError, DataError

    try:
        fetch_object(client, bucket, key, dest, None)
    except DataError as exc:
        raise BenchmarkError(f"benchmark {f's3://{bucket}/{key}'!r} cannot be fetched: {exc}") from None


def open_benchmark_records(benchmark: str, *, s3_endpoint: str = "", cache_dir: str | os.PathLike[str] | None = None,
                           sample: Mapping[str, Any] | None = None):
    """``(records, sample, candidates)`` for the re-evaluation: the benchmark records (a local path, ``s3://``, or
    the shipped fixture for ``"fixture"``), when ``sample`` holds the :func:`ahps_core.sampling.sample_cells`
    arguments (``k``, ``seed``, ``dataset``, ``stratify``, ``dedup``, ``iso``) the sample drawn from them (else
    None), and what it was drawn from (``arch_strs()``: every recorded architecture, also when only the sampled
    records were fetched).

    From S3 a file is mirrored whole into the dataset cache (``<cache>/benchmarks/<bucket>/<key>``); of a
    ``-simple`` prefix only the meta file and the sampled architectures' files are fetched (every file when the
    sample is stratified: it ranks the whole pool by accuracy). A missing or unreadable benchmark is a
    :class:`~ahps_core.errors.BenchmarkError`, a sample larger than the pool a :class:`ConfigError`.
    """
    from ahps_core.benchmarks import open_benchmark
    from ahps_core.errors import BenchmarkError
    from ahps_core.sampling import sample_cells

    def draw(records):
        return None if sample is None else sample_cells(int(sample["k"]), int(sample["seed"]), records=records,
                                                        dataset=sample["dataset"], stratify=bool(sample["stratify"]),
                                                        dedup=bool(sample["dedup"]), iso=str(sample["iso"]))

    path = benchmark_path(benchmark)
    if not path.startswith("s3://"):
        records = open_benchmark(path)
        return records, draw(records), records
    client, bucket, key, local, kind = _s3_benchmark(path, s3_endpoint=s3_endpoint, cache_dir=cache_dir)
    if kind == "file":
        _fetch(client, bucket, key, local)
        records = open_benchmark(local)
        return records, draw(records), records
    from ahps_core.data.s3 import list_names

    try:
        names = list_names(client, bucket, key)
    except AhpsError as exc:
        raise BenchmarkError(f"benchmark {path!r} cannot be listed: {exc}") from None
    if "meta.pickle.pbz2" not in names:
        raise BenchmarkError(f"benchmark {path!r} has no meta.pickle.pbz2: it is not a NATS-Bench topology "
                             "'-simple' directory (or a .pth / .pickle.pbz2 file)")
    arch_files = {int(n.split(".")[0]): n for n in names if "/" not in n and n.endswith(".pickle.pbz2")
                  and n.split(".")[0].isdigit()}
    _fetch(client, bucket, f"{key}/meta.pickle.pbz2", local / "meta.pickle.pbz2")
    meta = open_benchmark(local)
    listing = _Listing([meta.meta_archs[i] for i in sorted(arch_files) if i < meta.space_size])
    stratified = sample is not None and bool(sample.get("stratify"))
    drawn = None if stratified else draw(listing)
    wanted = sorted(arch_files) if stratified else sorted(meta.index_of(c) for c in (drawn.cells if drawn else []))
    for index in wanted:
        _fetch(client, bucket, f"{key}/{arch_files[index]}", local / arch_files[index])
    records = open_benchmark(local)
    return records, (draw(records) if stratified else drawn), listing


def _duplicates(records, iso: str) -> list[dict[str, str]]:
    """The cells of ``records`` (anything with ``arch_strs()``) dropped as isomorphic duplicates under ``iso`` (the
    first cell of each class in digit-code order is kept, as :func:`ahps_core.sampling.sample_cells` does), with the
    kept cell named."""
    from ahps_core.benchmarks import nb201_arch_string
    from ahps_core.graph import NB201_OPS, parse_nb201_arch_str
    from ahps_core.sampling import iso_key

    def order(a: str) -> tuple[int, ...]:
        return tuple(NB201_OPS.index(op) for group in parse_nb201_arch_str(a) for op in group)

    kept: dict[Any, str] = {}
    out = []
    for a in sorted({nb201_arch_string(x) for x in records.arch_strs()}, key=order):
        key = iso_key(a, iso)
        if key is None:
            continue
        if key in kept:
            out.append({"arch": a, "reason": f"isomorphic duplicate of {kept[key]} (dedup rule {iso!r})"})
        else:
            kept[key] = a
    return out


def sample_step(
    *, benchmark: str, dataset: str, sample_size: int, sample_seed: int, stratify: bool, dedup: str,
    tracking_uri: str, experiment: str, run_group: str, parent_params: Mapping[str, Any], budget: Mapping[str, Any],
    out_dir: str, s3_endpoint: str = "",
) -> dict[str, Any]:
    """Step 1 of ``reevaluate``: draw ``sample_size`` cells from the benchmark's records
    (:func:`ahps_core.sampling.sample_cells`, seeded, deduplicated under ``dedup`` unless ``"none"``, optionally
    stratified by benchmark accuracy), read each one's record on ``dataset`` (mean and per-seed accuracy, %),
    create the run group's MLflow parent run (params: the pipeline's; the budget marked in tags and in the run's
    description) and log the sample to it. Cells without an input->output path and isomorphic duplicates are
    listed in ``skipped`` with their reasons. Writes ``sample.json`` to ``out_dir`` first."""
    from ahps_core.graph import nb201_code, parse_arch
    from ahps_core.tracking import check_tracking_uri

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = check_tracking_uri(tracking_uri)  # up front: before anything is fetched
    if dedup not in DEDUP_RULES:
        raise ConfigError(f"unknown dedup rule {dedup!r}: accepted are {', '.join(DEDUP_RULES)}")
    iso = dedup if dedup != "none" else "function"
    records, sample, candidates = open_benchmark_records(
        benchmark, s3_endpoint=s3_endpoint,
        sample={"k": as_int(sample_size), "seed": as_int(sample_seed), "dataset": dataset, "stratify": stratify,
                "dedup": dedup != "none", "iso": iso},
    )
    cells = []
    for cell in sample.cells:
        rec = records.query(cell, dataset)
        cells.append({
            "arch": rec.arch_str, "code": nb201_code(parse_arch(rec.arch_str, "nb201")), "index": rec.index,
            "benchmark_acc": rec.acc_mean, "benchmark_acc_per_seed": {str(k): v for k, v in rec.acc_per_seed.items()},
            "missing_seeds": list(rec.missing_seeds), "note": rec.note,
        })
    no_path = [dict(s) for s in sample.skipped]
    duplicates = _duplicates(candidates, iso) if dedup != "none" else []
    head = records.query(sample.cells[0], dataset) if sample.cells else None
    data = {
        "pipeline": "reevaluate", "run_group": run_group, "benchmark": benchmark,
        "benchmark_path": benchmark_path(benchmark), "benchmark_format": records.format,
        "space_size": records.space_size, "n_records": len(candidates.arch_strs()), "dataset": dataset,
        "headline_set": head.headline_set if head else None, "eval_part": HEADLINE_PART.get(dataset),
        "sample_size": as_int(sample_size), "sample_seed": as_int(sample_seed), "stratify": bool(stratify),
        "dedup": dedup, "pool_size": sample.pool_size, "strata": sample.strata, "cells": cells,
        "skipped": no_path + duplicates, "n_no_path": len(no_path), "n_duplicates": len(duplicates),
        "budget": dict(budget),
    }
    write_json(out / SAMPLE_FILE, data)
    log("sample", f"{len(cells)} cells from {data['benchmark_path']} ({records.format}, {data['n_records']} of "
                  f"{records.space_size} architectures recorded; pool {sample.pool_size} after dedup {dedup!r}); "
                  f"skipped {len(no_path)} without a path, {len(duplicates)} duplicates")
    if budget.get("reduced"):
        log("sample", budget["text"])

    tr = tracker(tracking_uri, experiment, run_group)
    note = (f"ahps reevaluate: NB201 cells on {dataset} trained with the NB201 recipe at their own "
            f"(architecture-aware) LR and init, ranked against {data['benchmark_path']}.\n\n{budget.get('text', '')}")
    parent = tr.ensure_parent(
        name=f"reevaluate nb201/{dataset}{' (reduced budget)' if budget.get('reduced') else ''} [{run_group}]",
        params=dict(parent_params),
        tags={"pipeline": "reevaluate", "family": "nb201", "dataset": dataset, "budget": budget.get("label"),
              "mlflow.note.content": note},
    )
    log("sample", f"MLflow parent run {parent.run_id} ({'reused' if parent.reused else 'created'}), run group "
                  f"{run_group!r}, experiment {experiment!r} ({tr.experiment_id})")
    tr.log_dict(parent.run_id, _jsonable(data), "reevaluate/sample.json")
    tr.set_tags(parent.run_id, {"ahps.sampled": len(cells), "ahps.skipped_no_path": len(no_path),
                                "ahps.skipped_duplicates": len(duplicates)})
    return data


def reeval_plan_step(
    *, sample: Mapping[str, Any], seeds: Sequence[Any], base_lr: float, rule: str, convention: str,
    tracking_uri: str, experiment: str, run_group: str, out_dir: str,
) -> list[dict[str, Any]]:
    """Step 3: the LR (transferred from ``base_lr``) and init of every sampled cell x seed, autoscaled recipe only
    (:func:`transfer_step`), each item carrying the cell's benchmark accuracy and index for its MLflow run."""
    cells = {c["arch"]: c for c in sample["cells"]}
    items = transfer_step(
        family="nb201", targets=list(cells), seeds=seeds, base_lr=base_lr, fixed_lr=0.0, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=experiment, run_group=run_group,
        out_dir=out_dir, recipes=(REEVAL_RECIPE,),
    )
    for item in items:
        cell = cells[item["arch"]]
        item.update(benchmark_acc=cell["benchmark_acc"], benchmark_index=cell["index"], arch_code=cell["code"],
                    budget=sample.get("budget", {}).get("label", ""))
    plan = json.loads((Path(out_dir) / PLAN_FILE).read_text())
    plan["items"] = items
    write_json(Path(out_dir) / PLAN_FILE, plan)
    return items


def reeval_train_step(
    *, item: Mapping[str, Any], dataset: str, data_source: str, checksums_file: str, epochs: int, batch_size: int,
    C: int, N: int, max_steps_per_epoch: int, device: str, rule: str, convention: str, tracking_uri: str,
    experiment: str, checkpoint_root: str, s3_endpoint: str, model_dir: str,
) -> dict[str, Any]:
    """Step 4 (one per cell x seed): :func:`train_step` with NB201's recipe (``train_recipe="nb201"``) at the
    item's LR and the architecture-aware init, evaluated on the part the benchmark reports
    (:data:`HEADLINE_PART`); then the run's ``benchmark_acc`` (mean over the records' seeds), ``new_acc`` and
    ``delta`` (points; a diverged run counts 0 %)."""
    bench = float(item["benchmark_acc"])
    index = as_int(item["benchmark_index"])
    budget = str(item.get("budget") or "")
    summary = train_step(
        item=item, family="nb201", dataset=dataset, data_source=data_source, epochs=epochs, train_recipe="nb201",
        batch_size=batch_size, width=0, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=experiment, run_group=str(item["run_group"]),
        checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model_dir, C=C, N=N,
        checksums_file=checksums_file, eval_part=HEADLINE_PART.get(dataset, ""),
        extra_tags={"pipeline": "reevaluate", "benchmark_index": index, "arch_code": item.get("arch_code", ""),
                    **({"budget": budget} if budget else {})},
        extra_params={"benchmark_index": index},
    )
    new = 100.0 * accuracy_of(summary)
    metrics = {"benchmark_acc": bench, "new_acc": new, "delta": new - bench}
    tr = tracker(tracking_uri, experiment, str(item["run_group"]))
    tr.log_metrics(summary["mlflow_run_id"], metrics)
    summary = {**summary, **metrics, "benchmark_index": index, "arch_code": item.get("arch_code", "")}
    write_json(Path(model_dir) / "reevaluation.json", summary)
    log("train", f"{item['arch_code']} seed {summary['seed']}: new {new:.2f} % vs benchmark {bench:.2f} % "
                 f"({new - bench:+.2f} points)")
    return summary


def _k_label(k: Any) -> str:
    return format(float(k), "g")


def _k_num(k: Any) -> int | float:
    """A top-K percentage as JSON shows it best: ``100.0`` -> ``100``, ``2.5`` stays."""
    return int(float(k)) if float(k).is_integer() else float(k)


def rank_step(
    *, results: Sequence[Mapping[str, Any]], sample: Mapping[str, Any], plan: Mapping[str, Any], dataset: str,
    topk: Sequence[Any], n_boot: int, select_by: str, tracking_uri: str, experiment: str, run_group: str,
    out_dir: str,
) -> dict[str, Any]:
    """Step 5 (fan-in): new accuracy per cell (mean over seeds, %; diverged runs count 0) against the benchmark's
    (mean over its seeds), by :func:`ahps_core.ranking.ranking_report`: Kendall tau-b, Spearman rho and the
    seed-to-seed noise floor within each top-K% set (K in ``topk``, sets chosen by ``select_by`` -- the report
    holds both choices), the mean accuracy delta with its CI, the pairwise gaps, and three plots. Writes
    ``summary.json``, ``summary.md``, ``ranking_report.json`` and the plots to ``out_dir``, then records the
    ``ranking`` child run (idempotent on its inputs: metrics ``tau_top<K>``, ``spearman_top<K>``,
    ``noise_tau_top<K>``, ...), the headline numbers on the parent run, and marks the parent FINISHED."""
    from ahps_core import ranking

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if select_by not in ranking.SELECT_BY:
        raise ConfigError(f"unknown select_by {select_by!r}: accepted are {', '.join(ranking.SELECT_BY)}")
    ks = [float(k) for k in topk]
    cells = {c["arch"]: c for c in sample["cells"]}
    planned = {t["arch"]: t for t in plan.get("targets", [])}
    by_arch: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_arch.setdefault(str(r["arch"]), []).append(r)
    bench_acc, bench_seeds, new_acc, rows = {}, {}, {}, []
    for arch, cell in cells.items():
        runs = sorted(by_arch.get(arch, []), key=lambda r: as_int(r["seed"]))
        row: dict[str, Any] = {"arch": arch, "code": cell["code"], "index": cell["index"],
                               "benchmark_acc": cell["benchmark_acc"],
                               "predicted_lr": planned.get(arch, {}).get("predicted_lr"),
                               "ratio": planned.get(arch, {}).get("ratio")}
        if runs:
            accs = [100.0 * accuracy_of(r) for r in runs]
            row.update(new_acc=sum(accs) / len(accs), new_acc_per_seed={str(as_int(r["seed"])): a
                                                                       for r, a in zip(runs, accs)},
                       diverged=sum(1 for r in runs if r.get("status") != "completed"), seeds=len(runs),
                       runs=[r.get("mlflow_run_id") for r in runs])
            row["delta"] = row["new_acc"] - row["benchmark_acc"]
            bench_acc[arch], new_acc[arch] = row["benchmark_acc"], row["new_acc"]
            bench_seeds[arch] = {int(s): float(a) for s, a in cell["benchmark_acc_per_seed"].items()}
        rows.append(row)
    for key, values in (("rank_benchmark", bench_acc), ("rank_new", new_acc)):
        for row in rows:  # rank 1 = best; ties share the better rank
            a = values.get(row["arch"])
            row[key] = None if a is None else 1 + sum(1 for v in values.values() if v > a)
    rows.sort(key=lambda r: (r["rank_benchmark"] is None, r["rank_benchmark"] or 0, r["arch"]))

    report = ranking.ranking_report(bench_acc, new_acc, bench_seeds=bench_seeds, dataset=dataset, ks=ks,
                                    n_boot=as_int(n_boot), out_dir=out)
    write_json(out / RANKING_REPORT_FILE, report)
    plots = dict(report.get("plots", {}))
    main = report["topk"][select_by]
    stats: dict[str, Any] = {
        "n": report["n_common"], "select_by": select_by,
        "mean_accuracy_delta": report["delta"]["mean"], "mean_accuracy_delta_ci": report["delta"]["ci"],
        "gap_ratio": report["gaps"]["ratio_new_over_bench"], "gap_ratio_ci": report["gaps"]["ratio_ci"],
        "mean_gap_benchmark": report["gaps"]["mean_bench"], "mean_gap_new": report["gaps"]["mean_new"],
        "frac_pairs_shrunk": report["gaps"]["frac_shrunk"],
        "new_better": sum(1 for r in rows if (r.get("delta") or 0) > 0),
        "diverged": sum(r.get("diverged", 0) for r in rows),
        "rank_changes": sum(1 for r in rows if r.get("rank_new") is not None
                            and r.get("rank_new") != r.get("rank_benchmark")),
        "paper_mean_gain": PAPER_MEAN_GAIN.get(dataset),
    }
    summary = {
        "pipeline": "reevaluate", "run_group": run_group, "family": "nb201", "dataset": dataset,
        "benchmark": sample.get("benchmark_path"), "benchmark_format": sample.get("benchmark_format"),
        "headline_set": sample.get("headline_set"), "eval_part": sample.get("eval_part"),
        "rule": plan.get("rule"), "convention": plan.get("convention"), "base_lr": plan.get("base_lr"),
        "seeds": plan.get("seeds"), "budget": sample.get("budget", {}), "sample_size": sample.get("sample_size"),
        "pool_size": sample.get("pool_size"), "rows": rows, "topk": main, "stats": stats, "plots": plots,
        "n_no_path": sample.get("n_no_path", 0), "n_duplicates": sample.get("n_duplicates", 0),
        "skipped_examples": list(sample.get("skipped", []))[:10] + list(plan.get("skipped", [])),
        "trainings": len(results), "reused_trainings": sum(1 for r in results if r.get("reused")),
        "output_dir": str(out),
    }
    write_json(out / SUMMARY_FILE, summary)
    (out / "summary.md").write_text(format_reevaluation_markdown(summary))

    tr = tracker(tracking_uri, experiment, run_group)
    key = tr.key(RANKING_KEY)
    inputs_hash = _hash([sorted((r.get("mlflow_run_id") or "", str(r.get("arch")), str(r.get("seed")))
                                for r in results), ks, as_int(n_boot), select_by])
    parent = tr.ensure_parent()
    ref = tr.find(key)
    budget = sample.get("budget", {})
    if ref is not None and ref.finished and ref.tags.get("ahps.inputs_hash") == inputs_hash:
        log("rank", f"reused the finished ranking run {ref.run_id} (same trainings)")
    else:
        ref = tr.start_run(key, name=f"ranking vs benchmark ({dataset})", kind="ranking",
                           tags={"family": "nb201", "dataset": dataset, "rule": plan.get("rule"),
                                 "convention": plan.get("convention"), "select_by": select_by,
                                 "budget": budget.get("label", ""), "ahps.inputs_hash": inputs_hash,
                                 "mlflow.note.content": budget.get("text", "")},
                           params={"topk": [_k_num(k) for k in ks], "n_boot": as_int(n_boot), "select_by": select_by,
                                   "benchmark": sample.get("benchmark_path"), "n_archs": len(rows)})
        tr.log_metrics(ref.run_id, ranking_metrics(summary))
        for i, t in enumerate(main):  # tau against K as a curve too (step = position in the K list)
            tr.log_metrics(ref.run_id, {"tau_by_k": t.get("tau"), "noise_tau_by_k": t.get("noise_tau"),
                                        "spearman_by_k": t.get("spearman")}, step=i)
        for row in rows:
            from ahps_core.storage import slug

            tr.log_metrics(ref.run_id, {f"new_acc/{slug(row['code'])}": row.get("new_acc"),
                                        f"benchmark_acc/{slug(row['code'])}": row.get("benchmark_acc"),
                                        f"delta/{slug(row['code'])}": row.get("delta")})
        tr.log_file(ref.run_id, out / RANKING_REPORT_FILE, "ranking")
        tr.log_file(ref.run_id, out / SUMMARY_FILE, "ranking")
        tr.log_file(ref.run_id, out / "summary.md", "ranking")
        for path in plots.values():
            tr.log_file(ref.run_id, path, "plots")
        tr.save_summary(ref.run_id, {"stats": stats, "topk": main, "rows": rows})
        tr.finish(ref.run_id)
        head = {k: v for k, v in ranking_metrics(summary).items()
                if k in ("tau_top100", "noise_tau_top100", "spearman_top100", "mean_accuracy_delta", "n_archs",
                         "gap_ratio", "rank_changes")}
        tr.log_metrics(parent.run_id, {**head, "base_lr": plan.get("base_lr")})
        for path in plots.values():
            tr.log_file(parent.run_id, path, "plots")
    tr.finish(parent.run_id)
    summary["mlflow"] = {"tracking_uri": tr.uri, "experiment": experiment, "experiment_id": tr.experiment_id,
                         "parent_run_id": parent.run_id, "compare_run_id": ref.run_id, "ranking_run_id": ref.run_id}
    write_json(out / SUMMARY_FILE, summary)
    top = main[0] if main else {}
    log("rank", f"{len(rows)} cells, tau-b top{_k_label(top.get('k', 100))} {_fmt(top.get('tau'), '.3f')} "
                f"(noise floor {_fmt(top.get('noise_tau'), '.3f')}), mean delta "
                f"{_fmt(stats.get('mean_accuracy_delta'), '+.2f')} points; ranking run {ref.run_id}")
    return summary


def ranking_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The ranking run's metrics: per K ``tau_top<K>`` (+ ``_ci_low``/``_ci_high``), ``spearman_top<K>``,
    ``noise_tau_top<K>`` (+ CI), ``n_top<K>``; the mean accuracy delta with its CI, the gap statistics and counts.
    Undefined values (fewer than 3 cells in a set) are None and not logged."""
    s = summary.get("stats", {})
    out: dict[str, Any] = {"n_archs": s.get("n"), "mean_accuracy_delta": s.get("mean_accuracy_delta"),
                           "gap_ratio": s.get("gap_ratio"), "mean_gap_benchmark": s.get("mean_gap_benchmark"),
                           "mean_gap_new": s.get("mean_gap_new"), "frac_pairs_shrunk": s.get("frac_pairs_shrunk"),
                           "new_better": s.get("new_better"), "diverged": s.get("diverged"),
                           "rank_changes": s.get("rank_changes")}
    for name, ci in (("mean_accuracy_delta", "mean_accuracy_delta_ci"), ("gap_ratio", "gap_ratio_ci")):
        low, high = (s.get(ci) or [None, None])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    for t in summary.get("topk", []):
        k = _k_label(t["k"])
        out[f"n_top{k}"] = t.get("n")
        for name in ("tau", "spearman", "noise_tau"):
            out[f"{name}_top{k}"] = t.get(name)
            low, high = t.get(f"{name}_ci") or [None, None]
            out[f"{name}_top{k}_ci_low"], out[f"{name}_top{k}_ci_high"] = low, high
    return out


def _ci_text(ci: Any, spec: str = ".3f") -> str:
    lo, hi = (ci or [None, None])
    return "" if lo is None or hi is None else f" [{format(lo, spec)}, {format(hi, spec)}]"


def _table(head: list[str], body: list[list[str]], *, left: tuple[int, ...] = (0,)) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(head), fmt(["-" * w for w in widths]), *(fmt(row) for row in body)]


def format_reevaluation(summary: Mapping[str, Any]) -> str:
    """The report ``ahps run reevaluate`` prints: the budget banner, the per-cell table (benchmark vs new
    accuracy and ranks), the top-K% ranking table with the noise floor, the mean delta and the gaps."""
    budget = summary.get("budget", {})
    lines = []
    if budget.get("reduced"):
        bar = "!" * 100
        lines += [bar, f"!! {budget.get('text')}", bar, ""]
    for note in budget.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"re-evaluation of {len(summary.get('rows', []))} NB201 cells on {summary.get('dataset')} "
                 f"(benchmark {summary.get('benchmark_format')}: {summary.get('headline_set')} accuracy, mean over its "
                 f"seeds; new: NB201 recipe, autoscaled LR + arch-aware init, seeds {summary.get('seeds')}, "
                 f"evaluated on our '{summary.get('eval_part')}' part)")
    lines.append(f"base LR {_fmt(summary.get('base_lr'), '.4g')}, rule {summary.get('rule')}, convention "
                 f"{summary.get('convention')}")
    if summary.get("dataset") in ("cifar100", "ImageNet16-120"):
        lines.append("note: the benchmark's x-test is half of the original test set, picked by NB201's split file; "
                     "without that file our 'test' part is a seeded stratified half (same size, other images)")
    lines.append("")
    body = []
    for r in summary.get("rows", []):
        delta = r.get("delta")
        body.append([
            r["code"], str(r["index"]), _fmt(r.get("predicted_lr"), ".4g"), _fmt(r.get("benchmark_acc"), ".2f"),
            _fmt(r.get("new_acc"), ".2f") + (" (div)" if r.get("diverged") else ""),
            "-" if delta is None else f"{delta:+.2f}", str(r.get("rank_benchmark") or "-"),
            str(r.get("rank_new") or "-"),
        ])
    lines += _table(["cell (code)", "index", "LR", "benchmark acc %", "new acc %", "delta", "rank bench",
                     "rank new"], body)
    n_no_path, n_dup = summary.get("n_no_path", 0), summary.get("n_duplicates", 0)
    if n_no_path or n_dup:
        lines.append(f"skipped from the benchmark's cells: {n_no_path} without an input->output path, {n_dup} "
                     f"isomorphic duplicates (all listed with reasons in sample.json); e.g.:")
        lines += [f"  skipped {s['arch']}: {s['reason']}" for s in summary.get("skipped_examples", [])[:5]]
    lines.append("")
    s = summary.get("stats", {})
    lines.append(f"ranking within the top K% (sets by {s.get('select_by')} accuracy; Kendall tau-b, Spearman rho, "
                 "noise floor = tau-b between the benchmark's own seeds; 95% bootstrap CIs):")
    body = []
    for t in summary.get("topk", []):
        tau = "undefined" if t.get("tau") is None else f"{t['tau']:.3f}{_ci_text(t.get('tau_ci'))}"
        rho = "undefined" if t.get("spearman") is None else f"{t['spearman']:.3f}"
        noise = "undefined" if t.get("noise_tau") is None else f"{t['noise_tau']:.3f}{_ci_text(t.get('noise_tau_ci'))}"
        note = "fewer than 3 cells: undefined" if t["n"] < 3 else re.sub(
            r"(\d+) of (\d+) bootstrap resamples were degenerate \(constant\) and dropped",
            r"\1/\2 degenerate resamples dropped", t.get("note") or "")
        body.append([_k_label(t["k"]), str(t["n"]), tau, rho, noise, note])
    lines += _table(["K %", "n", "tau-b [CI]", "Spearman", "noise tau-b [CI]", "note"], body, left=(0, 5))
    delta = s.get("mean_accuracy_delta")
    paper = s.get("paper_mean_gain")
    lines.append("")
    lines.append(f"mean accuracy delta (new - benchmark): {_fmt(delta, '+.2f')} points"
                 f"{_ci_text(s.get('mean_accuracy_delta_ci'), '+.2f')}; new better on {s.get('new_better', 0)}/"
                 f"{s.get('n', 0)} cells" + (f" (Chen et al.: {paper:+.2f} on {summary.get('dataset')})"
                                             if paper is not None else ""))
    lines.append(f"pairwise accuracy gaps: mean {_fmt(s.get('mean_gap_benchmark'), '.2f')} (benchmark) -> "
                 f"{_fmt(s.get('mean_gap_new'), '.2f')} (new), ratio {_fmt(s.get('gap_ratio'), '.3f')}"
                 f"{_ci_text(s.get('gap_ratio_ci'))}; {s.get('rank_changes', 0)} cell(s) changed rank")
    if s.get("diverged"):
        lines.append(f"diverged trainings (counted as 0 %): {s['diverged']}")
    ml = summary.get("mlflow") or {}
    if ml.get("ranking_run_id"):
        lines.append(f"MLflow ranking run {ml['ranking_run_id']} (parent run {ml.get('parent_run_id')})")
    return "\n".join(lines)


def format_reevaluation_markdown(summary: Mapping[str, Any]) -> str:
    budget = summary.get("budget", {})
    lines = [f"# ahps reevaluate: NB201 on {summary.get('dataset')} (run group {summary.get('run_group')})", ""]
    if budget.get("reduced"):
        lines += [f"> **{budget.get('text')}**", ""]
    lines += ["```", format_reevaluation(summary), "```"]
    return "\n".join(lines) + "\n"

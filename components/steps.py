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
):
    """The :class:`ahps_core.train.TrainConfig` of one training of the pipeline.

    ``train_recipe``: a preset of :data:`ahps_core.train.RECIPES`; empty: the family's default -- NB201's recipe for
    ``nb201``; for ``mlp``/``cnn`` the reference experiments' plain SGD at a constant LR with the batch size and
    hidden width of the base-LR probe (:func:`ahps_core.lr_search.default_budget`/``default_width``), so the
    transferred LR is used in the setting it was found in. ``0`` for batch_size/width/max_steps_per_epoch: the
    recipe's value. Evaluation runs at least at the last epoch.
    """
    from ahps_core.lr_search import default_budget, default_width
    from ahps_core.train import RECIPES as TRAIN_RECIPES
    from ahps_core.train import TrainConfig

    if train_recipe:
        if train_recipe not in TRAIN_RECIPES:
            raise ConfigError(f"unknown train_recipe {train_recipe!r}: accepted are {', '.join(TRAIN_RECIPES)} "
                              "(or empty for the family's default)")
        values = dict(TRAIN_RECIPES[train_recipe])
    elif family == "nb201":
        values = dict(TRAIN_RECIPES["nb201"])
    else:
        values = dict(batch_size=default_budget(dataset).batch_size, momentum=0.0, nesterov=False, weight_decay=0.0,
                      schedule="constant", warmup_epochs=0.0, eval_every=1)
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
    return TrainConfig.from_dict(values).validated()


# --- step 1: base LR on the proxy ---------------------------------------------------------------------------


def find_base_lr_step(
    *, family: str, dataset: str, data_source: str, base_lr: float, lr_grid: Sequence[float], lr_seeds: int,
    width: int, tracking_uri: str, experiment: str, run_group: str, parent_params: Mapping[str, Any],
    out_dir: str, pipeline: str = "transfer",
) -> dict[str, Any]:
    """Create (or find) the run group's parent run, then find the base LR on the family's proxy -- or take
    ``base_lr`` when it is > 0 -- and record it in a ``lr-search`` child run. Idempotent: a finished search of
    the same group is reused. Writes ``search.json`` (+ ``lr_curve.png``) to ``out_dir``."""
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
            from ahps_core.train import check_lr

            summary = {"base_lr": check_lr(given, "base_lr"), "source": "given", "curve": [], "grid": []}
            log("find-base-lr", f"base LR given: {given:.6g} (no search)")
        else:
            from ahps_core.lr_search import default_width, find_base_lr

            result = find_base_lr(
                family, dataset, data_root=data_source or None, grid=list(lr_grid) or None,
                seeds=list(range(int(lr_seeds))),
                width=int(width) if width else (default_width(family, dataset)),
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
) -> list[dict[str, Any]]:
    """The LR + init plan of every target and recipe and seed (the items of the training ParallelFor).

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
        log("transfer", f"{spec}: LR {t.lr:.6g} (x{t.ratio:.4g} of base {base_lr:.6g}); fixed LR {fixed:.6g}")
        for recipe in RECIPES:
            for seed in seeds:
                items.append({
                    "arch": spec, "recipe": recipe, "seed": seed,
                    "lr": t.lr if recipe == "autoscaled" else fixed,
                    "init": INIT_OF_RECIPE[recipe], "base_lr": base_lr, "predicted_lr": t.lr, "ratio": t.ratio,
                    "run_group": run_group,
                })
    plan = {"family": family, "rule": rule, "convention": convention, "base_lr": base_lr, "fixed_lr": fixed,
            "seeds": seeds, "targets": planned, "skipped": skipped, "items": items, "run_group": run_group}
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
) -> dict[str, Any]:
    """One architecture x recipe x seed. Idempotent on the run key ``<group>/<arch>/<recipe>/<seed>``: a FINISHED
    MLflow run of the same key and configuration is returned as it is, without training ("reused").

    Checkpoints live at ``<checkpoint_root>/<group>/<arch>/<recipe>/<seed>/`` (a directory or an S3 prefix:
    downloaded before training, uploaded after every epoch), so a retried (preempted) task resumes where the
    last one stopped; with an empty root they live in the task's model artifact. Epoch metrics go to MLflow as
    step metrics as they come; a tracking failure during training does not stop it (the history is logged at
    the end). ``result.json`` is written to ``model_dir`` before anything is reported to MLflow.
    """
    from ahps_core.storage import CheckpointSync, checkpoint_location
    from ahps_core.train import train

    arch, recipe, seed = str(item["arch"]), str(item["recipe"]), as_int(item["seed"])
    lr, init = float(item["lr"]), str(item.get("init") or INIT_OF_RECIPE[recipe])
    model_path = Path(model_dir)
    model_path.mkdir(parents=True, exist_ok=True)
    config = train_config(family=family, arch=arch, dataset=dataset, data_source=data_source, epochs=as_int(epochs),
                          lr=lr, init=init, seed=seed, train_recipe=train_recipe, batch_size=as_int(batch_size),
                          width=as_int(width), max_steps_per_epoch=as_int(max_steps_per_epoch), device=device)
    chash = config.hash()
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
            "convention": convention}
    params = {"lr": lr, "base_lr": float(item.get("base_lr", lr)), "lr_ratio": float(item.get("ratio", 1.0)),
              "init": init, "epochs": config.epochs, "batch_size": config.batch_size, "momentum": config.momentum,
              "weight_decay": config.weight_decay, "schedule": config.schedule, "width": config.width,
              "seed": seed, "recipe": recipe, "arch": arch, "train_recipe": train_recipe or f"{family}-default",
              "max_steps_per_epoch": config.max_steps_per_epoch}
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
        result = train(config.replace(checkpoint_dir=str(sync.local_dir)), callback=on_epoch, progress=False)
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
    for off, recipe, color in ((-w / 2, "autoscaled", "tab:blue"), (w / 2, "fixed", "tab:orange")):
        ys = [100 * (r.get(f"{recipe}_acc") or 0.0) for r in rows]
        bars = ax.bar([i + off for i in x], ys, w, label=recipe, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
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

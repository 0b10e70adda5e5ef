"""The ``reevaluate`` pipeline (issue #6): sample NAS-Bench-201 cells -> base LR -> transfer -> ParallelFor over
cells x seeds: train with the NB201 recipe at the cell's own (architecture-aware) LR and init -> rank against the
benchmark records (Chen et al., ICLR 2024, §4.3: top-K% Kendall tau, seed-noise floor, mean accuracy delta,
pairwise gaps).

Steps (components, see :mod:`components.ops`; logic in :mod:`ahps_core.workflow`):

1. ``sample-cells``: opens the records (``benchmark``: a NATS-Bench ``*-simple`` directory or an NB201 ``.pth``,
   a path or ``s3://``; ``fixture``: the 3-architecture NATS-Bench fixture shipped with ahps), draws ``sample_size``
   cells (seeded, deduplicated under ``dedup``, optionally stratified by accuracy), reads their per-seed records
   on ``dataset``, and creates the MLflow parent run (one per run group; ``run_group`` empty = the KFP run id, so
   every scheduled run is a new parent run in the same experiment). Cells without an input->output path and
   isomorphic duplicates are recorded as skipped, with their reasons.
2. ``reeval-base-lr``: the base LR, given (``base_lr``, NB201 reference code: 0.46 with ``--lr_autoscale``) or,
   with ``base_lr`` 0, searched on the nb201 proxy (the transfer pipeline's find-base-LR step).
3. ``reeval-plan``: the LR of every cell (rule/convention) and the arch-aware init, per seed.
4. ``reeval-train`` (ParallelFor): NB201's recipe (SGD 0.9 Nesterov, wd 5e-4, cosine, batch 256, crop+flip) on
   the macro network ``C``/``N`` for ``epochs``, evaluated on the part holding the benchmark's headline set;
   one MLflow child run per cell x seed with ``benchmark_acc``, ``new_acc``, ``delta``.
5. ``rank``: the ranking run (``tau_top<K>``, ``spearman_top<K>``, ``noise_tau_top<K>``, delta with CI, gaps,
   the ranking report JSON and the plots) and the summary ``ahps run`` prints.

**Defaults.** Unlike ``transfer``, the :data:`PARAMS` defaults are the *cluster's*: NB201's network and budget
(C=16, N=5, 200 epochs), so a compiled/scheduled pipeline re-evaluates for real. ``ahps run reevaluate``
replaces them by :func:`local_defaults`: the fixture's 3 cells, a tiny generated dataset in the real CIFAR /
ImageNet16 formats written under the output directory, C=4, N=1, 2 epochs. Anything other than NB201's network
and budget, or generated data, is marked as a reduced budget -- in the parent and child runs' tags (``budget``),
the parent run's description and params, and the printed summary -- so a smoke run is never mistaken for a
re-evaluation.

Cluster settings are the transfer pipeline's (:mod:`pipelines._cluster`): the training steps (``reeval-base-lr``,
``reeval-train``) request the GPU, take tolerations/node selector from parameters, mount the dataset cache and are
retried on preemption; every step reads the S3/MLflow credentials from the named secrets.

(No ``from __future__ import annotations`` here: kfp reads the pipeline function's annotations as types.)
"""

import os
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError
from pipelines import Param
from pipelines._cluster import (
    DEFAULT_ACCELERATOR,
    DEFAULT_CACHE_DIR,
    TaskSettings,
    cluster_params,
    validate_cluster_params,
)

NAME = "reevaluate"
PIPELINE_NAME = "ahps-reevaluate"
DESCRIPTION = ("Re-evaluate NAS-Bench-201: sampled cells trained with the NB201 recipe at their own "
               "architecture-aware LR and init, ranked against the benchmark records (top-K% Kendall tau, seed-noise "
               "floor, accuracy delta), tracked in MLflow.")

DEFAULT_TOPK = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1]
#: Name of the checksums manifest written next to generated data; ``validate(local=True)`` (re)generates the data
#: when ``checksums_file`` is ``<data_source>/`` this name and it is missing.
SYNTHETIC_MANIFEST = "ahps-synthetic-md5.json"
SYNTHETIC_SIZES = {"n_train": 1000, "n_test": 500}
#: What ``ahps run reevaluate`` runs (besides the generated data): the fixture's 3 cells, a tiny network and budget.
LOCAL_BUDGET = {"sample_size": 3, "epochs": 2, "C": 4, "N": 1, "batch_size": 64}
DATASETS = ("cifar10", "cifar10-valid", "cifar100", "ImageNet16-120")
#: ``ahps compile`` may leave these empty (the run gets them at submit time); validated with the placeholder.
SUBMIT_TIME_PLACEHOLDERS = {"data_source": "s3://set-at-submit-time",
                            "benchmark": "s3://set-at-submit-time/NATS-tss-v1_0-3ffb9-simple"}

PARAMS: dict[str, Param] = {
    "family": Param("nb201", "architecture family: nb201 only (the benchmark's cells; nas-bench-201 accepted)"),
    "benchmark": Param("", "benchmark records: a NATS-Bench topology '*-simple' directory or an NB201 .pth file, a "
                           "path or s3://bucket/key; 'fixture': the 3-architecture NATS-Bench fixture shipped with "
                           "ahps (smoke tests; ahps run's default)"),
    "dataset": Param("cifar10", "cifar10, cifar10-valid, cifar100 or ImageNet16-120"),
    "data_source": Param("", "where the dataset files are: a directory or s3://bucket/prefix (ahps run: a tiny "
                             "generated dataset in the real formats)"),
    "checksums_file": Param("", "JSON {file: md5} for dataset files without a known checksum (custom or generated "
                                "data; a local path); empty: the real datasets' known md5s"),
    "sample_size": Param(100, "cells sampled from the records (ahps run: 3)"),
    "sample_seed": Param(0, "seed of the sample"),
    "stratify": Param(False, "stratify the sample by benchmark accuracy (reads every record)"),
    "dedup": Param("function", "duplicate rule: function, graph, nb201 (isomorphic cells sampled once) or none"),
    "base_lr": Param(0.46, "base LR of the proxy (NB201 reference: 0.46); 0: find it by the LR search"),
    "lr_grid": Param([], "LR grid of the base-LR search (base_lr 0); empty: 25 log-spaced points"),
    "lr_seeds": Param(3, "seeds of the base-LR search (base_lr 0)"),
    "rule": Param("sum-cubed", "transfer rule: sum-cubed (Chen et al.) or effective-depth (Wu et al.)"),
    "convention": Param("reference", "depth convention: reference (released code) or paper"),
    "epochs": Param(200, "training epochs per cell (NB201: 200; ahps run: 2)"),
    "seeds": Param([777], "training seeds per cell (NB201 used 777, 888, 999)"),
    "C": Param(16, "channels of the first stage of the macro network (NB201: 16; ahps run: 4)"),
    "N": Param(5, "cells per stage (NB201: 5; ahps run: 1)"),
    "batch_size": Param(0, "training batch size; 0: NB201's 256 (ahps run: 64)"),
    "max_steps_per_epoch": Param(0, "truncate every training epoch to this many steps; 0: full epochs"),
    "topk": Param(DEFAULT_TOPK, "top-K% sets of the ranking comparison (K in (0, 100])"),
    "n_boot": Param(1000, "bootstrap resamples of the confidence intervals (0: none)"),
    "select_by": Param("benchmark", "which accuracy picks the top-K% sets: benchmark or new"),
    "device": Param("auto", "training device: auto, cpu or cuda"),
    **cluster_params(experiment="ahps-reevaluate"),
}

D = {k: p.default for k, p in PARAMS.items()}


def build(
    *,
    base_image: str | None = None,
    accelerator: str = DEFAULT_ACCELERATOR,
    gpus: int = 1,
    dataset_pvc: str = "",
    cache_dir: str = DEFAULT_CACHE_DIR,
    parallelism: int = 0,
    retries: int = 3,
    backoff: str = "60s",
    backoff_factor: float = 2.0,
):
    """The pipeline (a ``@dsl.pipeline`` component) with these compile-time options (as
    :func:`pipelines.transfer.build`; see :class:`pipelines._cluster.TaskSettings`)."""
    from kfp import dsl

    from components import make_components

    c = make_components(base_image)
    settings = TaskSettings(accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc, cache_dir=cache_dir,
                            parallelism=parallelism, retries=retries, backoff=backoff, backoff_factor=backoff_factor)
    with_secrets, training_task = settings.with_secrets, settings.training

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def reevaluate(
        family: str = D["family"],
        benchmark: str = D["benchmark"],
        dataset: str = D["dataset"],
        data_source: str = D["data_source"],
        checksums_file: str = D["checksums_file"],
        sample_size: int = D["sample_size"],
        sample_seed: int = D["sample_seed"],
        stratify: bool = D["stratify"],
        dedup: str = D["dedup"],
        base_lr: float = D["base_lr"],
        lr_grid: list = D["lr_grid"],
        lr_seeds: int = D["lr_seeds"],
        rule: str = D["rule"],
        convention: str = D["convention"],
        epochs: int = D["epochs"],
        seeds: list = D["seeds"],
        C: int = D["C"],
        N: int = D["N"],
        batch_size: int = D["batch_size"],
        max_steps_per_epoch: int = D["max_steps_per_epoch"],
        topk: list = D["topk"],
        n_boot: int = D["n_boot"],
        select_by: str = D["select_by"],
        device: str = D["device"],
        tracking_uri: str = D["tracking_uri"],
        mlflow_experiment: str = D["mlflow_experiment"],
        run_group: str = D["run_group"],
        checkpoint_root: str = D["checkpoint_root"],
        s3_endpoint: str = D["s3_endpoint"],
        s3_secret: str = D["s3_secret"],
        mlflow_secret: str = D["mlflow_secret"],
        gpu_tolerations: list = D["gpu_tolerations"],
        gpu_node_selector: dict = D["gpu_node_selector"],
    ) -> dsl.Artifact:
        sampled = c.sample_cells(
            family=family, benchmark=benchmark, dataset=dataset, data_source=data_source,
            checksums_file=checksums_file, sample_size=sample_size, sample_seed=sample_seed, stratify=stratify,
            dedup=dedup, base_lr=base_lr, lr_grid=lr_grid, lr_seeds=lr_seeds, rule=rule, convention=convention,
            epochs=epochs, seeds=seeds, C=C, N=N, batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch,
            topk=topk, n_boot=n_boot, select_by=select_by, tracking_uri=tracking_uri,
            mlflow_experiment=mlflow_experiment, run_group=run_group, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            s3_endpoint=s3_endpoint,
        )
        settings.cache(with_secrets(sampled, s3_secret, mlflow_secret))  # the benchmark is cached like data
        group = sampled.outputs["run_group"]

        lr = c.reeval_base_lr(
            dataset=dataset, data_source=data_source, checksums_file=checksums_file, base_lr=base_lr,
            lr_grid=lr_grid, lr_seeds=lr_seeds, C=C, N=N, tracking_uri=tracking_uri,
            mlflow_experiment=mlflow_experiment, run_group=group, s3_endpoint=s3_endpoint,
        )
        training_task(with_secrets(lr, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)

        plan = c.reeval_plan(
            cells=sampled.outputs["cells"], seeds=seeds, base_lr=lr.outputs["base_lr"], rule=rule,
            convention=convention, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(plan, s3_secret, mlflow_secret)

        # Inside the loop only the item and pipeline parameters are used (see pipelines.transfer): the run group,
        # LR and benchmark accuracy travel in the item.
        with dsl.ParallelFor(plan.outputs["Output"], parallelism=settings.parallelism or None) as item:
            trained = c.reeval_train(
                item=item, dataset=dataset, data_source=data_source, checksums_file=checksums_file, epochs=epochs,
                batch_size=batch_size, C=C, N=N, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
                convention=convention, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
                checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint,
            )
            training_task(with_secrets(trained, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)

        ranked = c.rank(
            results=dsl.Collected(trained.outputs["Output"]), cells=sampled.outputs["cells"],
            plan=plan.outputs["plan"], dataset=dataset, topk=topk, n_boot=n_boot, select_by=select_by,
            tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(ranked, s3_secret, mlflow_secret)
        return ranked.outputs["summary"]

    return reevaluate


# --- validation -------------------------------------------------------------------------------------------------


def validate(params: dict[str, Any], *, local: bool) -> dict[str, Any]:
    """Check a full parameter set (defaults filled in); returns it normalized. ``local``: for ``ahps run`` (paths
    must exist here; the benchmark is opened and the sample drawn, so a missing/wrong benchmark or a sample larger
    than its cells fails now, and generated data is written when missing); otherwise for a cluster
    (``tracking_uri`` must be given; the shipped fixture is still checked, other benchmarks are opened by the
    pipeline; ``benchmark`` and ``data_source`` have no default there)."""
    from ahps_core.ranking import SELECT_BY
    from ahps_core.scaling import CONVENTIONS, RULES
    from ahps_core.workflow import DEDUP_RULES
    from pipelines.transfer import FAMILY_ALIASES, _choice

    p = dict(params)
    family = FAMILY_ALIASES.get(str(p["family"]).lower(), str(p["family"]).lower())
    if family != "nb201":
        raise ConfigError(f"unknown family {p['family']!r}: the reevaluate pipeline re-trains NAS-Bench-201 cells, "
                          "accepted is nb201 (or nas-bench-201)")
    p["family"] = family
    _choice("dataset", p["dataset"], DATASETS)
    _choice("rule", p["rule"], RULES)
    _choice("convention", p["convention"], CONVENTIONS)
    _choice("device", p["device"], ("auto", "cpu", "cuda"))
    _choice("dedup rule", p["dedup"], DEDUP_RULES)
    _choice("select_by", p["select_by"], SELECT_BY)
    for name, minimum in (("sample_size", 1), ("sample_seed", 0), ("epochs", 1), ("lr_seeds", 1), ("C", 1),
                          ("N", 1), ("batch_size", 0), ("max_steps_per_epoch", 0), ("n_boot", 0)):
        if p[name] < minimum:
            raise ConfigError(f"{name} {p[name]!r} must be >= {minimum}")
    seeds = p["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds {seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds!r} contain duplicates")
    topk = p["topk"]
    if not topk or not all(isinstance(k, (int, float)) and not isinstance(k, bool) and 0 < k <= 100 for k in topk):
        raise ConfigError(f"topk {topk!r} must be a non-empty list of percentages in (0, 100], e.g. [100, 50, 10]")
    if len(set(topk)) != len(topk):
        raise ConfigError(f"topk {topk!r} contains duplicates")
    if not p["base_lr"] >= 0 or p["base_lr"] == float("inf"):
        raise ConfigError(f"base_lr {p['base_lr']!r} must be a finite number >= 0 (0: find it by the LR search)")
    for lr in p["lr_grid"]:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ConfigError(f"lr_grid {p['lr_grid']!r} must hold finite learning rates > 0")
    validate_cluster_params(p, local=local)
    _validate_data(p, local=local)
    _validate_benchmark(p, local=local)
    if local:
        _materialize_synthetic(p)
    return p


def _synthetic_manifest_of(p: dict[str, Any]) -> Path | None:
    """``checksums_file`` when it is the manifest of generated data in ``data_source`` (see SYNTHETIC_MANIFEST)."""
    if not p["checksums_file"] or Path(p["checksums_file"]).name != SYNTHETIC_MANIFEST:
        return None
    manifest = Path(p["checksums_file"])
    if not p["data_source"] or p["data_source"].startswith("s3://"):
        return None
    return manifest if manifest.parent.resolve() == Path(p["data_source"]).resolve() else None


def _validate_data(p: dict[str, Any], *, local: bool) -> None:
    generated = p["checksums_file"] and Path(p["checksums_file"]).name == SYNTHETIC_MANIFEST
    if generated and _synthetic_manifest_of(p) is None:
        p["checksums_file"] = ""  # generated data's manifest, but data_source points elsewhere: it does not apply
    if not p["data_source"]:
        raise ConfigError(f"dataset {p['dataset']} needs data_source: a directory or s3://bucket/prefix with its "
                          "files")
    if p["data_source"].startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(p["data_source"])
    if not local or _synthetic_manifest_of(p) is not None:
        return
    if p["checksums_file"].startswith("s3://"):
        raise ConfigError(f"checksums_file {p['checksums_file']!r} must be a local path")
    if not p["data_source"].startswith("s3://") and not Path(p["data_source"]).exists():
        raise ConfigError(f"data_source {p['data_source']!r} does not exist")
    if p["checksums_file"]:
        from ahps_core.workflow import read_checksums_manifest

        read_checksums_manifest(p["checksums_file"])


def _validate_benchmark(p: dict[str, Any], *, local: bool) -> None:
    """Open the records and draw the sample now where they are reachable from here: the fixture (empty
    ``benchmark``) always, a local path with ``local``; S3 and cluster paths are opened by the pipeline."""
    bench = p["benchmark"]
    if not bench:
        from ahps_core.workflow import benchmark_path

        benchmark_path(bench)  # the error saying what to give
    if bench.startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(bench)
        return
    if bench != "fixture" and not local:
        return
    from ahps_core.workflow import open_benchmark_records

    open_benchmark_records(bench, sample={
        "k": p["sample_size"], "seed": p["sample_seed"], "dataset": p["dataset"], "stratify": p["stratify"],
        "dedup": p["dedup"] != "none", "iso": p["dedup"] if p["dedup"] != "none" else "function",
    })


def _materialize_synthetic(p: dict[str, Any]) -> None:
    """Write the generated dataset (CIFAR-10, CIFAR-100 and ImageNet16 lookalikes in their real file formats, one
    directory) when ``checksums_file`` is its missing manifest: the last step of a local validation, so a bad
    parameter leaves nothing behind."""
    manifest = _synthetic_manifest_of(p)
    if manifest is not None and not manifest.is_file():
        write_synthetic_data(manifest.parent)


def write_synthetic_data(directory: str | os.PathLike[str]) -> Path:
    """Tiny learnable datasets in the exact formats of CIFAR-10 (``cifar-10-batches-py/``), CIFAR-100
    (``cifar-100-python/``) and ImageNet16-120 (the batch files) under ``directory``, and the manifest
    (``SYNTHETIC_MANIFEST``: ``{"data_source", "synthetic": true, "md5"}``) written last; returns its path."""
    from ahps_core.data import write_cifar_like, write_imagenet16_like
    from ahps_core.workflow import write_json

    root = Path(directory).resolve()
    n_train, n_test = SYNTHETIC_SIZES["n_train"], SYNTHETIC_SIZES["n_test"]
    md5 = {**write_cifar_like(root, n_train, n_test, 10, seed=0),
           **write_cifar_like(root, n_train, n_test, 100, seed=1),
           **write_imagenet16_like(root, n_train, n_test, num_labels=120, seed=2)}
    return write_json(root / SYNTHETIC_MANIFEST, {
        "data_source": str(root), "synthetic": True, "md5": md5,
        "note": f"generated by ahps run reevaluate: {n_train} training / {n_test} test images per dataset, class "
                "templates plus noise; NOT the real datasets",
    })


def local_defaults(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parameter values ``ahps run`` adds (unless given): the shipped fixture's 3 cells, generated data under
    ``<workdir>/synthetic-data`` (written by the local validation), a tiny network and budget
    (:data:`LOCAL_BUDGET`), checkpoints under ``<workdir>/checkpoints``."""
    work = Path(workdir).resolve()
    data = work / "synthetic-data"
    return {"benchmark": "fixture", "data_source": str(data), "checksums_file": str(data / SYNTHETIC_MANIFEST),
            **LOCAL_BUDGET, "checkpoint_root": str(work / "checkpoints")}


def format_summary(summary: dict[str, Any]) -> str:
    from ahps_core.workflow import format_reevaluation

    return format_reevaluation(summary)

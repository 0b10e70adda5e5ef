"""The ``transfer`` pipeline: find-base-LR (proxy) -> transfer -> ParallelFor over targets x {autoscaled, fixed} x
seeds -> train -> compare.

One pipeline function serves both worlds. On a Kubeflow cluster the training steps (``find-base-lr`` trains the
proxy's probes, ``train`` the targets) request a GPU (accelerator type and count: compile-time options, see
below), tolerate and select GPU nodes from the ``gpu_tolerations``/``gpu_node_selector`` parameters, mount a
dataset cache (an emptyDir, or a PVC when ``dataset_pvc`` is given) at ``cache_dir``, read S3 and MLflow
credentials from Kubernetes secrets (names: the ``s3_secret``/``mlflow_secret`` parameters; optional, so a
cluster without auth still runs) and are retried on preemption (3 retries, 60 s backoff doubling), resuming
from the checkpoint kept under ``checkpoint_root``. On kfp's local runner these settings are ignored (it warns
about the GPU request and retries; kfp-kubernetes settings are silently ignored) and every task runs on CPU.

Why the accelerator type/count are compile-time options and not pipeline parameters: kfp 2.17 accepts a pipeline
parameter there, but the local runner then fails inside the ParallelFor ("Parent pipeline input argument
'pipelinechannel--...' not found"), and the same pipeline must run locally.

Credential *values* are never parameters: only secret names are.

(No ``from __future__ import annotations`` here: kfp reads the pipeline function's annotations as types.)
"""

import os
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError
from pipelines import Param
from pipelines._cluster import (  # noqa: F401 - re-exported: the constants were defined here first
    DEFAULT_ACCELERATOR,
    DEFAULT_CACHE_DIR,
    DEFAULT_TOLERATIONS,
    MLFLOW_SECRET_KEYS,
    S3_SECRET_KEYS,
    TaskSettings,
    cluster_params,
    validate_cluster_params,
)

NAME = "transfer"
PIPELINE_NAME = "ahps-transfer"
DESCRIPTION = ("Architecture-aware LR transfer: base LR once on a one-hidden-layer proxy, LR ∝ (Σ_p L_p³)^(-1/2) "
               "for every target, autoscaled vs fixed recipe side by side, tracked in MLflow.")

#: Default targets: mlp DAGs (reference DAG codes) of different depths and topologies: a 2-layer chain, two
#: parallel paths, a 3-layer chain, a 3-layer cell with skips, and a dense 4-layer DAG (8 paths).
DEFAULT_TARGETS = ["2_02", "2_22", "2_02_002", "2_12_122", "2_22_222_2222"]

PARAMS: dict[str, Param] = {
    "family": Param("mlp", "architecture family: mlp, cnn or nb201"),
    "dataset": Param("digits", "digits (scikit-learn, no download), cifar10, cifar10-valid, cifar100, ImageNet16-120"),
    "data_source": Param("", "where the dataset files are: a directory or s3://bucket/prefix (empty for digits)"),
    "targets": Param(DEFAULT_TARGETS, "target architectures (specs of the family), e.g. [\"2_02\",\"2_22\"]"),
    "seeds": Param([0], "training seeds of every target and recipe"),
    "epochs": Param(20, "training epochs of every target"),
    "rule": Param("sum-cubed", "transfer rule: sum-cubed (Chen et al.) or effective-depth (Wu et al.)"),
    "convention": Param("reference", "depth convention: reference or paper"),
    "base_lr": Param(0.0, "base LR of the proxy; 0: find it by the LR search"),
    "fixed_lr": Param(0.0, "LR of the fixed recipe (every architecture); 0: the base LR"),
    "lr_grid": Param([], "LR grid of the base-LR search; empty: 25 log-spaced points in [10^-2.5, 10^0.5]"),
    "lr_seeds": Param(3, "seeds of the base-LR search (the protocol uses >= 3)"),
    "train_recipe": Param("", "training preset (ahps_core.train.RECIPES, e.g. nb201); empty: the family's default"),
    "batch_size": Param(0, "training batch size; 0: the recipe's"),
    "width": Param(0, "hidden width of mlp/cnn networks (probe and targets); 0: the dataset's default"),
    "max_steps_per_epoch": Param(0, "truncate every training epoch to this many steps; 0: full epochs"),
    "device": Param("auto", "training device: auto, cpu or cuda"),
    **cluster_params(experiment="ahps"),
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
    """The pipeline (a ``@dsl.pipeline`` component) with these compile-time options.

    ``accelerator``: resource type the training steps request (``""``: no GPU request), ``gpus`` of them;
    ``dataset_pvc``: a PVC mounted at ``cache_dir`` instead of an emptyDir (``cache_dir`` ``""``: no cache volume
    and no ``AHPS_DATA_CACHE``); ``parallelism``: concurrent trainings (0: unlimited); ``retries``: retries of the
    training steps after a failure/preemption (0: none) with ``backoff`` doubling by ``backoff_factor``.
    """
    from kfp import dsl

    from components import make_components

    c = make_components(base_image)
    settings = TaskSettings(accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc, cache_dir=cache_dir,
                            parallelism=parallelism, retries=retries, backoff=backoff, backoff_factor=backoff_factor)
    with_secrets, training_task = settings.with_secrets, settings.training

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def transfer(
        family: str = D["family"],
        dataset: str = D["dataset"],
        data_source: str = D["data_source"],
        targets: list = D["targets"],
        seeds: list = D["seeds"],
        epochs: int = D["epochs"],
        rule: str = D["rule"],
        convention: str = D["convention"],
        base_lr: float = D["base_lr"],
        fixed_lr: float = D["fixed_lr"],
        lr_grid: list = D["lr_grid"],
        lr_seeds: int = D["lr_seeds"],
        train_recipe: str = D["train_recipe"],
        batch_size: int = D["batch_size"],
        width: int = D["width"],
        max_steps_per_epoch: int = D["max_steps_per_epoch"],
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
        search = c.find_base_lr(
            family=family, dataset=dataset, data_source=data_source, targets=targets, seeds=seeds, epochs=epochs,
            rule=rule, convention=convention, base_lr=base_lr, fixed_lr=fixed_lr, lr_grid=lr_grid,
            lr_seeds=lr_seeds, train_recipe=train_recipe, batch_size=batch_size, width=width,
            tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=run_group,
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, s3_endpoint=s3_endpoint,
        )
        training_task(with_secrets(search, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)
        group = search.outputs["run_group"]

        plan = c.transfer(
            family=family, targets=targets, seeds=seeds, base_lr=search.outputs["base_lr"], fixed_lr=fixed_lr,
            rule=rule, convention=convention, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
            run_group=group,
        )
        with_secrets(plan, s3_secret, mlflow_secret)

        # Inside the loop only the item and pipeline parameters are used: kfp 2.17's local runner resolves any
        # other upstream output there to the loop item, so the run group travels in the item.
        with dsl.ParallelFor(plan.outputs["Output"], parallelism=settings.parallelism or None) as item:
            trained = c.train(
                item=item, family=family, dataset=dataset, data_source=data_source, epochs=epochs,
                train_recipe=train_recipe, batch_size=batch_size, width=width,
                max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule, convention=convention,
                tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
                checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint,
            )
            training_task(with_secrets(trained, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)

        compared = c.compare(
            results=dsl.Collected(trained.outputs["Output"]), plan=plan.outputs["plan"], family=family,
            dataset=dataset, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(compared, s3_secret, mlflow_secret)
        return compared.outputs["summary"]

    return transfer


# --- validation -------------------------------------------------------------------------------------------------

#: Other spellings of the families (the chart and docs say nas-bench-201).
FAMILY_ALIASES = {"nas-bench-201": "nb201", "nasbench201": "nb201", "nb-201": "nb201", "nats-bench": "nb201"}


def _choice(name: str, value: Any, accepted: tuple[str, ...] | list[str]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}: accepted are {', '.join(accepted)}")


def validate(params: dict[str, Any], *, local: bool) -> dict[str, Any]:
    """Check a full parameter set (defaults filled in); returns it. ``local``: for ``ahps run`` (data paths must
    exist here); otherwise for a cluster (``tracking_uri`` must be given: the pods need it)."""
    from ahps_core.data import DATASETS
    from ahps_core.graph import parse_arch
    from ahps_core.scaling import CONVENTIONS, RULES, Transferer
    from ahps_core.errors import ArchSpecError, NoPathError

    p = dict(params)
    p["family"] = FAMILY_ALIASES.get(str(p["family"]).lower(), p["family"])
    _choice("family", p["family"], ("mlp", "cnn", "nb201"))
    _choice("dataset", p["dataset"], tuple(DATASETS))
    _choice("rule", p["rule"], RULES)
    _choice("convention", p["convention"], CONVENTIONS)
    _choice("device", p["device"], ("auto", "cpu", "cuda"))
    targets = p["targets"]
    if not targets:
        raise ConfigError("the target list is empty: give at least one architecture, e.g. targets='[\"2_02\"]'")
    if not all(isinstance(t, str) and t.strip() for t in targets):
        raise ConfigError(f"targets {targets!r} must be non-empty architecture spec strings")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"targets {targets!r} contain duplicates")
    transferer = Transferer(p["family"], 1.0, rule=p["rule"], convention=p["convention"])
    trainable = 0
    for t in targets:
        try:
            graph = parse_arch(t, p["family"])
        except NoPathError:
            continue  # recorded as skipped by the transfer step
        except ArchSpecError as exc:
            raise ConfigError(f"target {t!r}: {exc}") from None
        if graph.family != p["family"]:
            raise ConfigError(f"target {t!r} is a {graph.family} architecture, but family is {p['family']!r}")
        try:
            transferer(graph)
            trainable += 1
        except NoPathError:
            pass
    if not trainable:
        raise ConfigError(f"no target of {targets!r} has an input->output path: nothing can be trained")
    seeds = p["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds {seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds!r} contain duplicates")
    for name, minimum in (("epochs", 1), ("lr_seeds", 1), ("batch_size", 0), ("width", 0),
                          ("max_steps_per_epoch", 0)):
        if p[name] < minimum:
            raise ConfigError(f"{name} {p[name]!r} must be >= {minimum}")
    for name in ("base_lr", "fixed_lr"):
        if not p[name] >= 0 or p[name] == float("inf"):
            raise ConfigError(f"{name} {p[name]!r} must be a finite number >= 0 (0: {PARAMS[name].help.split('; ')[-1]})")
    for lr in p["lr_grid"]:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ConfigError(f"lr_grid {p['lr_grid']!r} must hold finite learning rates > 0")
    if p["train_recipe"]:
        from ahps_core.presets import PRESETS as RECIPES

        _choice("train_recipe", p["train_recipe"], tuple(RECIPES))
    if p["dataset"] == "digits":
        if p["data_source"]:
            raise ConfigError(f"dataset digits ships with scikit-learn: data_source must be empty (got "
                              f"{p['data_source']!r})")
    elif not p["data_source"]:
        raise ConfigError(f"dataset {p['dataset']} needs data_source: a directory or s3://bucket/prefix with its files")
    elif local and not p["data_source"].startswith("s3://") and not Path(p["data_source"]).exists():
        raise ConfigError(f"data_source {p['data_source']!r} does not exist")
    validate_cluster_params(p, local=local)
    return p


def local_defaults(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parameter values ``ahps run`` adds (unless given): checkpoints under ``<workdir>/checkpoints`` (so an
    interrupted local run resumes its trainings)."""
    return {"checkpoint_root": str(Path(workdir).resolve() / "checkpoints")}


def format_summary(summary: dict[str, Any]) -> str:
    from ahps_core.workflow import format_stats, format_table

    return f"{format_table(summary)}\n\n{format_stats(summary)}"

"""The ``transfer`` pipeline: find-base-LR (proxy) -> transfer -> ParallelFor over packs (``pack`` targets each, with
all their {autoscaled, fixed} x seeds: :mod:`ahps_core.steps.pack`) -> train -> compare.

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

Credential *values* are never parameters: only secret names are. The parameters' checks are
:func:`ahps_core.steps.params.check_transfer`; the steps themselves :mod:`ahps_core.steps.transfer`.

(No ``from __future__ import annotations`` here: kfp reads the pipeline function's annotations as types.)
"""

from ahps_core.steps.params import FAMILY_TARGETS
from pipelines import Param, documented
from pipelines.cluster import TaskSettings, cluster_params, pipeline_context

NAME = "transfer"
PIPELINE_NAME = "ahps-transfer"
DESCRIPTION = ("Architecture-aware LR transfer: base LR once on a one-hidden-layer proxy, LR ∝ (Σ_p L_p³)^(-1/2) "
               "for every target, autoscaled vs fixed recipe side by side, tracked in MLflow.")

#: The default family's (mlp) default targets: ``targets`` empty means the family's
#: (:data:`ahps_core.steps.params.FAMILY_TARGETS`), resolved by the parameter check and again by the steps (a run
#: started from the KFP UI with another family gets that family's).
DEFAULT_TARGETS = list(FAMILY_TARGETS["mlp"])

PARAMS: dict[str, Param] = {
    "family": Param("mlp", "architecture family: mlp, cnn or nb201"),
    "dataset": Param("digits", "digits (scikit-learn, no download), cifar10, cifar10-valid, cifar100, ImageNet16-120"),
    "data_source": Param("", "where the dataset files are: a directory or s3://bucket/prefix (empty for digits)"),
    "split_file": Param("", "NB201's split file of the dataset (cifar10-valid: cifar-split.txt, cifar100: "
                            "cifar100-test-split.txt, ImageNet16-120: imagenet-16-120-test-split.txt), a path or "
                            "s3://bucket/key; empty: a seeded half of the set (not NB201's)"),
    "targets": Param([], "target architectures (specs of the family), e.g. [\"2_02\",\"2_22\"]; empty: the "
                         "family's defaults: " + "; ".join(f"{f} {', '.join(t)}" for f, t in FAMILY_TARGETS.items()),
                     items=str),
    "seeds": Param([0], "training seeds of every target and recipe"),
    "epochs": Param(20, "training epochs of every target"),
    "rule": Param("sum-cubed", "transfer rule: sum-cubed (Chen et al.) or effective-depth (Wu et al.)"),
    "convention": Param("reference", "depth convention: reference (released code), paper, or wu (Wu et al.'s unit: "
                                     "every weight layer of the whole network; give it with rule=effective-depth)"),
    "base_lr": Param(0.0, "base LR of the proxy; 0: find it by the LR search"),
    "fixed_lr": Param(0.0, "LR of the fixed recipe (every architecture); 0: the family's fixed arm (nb201: "
                           "NB201's 0.1; mlp/cnn: the base LR), always with PyTorch's default init"),
    "lr_grid": Param([], "LR grid of the base-LR search; empty: 25 log-spaced points in [10^-2.5, 10^0.5]"),
    "lr_seeds": Param(3, "seeds of the base-LR search (the protocol uses >= 3)"),
    "train_recipe": Param("", "training preset (ahps_core.presets.PRESETS: nb201, reference, probe); empty: the "
                              "family's default (nb201 for nb201, reference for mlp/cnn)"),
    "batch_size": Param(0, "training batch size; 0: the recipe's"),
    "width": Param(0, "hidden width of mlp/cnn networks (probe and targets); 0: the dataset's default"),
    "max_steps_per_epoch": Param(0, "truncate every training epoch to this many steps; 0: full epochs"),
    "device": Param("auto", "training device: auto, cpu or cuda"),
    "pack": Param(1, "architectures per training task (every arm x seed of an architecture trains together, "
                     "stacked where it pays); 0: one training per task"),
    **cluster_params(experiment="ahps"),
}

D = {k: p.default for k, p in PARAMS.items()}


def build(settings: TaskSettings | None = None, *, base_image: str | None = None):
    """The pipeline (a ``@dsl.pipeline`` component) on ``base_image`` (default: :func:`components.default_image`)
    with the compile-time ``settings`` (:class:`pipelines.cluster.TaskSettings`: GPU request, dataset cache,
    parallelism, retries)."""
    from kfp import dsl

    c, settings = pipeline_context(settings, base_image, PARAMS)
    with_secrets, training_task = settings.common, settings.training  # common: credentials and requests

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @documented(DESCRIPTION, PARAMS)  # kfp reads the Args: section: every parameter's help is its description
    def transfer(
        family: str = D["family"],
        dataset: str = D["dataset"],
        data_source: str = D["data_source"],
        split_file: str = D["split_file"],
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
        pack: int = D["pack"],
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
            job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, s3_endpoint=s3_endpoint, split_file=split_file,
        )
        training_task(with_secrets(search, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)
        settings.uncached(search)  # takes the job id (opens the run group): a cache hit is impossible
        group = search.outputs["run_group"]

        plan = c.transfer(
            family=family, targets=targets, seeds=seeds, base_lr=search.outputs["base_lr"], fixed_lr=fixed_lr,
            rule=rule, convention=convention, pack=pack, tracking_uri=tracking_uri,
            mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(plan, s3_secret, mlflow_secret)

        # Inside the loop only the item and pipeline parameters are used: kfp 2.17's local runner resolves any
        # other upstream output there to the loop item, so the run group travels in the item (a pack).
        with dsl.ParallelFor(plan.outputs["Output"], parallelism=settings.parallelism or None) as item:
            trained = c.train(
                pack=item, family=family, dataset=dataset, data_source=data_source, epochs=epochs,
                train_recipe=train_recipe, batch_size=batch_size, width=width,
                max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule, convention=convention,
                tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
                checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, split_file=split_file,
            )
            training_task(with_secrets(trained, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)
            trained.set_display_name("train pack")  # static in kfp 2.17: the item's "label" names the pack

        compared = c.compare(
            results=dsl.Collected(trained.outputs["Output"]), plan=plan.outputs["plan"], family=family,
            dataset=dataset, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(compared, s3_secret, mlflow_secret)
        return compared.outputs["summary"]

    return transfer

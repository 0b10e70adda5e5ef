"""The ``reevaluate`` pipeline (issue #6): sample NAS-Bench-201 cells -> base LR -> transfer -> ParallelFor over
cells x seeds: train with the NB201 recipe at the cell's own (architecture-aware) LR and init -> rank against the
benchmark records (Chen et al., ICLR 2024, §4.3: top-K% Kendall tau, seed-noise floor, mean accuracy delta,
pairwise gaps).

Steps (components, see :mod:`components.ops`; logic in :mod:`ahps_core.steps.reevaluate`; parameter checks in
:func:`ahps_core.steps.params.check_reevaluate`):

1. ``sample-cells``: opens the records (``benchmark``: a NATS-Bench ``*-simple`` directory or an NB201 ``.pth``,
   a path or ``s3://``; ``fixture``: the 3-architecture NATS-Bench fixture shipped with ahps), draws ``sample_size``
   cells (seeded, deduplicated under ``dedup``, optionally stratified by accuracy), reads their per-seed records
   on ``dataset``, and creates the MLflow parent run (one per run group; ``run_group`` empty = the KFP run id, so
   every scheduled run is a new parent run in the same experiment). Cells without an input->output path and
   isomorphic duplicates are recorded as skipped, with their reasons.
2. ``reeval-base-lr``: the base LR, given (``base_lr``, NB201 reference code: 0.46 with ``--lr_autoscale``) or,
   with ``base_lr`` 0, searched on the nb201 proxy (the transfer pipeline's find-base-LR step). Two tasks of one
   component under ``dsl.If(base_lr == 0)`` / ``dsl.Else`` joined by ``dsl.OneOf``: only the search requests
   the GPU (and is retried); the given LR is recorded on a CPU pod.
3. ``reeval-plan``: the LR of every cell (rule/convention) and the arch-aware init, per seed.
4. ``reeval-train`` (ParallelFor over packs of ``pack`` cells with all their seeds: :mod:`ahps_core.steps.pack`):
   NB201's recipe (SGD 0.9 Nesterov, wd 5e-4, cosine, batch 256, crop+flip) on
   the macro network ``C``/``N`` for ``epochs``, evaluated on the part holding the benchmark's headline set;
   one MLflow child run per cell x seed with ``benchmark_acc``, ``new_acc``, ``delta``.
5. ``rank``: the ranking run (``tau_top<K>``, ``spearman_top<K>``, ``noise_tau_top<K>``, delta with CI, gaps,
   the ranking report JSON and the plots) and the summary ``ahps run`` prints.

**Defaults.** Unlike ``transfer``, the :data:`PARAMS` defaults are the *cluster's*, and they are NAS-Bench-201's
protocol (:func:`ahps_core.protocol.nb201_protocol`, :data:`PROTOCOL`): seeds 777/888/999, fp32, NB201's network
and budget (C=16, N=5, 200 epochs, batch 256), the unpruned cell, the reference's in-degrees; NB201's split file of
the dataset is the ``split_file`` parameter (its location is yours). So a compiled/scheduled pipeline re-evaluates
for real. ``ahps run reevaluate`` replaces them by its local defaults (:mod:`ahps.orchestration.local`): the
fixture's 3 cells, a tiny generated dataset in the real CIFAR / ImageNet16 formats written under the output
directory, C=4, N=1, 2 epochs, one seed. Every deviation from the protocol (:func:`ahps_core.protocol.
protocol_status`: budget, split, seeds, amp, cell, indegree) is named -- in every run's tags (``protocol`` =
``nb201`` only with none, else ``deviated``, and ``protocol_deviations``; the reduced budget also as ``budget``),
the parent run's description and params, and the printed summary -- so a smoke run is never mistaken for a
re-evaluation.

Cluster settings are the transfer pipeline's (:mod:`pipelines.cluster`): the training steps (``reeval-base-lr``
when it searches, ``reeval-train``) request the GPU, take tolerations/node selector from parameters, mount the
dataset cache and are retried on preemption; every step reads the S3/MLflow credentials from the named secrets.

(No ``from __future__ import annotations`` here: kfp reads the pipeline function's annotations as types.)
"""

from ahps_core.protocol import nb201_protocol
from pipelines import Param, documented
from pipelines.cluster import TaskSettings, cluster_params, pipeline_context

NAME = "reevaluate"
PIPELINE_NAME = "ahps-reevaluate"
DESCRIPTION = ("Re-evaluate NAS-Bench-201: sampled cells trained with the NB201 recipe at their own "
               "architecture-aware LR and init, ranked against the benchmark records (top-K% Kendall tau, seed-noise "
               "floor, accuracy delta), tracked in MLflow.")

DEFAULT_TOPK = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1]
#: The protocol the defaults are (of the default dataset; the protocol of every dataset has the same values).
PROTOCOL = nb201_protocol("cifar10")
P = PROTOCOL.pipeline_params()

PARAMS: dict[str, Param] = {
    "family": Param("nb201", "architecture family: nb201 only (the benchmark's cells; nas-bench-201 accepted)"),
    "benchmark": Param("", "benchmark records: a NATS-Bench topology '*-simple' directory or an NB201 .pth file, a "
                           "path or s3://bucket/key; 'fixture': the 3-architecture NATS-Bench fixture shipped with "
                           "ahps (smoke tests; ahps run's default)"),
    "dataset": Param(P["dataset"], "cifar10, cifar10-valid, cifar100 or ImageNet16-120"),
    "data_source": Param("", "where the dataset files are: a directory or s3://bucket/prefix (ahps run: a tiny "
                             "generated dataset in the real formats)"),
    "split_file": Param("", "NB201's split file of the dataset, a path or s3://bucket/key (cifar10-valid: "
                            "cifar-split.txt, cifar100: cifar100-test-split.txt, ImageNet16-120: "
                            "imagenet-16-120-test-split.txt; cifar10 has none); empty: a seeded half, the deviation "
                            "'split'"),
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
    "convention": Param("reference", "depth convention: reference (released code), paper, or wu (Wu et al.'s unit: "
                                     "every weight layer of the whole network; give it with rule=effective-depth)"),
    "epochs": Param(P["epochs"], "training epochs per cell (NB201: 200; ahps run: 2)"),
    "seeds": Param(P["seeds"], "training seeds per cell (NB201: 777, 888, 999; ahps run: 777)"),
    "C": Param(P["C"], "channels of the first stage of the macro network (NB201: 16; ahps run: 4)"),
    "N": Param(P["N"], "cells per stage (NB201: 5; ahps run: 1)"),
    "batch_size": Param(P["batch_size"], "training batch size (NB201: 256; 0: the recipe's 256; ahps run: 64)"),
    "max_steps_per_epoch": Param(P["max_steps_per_epoch"], "truncate every training epoch to this many steps; 0: "
                                                           "full epochs (NB201)"),
    "amp": Param(P["amp"], "mixed precision of the trainings: off (fp32, NB201's), bf16, or auto (bf16 on CUDA)"),
    "cell": Param(P["cell"], "full: NB201's exact cell, every op built (NB201's); pruned: only the ops on "
                             "input->output paths"),
    "indegree": Param(P["indegree"], "in-degrees of the arch-aware init: all non-zero inputs (the reference's) or "
                                     "live inputs only"),
    "topk": Param(DEFAULT_TOPK, "top-K% sets of the ranking comparison (K in (0, 100])"),
    "n_boot": Param(1000, "bootstrap resamples of the confidence intervals (0: none)"),
    "select_by": Param("benchmark", "which accuracy picks the top-K% sets: benchmark or new"),
    "device": Param("auto", "training device: auto, cpu or cuda"),
    "pack": Param(1, "cells per training task (every seed of a cell trains together; on a GPU the cells of a pack "
                     "train in concurrent processes); 0: one training per task"),
    **cluster_params(experiment="ahps-reevaluate"),
}

D = {k: p.default for k, p in PARAMS.items()}


def build(settings: TaskSettings | None = None, *, base_image: str | None = None):
    """The pipeline (a ``@dsl.pipeline`` component) on ``base_image`` with the compile-time ``settings`` (as
    :func:`pipelines.transfer.build`)."""
    from kfp import dsl

    c, settings = pipeline_context(settings, base_image, PARAMS)
    with_secrets, training_task = settings.common, settings.training  # common: credentials and requests

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    @documented(DESCRIPTION, PARAMS)  # kfp reads the Args: section: every parameter's help is its description
    def reevaluate(
        family: str = D["family"],
        benchmark: str = D["benchmark"],
        dataset: str = D["dataset"],
        data_source: str = D["data_source"],
        split_file: str = D["split_file"],
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
        amp: str = D["amp"],
        cell: str = D["cell"],
        indegree: str = D["indegree"],
        topk: list = D["topk"],
        n_boot: int = D["n_boot"],
        select_by: str = D["select_by"],
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
        sampled = c.sample_cells(
            family=family, benchmark=benchmark, dataset=dataset, data_source=data_source,
            checksums_file=checksums_file, sample_size=sample_size, sample_seed=sample_seed, stratify=stratify,
            dedup=dedup, base_lr=base_lr, lr_grid=lr_grid, lr_seeds=lr_seeds, rule=rule, convention=convention,
            epochs=epochs, seeds=seeds, C=C, N=N, batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch,
            topk=topk, n_boot=n_boot, select_by=select_by, tracking_uri=tracking_uri,
            mlflow_experiment=mlflow_experiment, run_group=run_group, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            s3_endpoint=s3_endpoint, split_file=split_file, amp=amp, cell=cell, indegree=indegree,
        )
        settings.cache(with_secrets(sampled, s3_secret, mlflow_secret))  # the benchmark is cached like data
        settings.uncached(sampled)  # takes the job id (opens the run group): a cache hit is impossible
        group = sampled.outputs["run_group"]

        def base_lr_task(display_name: str):
            task = c.reeval_base_lr(
                dataset=dataset, data_source=data_source, checksums_file=checksums_file, base_lr=base_lr,
                lr_grid=lr_grid, lr_seeds=lr_seeds, C=C, N=N, tracking_uri=tracking_uri,
                mlflow_experiment=mlflow_experiment, run_group=group, s3_endpoint=s3_endpoint, split_file=split_file,
            )
            return with_secrets(task, s3_secret, mlflow_secret).set_display_name(display_name)

        # GPU only where the LR search trains: base_lr 0 searches (GPU, placement, retries); a given base LR is
        # recorded by the same step on a CPU pod.
        with dsl.If(base_lr == 0.0, name="search-base-lr"):
            searched = training_task(base_lr_task("reeval-base-lr (search)"), gpu_tolerations, gpu_node_selector)
        with dsl.Else(name="given-base-lr"):
            given = base_lr_task("reeval-base-lr (given)")
        found_lr = dsl.OneOf(searched.outputs["base_lr"], given.outputs["base_lr"])

        plan = c.reeval_plan(
            cells=sampled.outputs["cells"], seeds=seeds, base_lr=found_lr, rule=rule,
            convention=convention, N=N, pack=pack, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
            run_group=group,
        )
        with_secrets(plan, s3_secret, mlflow_secret)

        # Inside the loop only the item and pipeline parameters are used (see pipelines.transfer): the run group,
        # LR and benchmark accuracy travel in the item.
        with dsl.ParallelFor(plan.outputs["Output"], parallelism=settings.parallelism or None) as item:
            trained = c.reeval_train(
                pack=item, dataset=dataset, data_source=data_source, checksums_file=checksums_file, epochs=epochs,
                batch_size=batch_size, C=C, N=N, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
                convention=convention, tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment,
                checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, split_file=split_file, amp=amp, cell=cell,
                indegree=indegree,
            )
            training_task(with_secrets(trained, s3_secret, mlflow_secret), gpu_tolerations, gpu_node_selector)
            trained.set_display_name("reeval-train pack")  # static in kfp 2.17: the item's "label" names the pack

        ranked = c.rank(
            results=dsl.Collected(trained.outputs["Output"]), cells=sampled.outputs["cells"],
            plan=plan.outputs["plan"], dataset=dataset, topk=topk, n_boot=n_boot, select_by=select_by,
            tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, run_group=group,
        )
        with_secrets(ranked, s3_secret, mlflow_secret)
        return ranked.outputs["summary"]

    return reevaluate

"""The KFP component functions of ahps: each one calls exactly one step of :mod:`ahps_core.steps` and turns its
result into KFP outputs. Only each function's *source* is shipped to the task (kfp lightweight components), so
every body imports what it needs inside, from the installed ``ahps_core``/``components`` packages. Build the
components with :func:`components.make_components` (it fixes ``base_image``); do not decorate these functions
here.

Numbers inside list and dict parameters (ParallelFor items, dict outputs) arrive as floats: the steps cast them.
The run group travels inside the training items: kfp 2.17's local runner resolves any *other* upstream task output
used inside a ParallelFor to the loop item.
No ``from __future__ import annotations`` here: kfp reads the annotations as types, and the functional
``NamedTuple("Outputs", [...])`` return annotations are kfp's documented form for several outputs (a class
defined in this module would not exist in the task, which runs the function's source alone); mypy cannot read
that form, hence the error codes disabled for this file below.
"""
# mypy: disable-error-code="valid-type,call-arg,arg-type"

from typing import List, NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

#: Descriptions of the component inputs that are not pipeline parameters (or mean something else here), by
#: ``component.input`` or ``input``; the others get their pipeline parameter's help
#: (:func:`components.make_components`).
INPUT_HELP = {
    "job_id": "the KFP run's job id (the run group when run_group is empty)",
    "run_group": "the run group opened by the first step (its MLflow parent run)",
    "transfer.base_lr": "the base LR found (or given) by find-base-lr",
    "reeval_plan.base_lr": "the base LR found (or given) by reeval-base-lr",
    "train.pack": "one ParallelFor item: a pack of architectures with every arm x seed to train, their LR and init",
    "reeval_train.pack": "one ParallelFor item: a pack of cells with every seed to train, their LR and init",
    "results": "the ParallelFor's collected outputs: every training's summary",
    "plan": "the plan artifact of the transfer step",
    "rank.plan": "the plan artifact of reeval-plan",
    "cells": "the sampled cells of sample-cells (with their benchmark records)",
}

# --- the transfer pipeline ---------------------------------------------------------------------------------


def find_base_lr(
    family: str,
    dataset: str,
    data_source: str,
    targets: list,
    seeds: list,
    epochs: int,
    rule: str,
    convention: str,
    base_lr: float,
    fixed_lr: float,
    lr_grid: list,
    lr_seeds: int,
    train_recipe: str,
    batch_size: int,
    width: int,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    job_id: str,
    s3_endpoint: str,
    split_file: str,
    search: Output[Artifact],
) -> NamedTuple("Outputs", [("base_lr", float), ("run_group", str)]):
    """Opens the run group (its MLflow parent run), then the base LR on the family's one-hidden-layer proxy (or the
    given one)."""
    import collections

    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.transfer import find_base_lr_step
    from components.outputs import set_metadata

    prepare_env(s3_endpoint)
    result = find_base_lr_step(
        family=family, dataset=dataset, data_source=data_source, targets=targets, seeds=seeds, epochs=epochs,
        rule=rule, convention=convention, base_lr=base_lr, fixed_lr=fixed_lr, lr_grid=lr_grid, lr_seeds=lr_seeds,
        train_recipe=train_recipe, batch_size=batch_size, width=width, tracking_uri=tracking_uri,
        experiment=mlflow_experiment, run_group=run_group, job_id=job_id, s3_endpoint=s3_endpoint,
        out_dir=search.path, split_file=split_file,
    )
    set_metadata(search, result, ("base_lr", "source", "run_group"))
    return collections.namedtuple("Outputs", ["base_lr", "run_group"])(float(result["base_lr"]), result["run_group"])


def transfer(
    family: str,
    targets: list,
    seeds: list,
    base_lr: float,
    fixed_lr: float,
    rule: str,
    convention: str,
    pack: int,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    plan: Output[Artifact],
) -> List[dict]:
    """LR + init plan of every target x {autoscaled, fixed} x seed, grouped into packs of ``pack`` architectures
    (the training tasks); skipped targets recorded with their reason."""
    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.pack import make_packs
    from ahps_core.steps.params import family_targets
    from ahps_core.steps.transfer import plan_step

    prepare_env()
    items = plan_step(
        family=family, targets=family_targets(family, targets), seeds=list(seeds), base_lr=base_lr, fixed_lr=fixed_lr,
        rule=rule, convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        run_group=run_group, out_dir=plan.path,
    )
    packs = make_packs(items, pack)
    plan.metadata.update({"trainings": len(items), "packs": len(packs), "base_lr": base_lr})
    return packs


def train(
    pack: dict,
    family: str,
    dataset: str,
    data_source: str,
    epochs: int,
    train_recipe: str,
    batch_size: int,
    width: int,
    max_steps_per_epoch: int,
    device: str,
    rule: str,
    convention: str,
    tracking_uri: str,
    mlflow_experiment: str,
    checkpoint_root: str,
    s3_endpoint: str,
    split_file: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> List[dict]:
    """A pack: every arm x seed of its architectures, trained together (or reused), one MLflow run each."""
    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.pack import train_pack_step
    from components.outputs import pack_outputs

    prepare_env(s3_endpoint)
    summaries = train_pack_step(
        pack=pack, family=family, dataset=dataset, data_source=data_source, epochs=epochs, train_recipe=train_recipe,
        batch_size=batch_size, width=width, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model.path, split_file=split_file,
    )
    return pack_outputs(pack, summaries, model, metrics, ("eval_acc", "train_loss"))


def compare(
    results: List[dict],
    plan: Input[Artifact],
    family: str,
    dataset: str,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    summary: Output[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Fan-in: accuracy per arm, ranks, Kendall tau-b / Spearman between the arms, deltas, plots."""
    from ahps_core.jsonio import read_json
    from ahps_core.reports import format_markdown
    from ahps_core.steps.common import PLAN_FILE, prepare_env
    from ahps_core.steps.pack import pack_items
    from ahps_core.steps.transfer import compare_step
    from components.outputs import log_metrics

    prepare_env()
    result = compare_step(
        results=pack_items(results), plan=read_json(plan.path, PLAN_FILE), family=family, dataset=dataset,
        tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group, out_dir=summary.path,
    )
    with open(report.path, "w") as fh:
        fh.write(format_markdown(result))
    log_metrics(metrics, result["stats"])
    summary.metadata.update({"run_group": run_group, "mlflow_parent_run_id": result["mlflow"]["parent_run_id"]})


# --- the reevaluate pipeline -------------------------------------------------------------------------------


def sample_cells(
    family: str,
    benchmark: str,
    dataset: str,
    data_source: str,
    checksums_file: str,
    sample_size: int,
    sample_seed: int,
    stratify: bool,
    dedup: str,
    base_lr: float,
    lr_grid: list,
    lr_seeds: int,
    rule: str,
    convention: str,
    epochs: int,
    seeds: list,
    C: int,
    N: int,
    batch_size: int,
    max_steps_per_epoch: int,
    topk: list,
    n_boot: int,
    select_by: str,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    job_id: str,
    s3_endpoint: str,
    split_file: str,
    amp: str,
    cell: str,
    indegree: str,
    cells: Output[Artifact],
) -> NamedTuple("Outputs", [("run_group", str), ("n_cells", int)]):
    """Samples NB201 cells from the benchmark records (with their recorded accuracies); opens the run group."""
    import collections

    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.reevaluate import sample_step

    prepare_env(s3_endpoint)
    data = sample_step(
        family=family, benchmark=benchmark, dataset=dataset, data_source=data_source, checksums_file=checksums_file,
        sample_size=sample_size, sample_seed=sample_seed, stratify=stratify, dedup=dedup, base_lr=base_lr,
        lr_grid=lr_grid, lr_seeds=lr_seeds, rule=rule, convention=convention, epochs=epochs, seeds=seeds, C=C, N=N,
        batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch, topk=topk, n_boot=n_boot,
        select_by=select_by, tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group,
        job_id=job_id, s3_endpoint=s3_endpoint, out_dir=cells.path, split_file=split_file, amp=amp, cell=cell,
        indegree=indegree,
    )
    cells.metadata.update({"n_cells": len(data["cells"]), "run_group": data["run_group"],
                           "budget": data["budget"]["label"], "protocol": data["protocol"]["label"],
                           "protocol_deviations": ",".join(data["protocol"]["names"]) or "none"})
    return collections.namedtuple("Outputs", ["run_group", "n_cells"])(data["run_group"], len(data["cells"]))


def reeval_base_lr(
    dataset: str,
    data_source: str,
    checksums_file: str,
    base_lr: float,
    lr_grid: list,
    lr_seeds: int,
    C: int,
    N: int,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    s3_endpoint: str,
    split_file: str,
    search: Output[Artifact],
) -> NamedTuple("Outputs", [("base_lr", float)]):
    """The base LR: given (NB201 reference: 0.46), or found on the nb201 proxy (``base_lr`` 0)."""
    import collections

    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.reevaluate import reeval_base_lr_step
    from components.outputs import set_metadata

    prepare_env(s3_endpoint)
    result = reeval_base_lr_step(
        dataset=dataset, data_source=data_source, checksums_file=checksums_file, base_lr=base_lr, lr_grid=lr_grid,
        lr_seeds=lr_seeds, C=C, N=N, tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group,
        s3_endpoint=s3_endpoint, out_dir=search.path, split_file=split_file,
    )
    set_metadata(search, result, ("base_lr", "source", "run_group"))
    return collections.namedtuple("Outputs", ["base_lr"])(float(result["base_lr"]))


def reeval_plan(
    cells: Input[Artifact],
    seeds: list,
    base_lr: float,
    rule: str,
    convention: str,
    N: int,
    pack: int,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    plan: Output[Artifact],
) -> List[dict]:
    """Transferred LR + arch-aware init of every sampled cell x seed (autoscaled arm), with its benchmark acc,
    grouped into packs of ``pack`` cells (the training tasks)."""
    from ahps_core.jsonio import read_json
    from ahps_core.steps.common import SAMPLE_FILE, prepare_env
    from ahps_core.steps.pack import make_packs
    from ahps_core.steps.reevaluate import reeval_plan_step

    prepare_env()
    items = reeval_plan_step(
        sample=read_json(cells.path, SAMPLE_FILE), seeds=list(seeds), base_lr=base_lr, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group,
        out_dir=plan.path, N=N,
    )
    packs = make_packs(items, pack)
    plan.metadata.update({"trainings": len(items), "packs": len(packs), "base_lr": base_lr})
    return packs


def reeval_train(
    pack: dict,
    dataset: str,
    data_source: str,
    checksums_file: str,
    epochs: int,
    batch_size: int,
    C: int,
    N: int,
    max_steps_per_epoch: int,
    device: str,
    rule: str,
    convention: str,
    tracking_uri: str,
    mlflow_experiment: str,
    checkpoint_root: str,
    s3_endpoint: str,
    split_file: str,
    amp: str,
    cell: str,
    indegree: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> List[dict]:
    """A pack of cells x seeds with the NB201 recipe, each at its own LR and init; benchmark_acc, new_acc, delta."""
    from ahps_core.steps.common import prepare_env
    from ahps_core.steps.reevaluate import reeval_train_pack_step
    from components.outputs import pack_outputs

    prepare_env(s3_endpoint)
    summaries = reeval_train_pack_step(
        pack=pack, dataset=dataset, data_source=data_source, checksums_file=checksums_file, epochs=epochs,
        batch_size=batch_size, C=C, N=N, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model.path, split_file=split_file,
        amp=amp, cell=cell, indegree=indegree,
    )
    return pack_outputs(pack, summaries, model, metrics, ("new_acc", "delta"))


def rank(
    results: List[dict],
    cells: Input[Artifact],
    plan: Input[Artifact],
    dataset: str,
    topk: list,
    n_boot: int,
    select_by: str,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    summary: Output[Artifact],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Fan-in: Kendall tau-b / Spearman / seed-noise floor per top-K%, mean delta, gaps, plots; the ranking run."""
    from ahps_core.jsonio import read_json
    from ahps_core.reports import format_reevaluation_markdown
    from ahps_core.steps.common import PLAN_FILE, SAMPLE_FILE, prepare_env
    from ahps_core.steps.pack import pack_items
    from ahps_core.steps.reevaluate import rank_step, ranking_metrics
    from components.outputs import log_metrics

    prepare_env()
    result = rank_step(
        results=pack_items(results), sample=read_json(cells.path, SAMPLE_FILE), plan=read_json(plan.path, PLAN_FILE),
        dataset=dataset, topk=list(topk), n_boot=int(n_boot), select_by=select_by, tracking_uri=tracking_uri,
        experiment=mlflow_experiment, run_group=run_group, out_dir=summary.path,
    )
    with open(report.path, "w") as fh:
        fh.write(format_reevaluation_markdown(result))
    log_metrics(metrics, ranking_metrics(result))
    summary.metadata.update({"run_group": run_group, "mlflow_parent_run_id": result["mlflow"]["parent_run_id"],
                             "mlflow_ranking_run_id": result["mlflow"]["ranking_run_id"]})

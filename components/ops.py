"""The KFP component functions of ahps. Only each function's *source* is shipped to the task (kfp lightweight
components), so every body imports what it needs inside, from the installed ``ahps_core``/``components``
packages, and delegates to :mod:`ahps_core.workflow`. Build the components with
:func:`components.make_components` (it fixes ``base_image``); do not decorate these functions here.

Numbers inside dict parameters (ParallelFor items, dict outputs) arrive as floats: the steps cast them.
No ``from __future__ import annotations`` here: kfp reads the annotations as types.
"""

from typing import List, NamedTuple

from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output


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
    search: Output[Artifact],
) -> NamedTuple("Outputs", [("base_lr", float), ("run_group", str)]):
    """Base LR on the family's one-hidden-layer proxy (or the given one); creates the run group's parent run."""
    import collections

    from ahps_core.workflow import find_base_lr_step, prepare_env, resolve_run_group

    prepare_env(s3_endpoint)
    group = resolve_run_group(run_group, job_id)
    params = dict(family=family, dataset=dataset, data_source=data_source, targets=targets, seeds=seeds,
                  epochs=epochs, rule=rule, convention=convention, base_lr_given=base_lr, fixed_lr=fixed_lr,
                  lr_grid=lr_grid, lr_seeds=lr_seeds, train_recipe=train_recipe, batch_size=batch_size,
                  width=width, run_group=group)
    result = find_base_lr_step(
        family=family, dataset=dataset, data_source=data_source, base_lr=base_lr, lr_grid=[float(x) for x in lr_grid],
        lr_seeds=int(lr_seeds), width=int(width), tracking_uri=tracking_uri, experiment=mlflow_experiment,
        run_group=group, parent_params=params, out_dir=search.path,
    )
    search.metadata.update({"base_lr": result["base_lr"], "source": result["source"], "run_group": group})
    return collections.namedtuple("Outputs", ["base_lr", "run_group"])(float(result["base_lr"]), group)


def transfer(
    family: str,
    targets: list,
    seeds: list,
    base_lr: float,
    fixed_lr: float,
    rule: str,
    convention: str,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    plan: Output[Artifact],
) -> List[dict]:
    """LR + init plan of every target x {autoscaled, fixed} x seed; skipped targets recorded with their reason."""
    from ahps_core.workflow import prepare_env, transfer_step

    prepare_env()
    items = transfer_step(
        family=family, targets=[str(t) for t in targets], seeds=list(seeds), base_lr=base_lr, fixed_lr=fixed_lr,
        rule=rule, convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        run_group=run_group, out_dir=plan.path,
    )
    plan.metadata.update({"trainings": len(items), "base_lr": base_lr})
    return items


def train(
    item: dict,
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
    model: Output[Model],
    metrics: Output[Metrics],
) -> dict:
    """One architecture x recipe x seed: trains (or reuses a finished run), writes the checkpoint and result.

    The run-group key comes in ``item`` (the transfer step puts it there): kfp 2.17's local runner resolves any
    *other* upstream task output used inside a ParallelFor to the loop item."""
    from ahps_core.workflow import prepare_env, train_step

    prepare_env(s3_endpoint)
    summary = train_step(
        item=item, family=family, dataset=dataset, data_source=data_source, epochs=epochs, train_recipe=train_recipe,
        batch_size=batch_size, width=width, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        run_group=str(item["run_group"]), checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model.path,
    )
    for key in ("arch", "recipe", "seed", "lr", "status", "mlflow_run_id", "reused"):
        model.metadata[key] = summary.get(key)
    for key in ("eval_acc", "train_loss", "lr"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            metrics.log_metric(key, float(value))
    return {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}


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
    """Fan-in: accuracy per recipe, ranks, Kendall tau-b / Spearman between recipes, deltas, plots."""
    import json
    import os

    from ahps_core.workflow import PLAN_FILE, compare_step, format_markdown, prepare_env

    prepare_env()
    with open(os.path.join(plan.path, PLAN_FILE)) as fh:
        plan_data = json.load(fh)
    result = compare_step(
        results=list(results), plan=plan_data, family=family, dataset=dataset, tracking_uri=tracking_uri,
        experiment=mlflow_experiment, run_group=run_group, out_dir=summary.path,
    )
    with open(report.path, "w") as fh:
        fh.write(format_markdown(result))
    for key, value in result["stats"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            metrics.log_metric(key, float(value))
    summary.metadata.update({"run_group": run_group, "mlflow_parent_run_id": result["mlflow"]["parent_run_id"]})


# --- the reevaluate pipeline --------------------------------------------------------------------------------


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
    cells: Output[Artifact],
) -> NamedTuple("Outputs", [("run_group", str), ("n_cells", int)]):
    """Samples NB201 cells from the benchmark records (with their recorded accuracies); creates the parent run."""
    import collections

    from ahps_core.workflow import _k_num, as_int, budget_info, is_synthetic, prepare_env, resolve_run_group, sample_step

    prepare_env(s3_endpoint)
    seeds, topk = [as_int(s) for s in seeds], [_k_num(k) for k in topk]  # list items arrive as floats
    group = resolve_run_group(run_group, job_id)
    budget = budget_info(C=C, N=N, epochs=epochs, batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch,
                         synthetic=is_synthetic(checksums_file, data_source), benchmark=benchmark)
    params = dict(family=family, benchmark=benchmark, dataset=dataset, data_source=data_source,
                  checksums_file=checksums_file, sample_size=sample_size, sample_seed=sample_seed, stratify=stratify,
                  dedup=dedup, base_lr_given=base_lr, lr_grid=lr_grid, lr_seeds=lr_seeds, rule=rule,
                  convention=convention, epochs=epochs, seeds=seeds, C=C, N=N, batch_size=batch_size,
                  max_steps_per_epoch=max_steps_per_epoch, topk=topk, n_boot=n_boot, select_by=select_by,
                  run_group=group, budget=budget["label"], budget_reasons="; ".join(budget["reasons"]) or "none")
    data = sample_step(
        benchmark=benchmark, dataset=dataset, sample_size=int(sample_size), sample_seed=int(sample_seed),
        stratify=bool(stratify), dedup=dedup, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        run_group=group, parent_params=params, budget=budget, out_dir=cells.path, s3_endpoint=s3_endpoint,
    )
    cells.metadata.update({"n_cells": len(data["cells"]), "run_group": group, "budget": budget["label"]})
    return collections.namedtuple("Outputs", ["run_group", "n_cells"])(group, len(data["cells"]))


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
    search: Output[Artifact],
) -> NamedTuple("Outputs", [("base_lr", float)]):
    """The base LR: given (NB201 reference: 0.46), or found on the nb201 proxy (``base_lr`` 0)."""
    import collections

    from ahps_core.workflow import find_base_lr_step, prepare_env

    prepare_env(s3_endpoint)
    result = find_base_lr_step(
        family="nb201", dataset=dataset, data_source=data_source, base_lr=base_lr,
        lr_grid=[float(x) for x in lr_grid], lr_seeds=int(lr_seeds), width=0, tracking_uri=tracking_uri,
        experiment=mlflow_experiment, run_group=run_group, parent_params={}, out_dir=search.path,
        pipeline="reevaluate", C=int(C), N=int(N), checksums_file=checksums_file, s3_endpoint=s3_endpoint,
    )
    search.metadata.update({"base_lr": result["base_lr"], "source": result["source"], "run_group": run_group})
    return collections.namedtuple("Outputs", ["base_lr"])(float(result["base_lr"]))


def reeval_plan(
    cells: Input[Artifact],
    seeds: list,
    base_lr: float,
    rule: str,
    convention: str,
    tracking_uri: str,
    mlflow_experiment: str,
    run_group: str,
    plan: Output[Artifact],
) -> List[dict]:
    """Transferred LR + arch-aware init of every sampled cell x seed (autoscaled recipe), with its benchmark acc."""
    import json
    import os

    from ahps_core.workflow import SAMPLE_FILE, prepare_env, reeval_plan_step

    prepare_env()
    with open(os.path.join(cells.path, SAMPLE_FILE)) as fh:
        sample = json.load(fh)
    items = reeval_plan_step(
        sample=sample, seeds=list(seeds), base_lr=base_lr, rule=rule, convention=convention,
        tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group, out_dir=plan.path,
    )
    plan.metadata.update({"trainings": len(items), "base_lr": base_lr})
    return items


def reeval_train(
    item: dict,
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
    model: Output[Model],
    metrics: Output[Metrics],
) -> dict:
    """One cell x seed with the NB201 recipe at its own LR and init; logs benchmark_acc, new_acc, delta.

    The run group, LR and benchmark accuracy come in ``item`` (kfp 2.17's local runner resolves any *other*
    upstream task output used inside a ParallelFor to the loop item)."""
    from ahps_core.workflow import prepare_env, reeval_train_step

    prepare_env(s3_endpoint)
    summary = reeval_train_step(
        item=item, dataset=dataset, data_source=data_source, checksums_file=checksums_file, epochs=epochs,
        batch_size=batch_size, C=C, N=N, max_steps_per_epoch=max_steps_per_epoch, device=device, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=mlflow_experiment,
        checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model.path,
    )
    for key in ("arch", "arch_code", "benchmark_index", "seed", "lr", "status", "mlflow_run_id", "reused"):
        model.metadata[key] = summary.get(key)
    for key in ("new_acc", "benchmark_acc", "delta", "train_loss", "lr"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            metrics.log_metric(key, float(value))
    return {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}


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
    import json
    import os

    from ahps_core.workflow import (
        PLAN_FILE,
        SAMPLE_FILE,
        format_reevaluation_markdown,
        prepare_env,
        rank_step,
        ranking_metrics,
    )

    prepare_env()
    with open(os.path.join(cells.path, SAMPLE_FILE)) as fh:
        sample = json.load(fh)
    with open(os.path.join(plan.path, PLAN_FILE)) as fh:
        plan_data = json.load(fh)
    result = rank_step(
        results=list(results), sample=sample, plan=plan_data, dataset=dataset, topk=list(topk), n_boot=int(n_boot),
        select_by=select_by, tracking_uri=tracking_uri, experiment=mlflow_experiment, run_group=run_group,
        out_dir=summary.path,
    )
    with open(report.path, "w") as fh:
        fh.write(format_reevaluation_markdown(result))
    for key, value in ranking_metrics(result).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            metrics.log_metric(key, float(value))
    summary.metadata.update({"run_group": run_group, "mlflow_parent_run_id": result["mlflow"]["parent_run_id"],
                             "mlflow_ranking_run_id": result["mlflow"]["ranking_run_id"]})

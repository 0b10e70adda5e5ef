"""The steps of the ``transfer`` pipeline: find the base LR on the proxy (opening the run group) -> plan the LR
and init of every target x arm x seed -> train (:mod:`ahps_core.steps.training`) -> compare the arms."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ahps_core.checks import as_int, finite_or_none
from ahps_core.errors import ArchSpecError
from ahps_core.jsonio import jsonable, stable_hash, write_json
from ahps_core.reports import fmt, format_markdown
from ahps_core.steps import report
from ahps_core.steps.base_lr import base_lr_step
from ahps_core.steps.common import (
    ARMS,
    INIT_OF_ARM,
    PLAN_FILE,
    SUMMARY_FILE,
    SUMMARY_MD_FILE,
    accuracy_of,
    competition_ranks,
    log,
    log_journaled,
    open_run_group,
    resolve_run_group,
    tracker,
)

COMPARE_KEY = "compare"
#: the comparison's headline metrics on the parent run (the runs table's columns; accuracies in points)
PARENT_METRICS = ("kendall_tau_b", "spearman_rho", "mean_accuracy_delta", "autoscaled_wins", "fixed_wins",
                  "rank_changes", "n")
#: stats that are accuracies (fractions in summary.json, percentage points in MLflow)
_ACCURACY_STATS = ("mean_accuracy_delta", "median_accuracy_delta", "mean_acc_autoscaled", "mean_acc_fixed")


def headline_metrics(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The comparison run's metrics from the stats of :func:`compare_step`: accuracies in percentage points,
    everything rounded to 4 decimals (docs/conventions.md A15)."""
    out: dict[str, Any] = {}
    for k, v in stats.items():
        if isinstance(v, (list, str)) or v is None:
            continue
        out[k] = report.points(v) if k in _ACCURACY_STATS else (v if isinstance(v, int) else report.rounded(v))
    for name in ("kendall_tau_b", "spearman_rho", "mean_accuracy_delta"):
        low, high = stats.get(f"{name}_ci") or [None, None]
        conv = report.points if name == "mean_accuracy_delta" else report.rounded
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = conv(low), conv(high)
    return out


def find_base_lr_step(
    *, family: str, dataset: str, data_source: str, targets: Sequence[Any], seeds: Sequence[Any], epochs: int,
    rule: str, convention: str, base_lr: float, fixed_lr: float, lr_grid: Sequence[Any], lr_seeds: int,
    train_recipe: str, batch_size: int, width: int, tracking_uri: str, experiment: str, run_group: str,
    job_id: str = "", s3_endpoint: str = "", out_dir: str, split_file: str = "",
) -> dict[str, Any]:
    """Step 1: open the run group (its parent run holds the pipeline's parameters), then the base LR
    (:func:`~ahps_core.steps.base_lr.base_lr_step`). Returns the search summary with the run group."""
    from ahps_core.steps.params import family_targets

    group = resolve_run_group(run_group, job_id)
    targets = family_targets(family, targets)  # empty: the family's default targets
    seeds = [as_int(s, "seed") for s in seeds]  # kfp hands list items over as JSON numbers (floats): 0.0 -> 0
    params = dict(family=family, dataset=dataset, data_source=data_source, targets=list(targets), seeds=seeds,
                  epochs=epochs, rule=rule, convention=convention, base_lr_given=base_lr, fixed_lr=fixed_lr,
                  lr_grid=list(lr_grid), lr_seeds=lr_seeds, train_recipe=train_recipe, batch_size=batch_size,
                  width=width, run_group=group)
    if split_file:
        params["split_file"] = split_file
    tr, parent = open_run_group(pipeline="transfer", tracking_uri=tracking_uri, experiment=experiment,
                                run_group=group, name=f"transfer {family}/{dataset} [{group}]", params=params,
                                tags={"family": family, "dataset": dataset}, step="find-base-lr")
    summary = base_lr_step(tr, parent, family=family, dataset=dataset, data_source=data_source, base_lr=base_lr,
                           lr_grid=[float(x) for x in lr_grid], lr_seeds=int(lr_seeds), width=int(width),
                           out_dir=out_dir, s3_endpoint=s3_endpoint, split_file=split_file)
    log_journaled("find-base-lr", tr, "LR search")
    return {**summary, "run_group": group}


def plan_step(
    *, family: str, targets: Sequence[str], seeds: Sequence[Any], base_lr: float, fixed_lr: float, rule: str,
    convention: str, tracking_uri: str, experiment: str, run_group: str, out_dir: str, arms: Sequence[str] = ARMS,
    item_fields: Mapping[str, Mapping[str, Any]] | None = None, cells_per_stage: int = 5,
) -> list[dict[str, Any]]:
    """The LR + init plan of every target x arm x seed: the items of the training ParallelFor (``arms``: which of
    :data:`ARMS` to plan; the re-evaluation trains only ``autoscaled``; ``item_fields``: per target, more fields
    for its items, e.g. the benchmark record of a re-evaluated cell). The fixed arm is the family's
    (:func:`ahps_core.protocol.fixed_arm`: nb201 NB201's LR 0.1, mlp/cnn the base LR; PyTorch's default init)
    unless ``fixed_lr`` > 0 gives its LR. ``cells_per_stage``: NB201's N, for the ``wu`` unit.

    Targets without an input->output path (or with a malformed spec) are skipped and recorded with their reason
    in ``plan.json``; the batch goes on. The plan is also logged to the parent run.
    """
    from ahps_core.graph import parse_arch
    from ahps_core.protocol import fixed_arm
    from ahps_core.scaling import Transferer

    base_lr = float(base_lr)
    fixed_def = fixed_arm(family)
    fixed = float(fixed_lr) if fixed_lr and float(fixed_lr) > 0 else fixed_def.lr_for(base_lr)
    init_of = {**INIT_OF_ARM, "fixed": fixed_def.init}
    transferer = Transferer(family, base_lr, rule=rule, convention=convention, cells_per_stage=int(cells_per_stage))
    convention = transferer.convention
    seeds = [as_int(s, "seed") for s in seeds]
    planned, skipped, items = [], [], []
    for spec in map(str, targets):
        try:
            t = transferer(parse_arch(spec, family))
        except ArchSpecError as exc:  # NoPathError included: recorded, never an exit
            skipped.append({"arch": spec, "reason": str(exc)})
            log("transfer", f"skipped {spec}: {exc}")
            continue
        planned.append({"arch": spec, "predicted_lr": t.lr, "ratio": t.ratio, "fixed_lr": fixed,
                        "transfer": t.to_dict()})
        log("transfer", f"{spec}: LR {t.lr:.6g} (x{t.ratio:.4g} of base {base_lr:.6g})"
                        + (f"; fixed LR {fixed:.6g}" if "fixed" in arms else ""))
        items += [{"arch": spec, "arm": arm, "seed": seed, "lr": t.lr if arm == "autoscaled" else fixed,
                   "init": init_of[arm], "base_lr": base_lr, "predicted_lr": t.lr, "ratio": t.ratio,
                   "run_group": run_group, **(item_fields or {}).get(spec, {})} for arm in arms for seed in seeds]
    plan = {"family": family, "rule": rule, "convention": convention, "base_lr": base_lr, "fixed_lr": fixed,
            "seeds": seeds, "arms": list(arms), "targets": planned, "skipped": skipped, "items": items,
            "run_group": run_group}
    write_json(Path(out_dir) / PLAN_FILE, plan)
    tr = tracker(tracking_uri, experiment, run_group)
    parent = tr.ensure_parent()
    tr.log_dict(parent.run_id, jsonable(plan), "transfer/plan.json")
    tr.set_tags(parent.run_id, {"ahps.targets_planned": len(planned), "ahps.targets_skipped": len(skipped)})
    log_journaled("transfer", tr, "plan")
    if not items:
        log("transfer", "no target can be trained (all skipped): nothing to train")
    return items


def arm_of(result: Mapping[str, Any]) -> str:
    """The arm of a training result (runs recorded before the rename carry only ``recipe``)."""
    return str(result.get("arm") or result["recipe"])


def _rows(results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any]):
    """``(rows, acc)``: per architecture (plan order), per arm: mean accuracy over seeds, LR, diverged, runs;
    the delta and the rank of each architecture under each arm. ``acc[arm][arch]`` is the mean accuracy."""
    by_arch: dict[str, dict[str, list[Mapping[str, Any]]]] = {}
    for r in results:
        by_arch.setdefault(str(r["arch"]), {}).setdefault(arm_of(r), []).append(r)
    planned = {t["arch"]: t for t in plan.get("targets", [])}
    order = [a for a in planned if a in by_arch] + sorted(a for a in by_arch if a not in planned)
    acc: dict[str, dict[str, float]] = {arm: {} for arm in ARMS}
    rows = []
    for arch in order:
        row: dict[str, Any] = {"arch": arch, "predicted_lr": planned.get(arch, {}).get("predicted_lr"),
                               "ratio": planned.get(arch, {}).get("ratio")}
        for arm in ARMS:
            runs = by_arch[arch].get(arm, [])
            if not runs:
                row[f"{arm}_acc"] = None
                continue
            values = [accuracy_of(r) for r in runs]
            acc[arm][arch] = row[f"{arm}_acc"] = sum(values) / len(values)
            row[f"{arm}_lr"] = float(runs[0]["lr"])
            row[f"{arm}_diverged"] = sum(1 for r in runs if r.get("status") == "diverged")
            row[f"{arm}_seeds"] = len(runs)
            row[f"{arm}_acc_per_seed"] = {str(r.get("seed")): v for r, v in zip(runs, values, strict=True)}
            row[f"{arm}_runs"] = [r.get("mlflow_run_id") for r in runs]
        if row.get("autoscaled_acc") is not None and row.get("fixed_acc") is not None:
            row["delta"] = row["autoscaled_acc"] - row["fixed_acc"]
        rows.append(row)
    for arm in ARMS:  # rank 1 = best accuracy under that arm; ties share the better rank
        ranks = competition_ranks(acc[arm])
        for row in rows:
            row[f"rank_{arm}"] = ranks.get(row["arch"])
    return rows, acc


def _stats(rows: list[dict[str, Any]], acc: dict[str, dict[str, float]], n_boot: int) -> dict[str, Any]:
    from ahps_core import ranking

    common = sorted(set(acc["autoscaled"]) & set(acc["fixed"]))
    fixed_acc = {a: acc["fixed"][a] for a in common}
    auto_acc = {a: acc["autoscaled"][a] for a in common}
    stats: dict[str, Any] = {"n": len(common)}
    if common:
        top = ranking.topk_correlations(fixed_acc, auto_acc, ks=(100,), n_boot=n_boot)[0]
        delta = ranking.accuracy_delta(fixed_acc, auto_acc, n_boot=n_boot)
        deltas = [auto_acc[a] - fixed_acc[a] for a in common]
        stats.update({
            "kendall_tau_b": finite_or_none(top.tau), "kendall_tau_b_ci": [finite_or_none(x) for x in top.tau_ci],
            "spearman_rho": finite_or_none(top.spearman),
            "spearman_rho_ci": [finite_or_none(x) for x in top.spearman_ci],
            "mean_accuracy_delta": finite_or_none(delta.mean),
            "mean_accuracy_delta_ci": [finite_or_none(delta.ci_low), finite_or_none(delta.ci_high)],
            "median_accuracy_delta": statistics.median(deltas),
            "autoscaled_wins": sum(1 for d in deltas if d > 0), "fixed_wins": sum(1 for d in deltas if d < 0),
            "ties": sum(1 for d in deltas if d == 0),
            "mean_acc_autoscaled": sum(auto_acc.values()) / len(common),
            "mean_acc_fixed": sum(fixed_acc.values()) / len(common),
            "rank_changes": sum(1 for r in rows if r.get("rank_autoscaled") != r.get("rank_fixed")),
            # the ranking module's benchmark noise-floor remark does not apply to an arm-vs-arm comparison
            "note": "; ".join(n for n in top.note.split("; ") if n and "noise floor" not in n),
        })
    else:
        stats["note"] = "no architecture was trained under both arms"
    stats["diverged_autoscaled"] = sum(r.get("autoscaled_diverged", 0) for r in rows)
    stats["diverged_fixed"] = sum(r.get("fixed_diverged", 0) for r in rows)
    return stats


def compare_step(
    *, results: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], family: str, dataset: str,
    tracking_uri: str, experiment: str, run_group: str, out_dir: str, n_boot: int = 1000,
) -> dict[str, Any]:
    """Fan-in: accuracy per architecture and arm (mean over seeds), the rank of every architecture under each arm,
    Kendall tau-b and Spearman rho between the arms' accuracies (bootstrap CIs), the deltas (autoscaled - fixed),
    and two plots. Writes ``summary.json``, ``summary.md`` and the plots to ``out_dir``, then records the
    ``compare`` run (idempotent on its key and inputs) and the headline numbers on the parent run, which it marks
    FINISHED."""
    from ahps_core.plots_compare import plot_lrs, plot_transfer_delta, plot_transfer_ranks
    from ahps_core.tracking import INPUTS_HASH_TAG, tracked_step

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, acc = _rows(results, plan)
    stats = _stats(rows, acc, n_boot)
    plots = {}
    if rows:
        plots["accuracy_delta"] = str(plot_transfer_delta(rows, out / "accuracy_delta_by_arch.png", family, dataset))
        plots["rank_change"] = str(plot_transfer_ranks(rows, out / "rank_change.png", family, dataset))
        plots["predicted_lr"] = str(plot_lrs(rows, plan, out / "predicted_lr_by_arch.png", family))
    summary = {
        "pipeline": "transfer", "run_group": run_group, "family": family, "dataset": dataset,
        "rule": plan.get("rule"), "convention": plan.get("convention"), "base_lr": plan.get("base_lr"),
        "fixed_lr": plan.get("fixed_lr"), "seeds": plan.get("seeds"), "rows": rows,
        "skipped": plan.get("skipped", []), "stats": stats, "plots": plots,
        "trainings": len(results), "reused_trainings": sum(1 for r in results if r.get("reused")),
        "output_dir": str(out),
    }
    write_json(out / SUMMARY_FILE, summary)
    (out / SUMMARY_MD_FILE).write_text(format_markdown(summary))

    tr = tracker(tracking_uri, experiment, run_group)
    # what was trained and its outcome, not where it was logged (a run logged while MLflow was down has a
    # placeholder id until the journal is replayed: the same inputs then must not record the comparison again)
    inputs = stable_hash(sorted((str(r.get("config_hash") or r.get("mlflow_run_id") or ""), str(r.get("arch")),
                                 arm_of(r), str(r.get("seed")), str(r.get("status")), str(r.get("eval_acc")))
                                for r in results))
    parent = tr.ensure_parent()
    description = report.note(format_markdown(summary), more="comparison/summary.md")
    compare_params = {"family": family, "dataset": dataset, "arms": list(ARMS), "seeds": plan.get("seeds"),
                      "n_targets": len(plan.get("targets", [])), "n_skipped": len(plan.get("skipped", [])),
                      "base_lr": plan.get("base_lr"), "fixed_lr": plan.get("fixed_lr"), "rule": plan.get("rule"),
                      "convention": plan.get("convention"), "n_boot": as_int(n_boot, "n_boot")}
    with tracked_step(tr, tr.key(COMPARE_KEY), name="compare autoscaled vs fixed", kind="compare", identity=inputs,
                      identity_tag=INPUTS_HASH_TAG, tags={"family": family, "dataset": dataset,
                                                          "rule": plan.get("rule"),
                                                          "convention": plan.get("convention"),
                                                          report.NOTE_TAG: description},
                      params=compare_params, log=lambda line: log("compare", line)) as run:
        if run.reused:
            log("compare", f"reused the finished comparison run {run.run_id} (same trainings)")
        else:
            headline = headline_metrics(stats)
            headline.update(base_lr=plan.get("base_lr"), n_skipped=len(plan.get("skipped", [])))
            run.log_metrics(headline)
            for i, row in enumerate(rows):  # one curve per quantity (step = position in the table), not one bar each
                run.log_metrics({"acc_autoscaled_by_index": report.points(row.get("autoscaled_acc")),
                                 "acc_fixed_by_index": report.points(row.get("fixed_acc")),
                                 "accuracy_delta_by_index": report.points(row.get("delta")),
                                 "predicted_lr_by_index": row.get("predicted_lr")}, step=i)
            run.log_table(report.transfer_table(rows), report.TABLE_FILE)
            for path in [out / SUMMARY_FILE, out / SUMMARY_MD_FILE, *plots.values()]:
                run.log_file(path, "comparison" if str(path).endswith((".json", ".md")) else "plots")
            run.summary = {"stats": stats, "rows": rows}
            parent_metrics = {k: headline.get(k) for k in PARENT_METRICS}
            tr.log_metrics(parent.run_id, {**parent_metrics, "base_lr": plan.get("base_lr")})
            tr.log_table(parent.run_id, report.transfer_table(rows), report.TABLE_FILE)
            tr.set_tags(parent.run_id, {report.NOTE_TAG: description})
            for path in plots.values():
                tr.log_file(parent.run_id, path, "plots")
        report.tag_children(tr, report.transfer_child_tags(rows))
    tr.finish(parent.run_id)
    summary["mlflow"] = {"tracking_uri": tr.uri, "experiment": experiment, "experiment_id": tr.experiment_id,
                         "parent_run_id": parent.run_id, "compare_run_id": run.run_id,
                         "runs_url": report.runs_url(tr.uri, tr.experiment_id)}
    write_json(out / SUMMARY_FILE, summary)
    delta = report.points(stats.get("mean_accuracy_delta"))
    log("compare", f"{len(rows)} architectures, tau-b {fmt(stats.get('kendall_tau_b'), '.3f')}, mean delta "
                   f"{fmt(delta, '+.2f')} points; comparison run {run.run_id}")
    log_journaled("compare", tr, "comparison")
    return summary

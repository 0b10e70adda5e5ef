"""The steps of the ``reevaluate`` pipeline (Chen et al., ICLR 2024, §4.3): sample NB201 cells from benchmark
records (opening the run group) -> the base LR (:mod:`ahps_core.steps.base_lr`) -> plan the autoscaled LR and init
of every cell x seed -> train each with NB201's recipe (:mod:`ahps_core.steps.training`) -> rank against the
benchmark: top-K% Kendall tau-b, Spearman, the benchmark's seed-noise floor, the mean accuracy delta, pairwise gaps.

The run's deviations from NAS-Bench-201's protocol (:mod:`ahps_core.protocol`) are computed once, by the sample
step, and travel with the sample: every MLflow run of the re-evaluation is tagged ``protocol`` (``nb201`` or
``deviated``) and ``protocol_deviations``, and the summary and the report list them.

Accuracies here are in points (%), as the benchmark reports them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ahps_core.benchmarks import benchmark_path, open_benchmark_records
from ahps_core.checks import as_int
from ahps_core.data.checksums import is_synthetic
from ahps_core.errors import ConfigError
from ahps_core.jsonio import jsonable, stable_hash, write_json
from ahps_core.protocol import NB201_HEADLINE, budget_info, nb201_protocol, protocol_status, protocol_tags
from ahps_core.reports import fmt, format_reevaluation_markdown, k_label, k_num
from ahps_core.steps import report as mlreport
from ahps_core.steps.base_lr import base_lr_step
from ahps_core.steps.common import (
    RANKING_REPORT_FILE,
    SAMPLE_FILE,
    SUMMARY_FILE,
    SUMMARY_MD_FILE,
    accuracy_of,
    competition_ranks,
    log,
    open_run_group,
    resolve_run_group,
    tracker,
)
from ahps_core.steps.training import train_step
from ahps_core.steps.transfer import plan_step

REEVAL_ARM = "autoscaled"
RANKING_KEY = "ranking"
#: The training preset of every re-evaluated cell: NB201's recipe (:func:`ahps_core.protocol.nb201_protocol`).
REEVAL_RECIPE = nb201_protocol("cifar10").recipe
#: Which part of our split holds the set the benchmark's headline accuracy is measured on
#: (:data:`ahps_core.protocol.NB201_HEADLINE`): the re-trained network is evaluated there.
HEADLINE_PART = {dataset: part for dataset, (_, part) in NB201_HEADLINE.items()}
DEDUP_RULES = ("function", "graph", "nb201", "none")
#: Mean test-accuracy gains of Chen et al. (ICLR 2024, §4.3) over the NB201 tables, in points.
PAPER_MEAN_GAIN = {"cifar10": 0.44, "cifar100": 1.24, "ImageNet16-120": 2.09}


def sample_step(
    *, family: str, benchmark: str, dataset: str, data_source: str, checksums_file: str, sample_size: int,
    sample_seed: int, stratify: bool, dedup: str, base_lr: float, lr_grid: Sequence[Any], lr_seeds: int, rule: str,
    convention: str, epochs: int, seeds: Sequence[Any], C: int, N: int, batch_size: int, max_steps_per_epoch: int,
    topk: Sequence[Any], n_boot: int, select_by: str, tracking_uri: str, experiment: str, run_group: str,
    job_id: str = "", s3_endpoint: str = "", out_dir: str, split_file: str = "", amp: str = "off",
    cell: str = "full", indegree: str = "all",
) -> dict[str, Any]:
    """Step 1: draw ``sample_size`` cells from the benchmark's records (:func:`ahps_core.sampling.sample_cells`,
    seeded, deduplicated under ``dedup`` unless ``"none"``, optionally stratified by benchmark accuracy), read each
    one's record on ``dataset`` (mean and per-seed accuracy, %), open the run group (the parent run holds the
    pipeline's parameters; the budget and the protocol's deviations are marked in its tags and description) and
    log the sample to it. Cells without an input->output path and isomorphic duplicates are listed in ``skipped``
    with their reasons. ``split_file`` (NB201's split file of the dataset) is read and verified here, and the run's
    deviations from NAS-Bench-201's protocol computed (:func:`ahps_core.protocol.protocol_status`). Writes
    ``sample.json`` to ``out_dir`` before anything is logged."""
    from ahps_core.graph import nb201_code, parse_arch
    from ahps_core.tracking import check_tracking_uri

    group = resolve_run_group(run_group, job_id)
    seeds, topk = [as_int(s, "seed") for s in seeds], [k_num(k) for k in topk]  # list items arrive as floats
    budget = budget_info(C=C, N=N, epochs=epochs, batch_size=batch_size, max_steps_per_epoch=max_steps_per_epoch,
                         synthetic=is_synthetic(checksums_file, data_source), benchmark=benchmark)
    tracking_uri = check_tracking_uri(tracking_uri)  # up front: before anything is fetched
    split = _read_split(dataset, split_file, checksums_file, data_source, s3_endpoint)
    protocol = protocol_status(dataset, seeds=seeds, amp=amp, cell=cell, indegree=indegree, budget=budget,
                               split=split)
    params = dict(family=family, benchmark=benchmark, dataset=dataset, data_source=data_source,
                  checksums_file=checksums_file, sample_size=sample_size, sample_seed=sample_seed, stratify=stratify,
                  dedup=dedup, base_lr_given=base_lr, lr_grid=list(lr_grid), lr_seeds=lr_seeds, rule=rule,
                  convention=convention, epochs=epochs, seeds=seeds, C=C, N=N, batch_size=batch_size,
                  max_steps_per_epoch=max_steps_per_epoch, topk=topk, n_boot=n_boot, select_by=select_by,
                  run_group=group, budget=budget["label"], budget_reasons="; ".join(budget["reasons"]) or "none",
                  split_file=split_file, amp=amp, cell=cell, indegree=indegree, protocol=protocol["label"],
                  deviations=", ".join(protocol["names"]) or "none")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dedup not in DEDUP_RULES:
        raise ConfigError(f"unknown dedup rule {dedup!r}: accepted are {', '.join(DEDUP_RULES)}")
    records, sample, candidates = open_benchmark_records(
        benchmark, s3_endpoint=s3_endpoint,
        sample={"k": as_int(sample_size, "sample_size"), "seed": as_int(sample_seed, "sample_seed"),
                "dataset": dataset, "stratify": stratify, "dedup": dedup != "none",
                "iso": dedup if dedup != "none" else "function"},
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
    head = records.query(sample.cells[0], dataset) if sample.cells else None
    data = {
        "pipeline": "reevaluate", "run_group": group, "benchmark": benchmark,
        "benchmark_path": benchmark_path(benchmark), "benchmark_format": records.format,
        "space_size": records.space_size, "n_records": len(candidates.arch_strs()), "dataset": dataset,
        "headline_set": head.headline_set if head else None, "eval_part": HEADLINE_PART.get(dataset),
        "sample_size": as_int(sample_size), "sample_seed": as_int(sample_seed), "stratify": bool(stratify),
        "dedup": dedup, "pool_size": sample.pool_size, "strata": sample.strata, "cells": cells,
        "skipped": no_path + sample.duplicates, "n_no_path": len(no_path), "n_duplicates": len(sample.duplicates),
        "budget": dict(budget), "protocol": protocol, "split": split,
    }
    write_json(out / SAMPLE_FILE, data)
    log("sample", f"{len(cells)} cells from {data['benchmark_path']} ({records.format}, {data['n_records']} of "
                  f"{records.space_size} architectures recorded; pool {sample.pool_size} after dedup {dedup!r}); "
                  f"skipped {len(no_path)} without a path, {len(sample.duplicates)} duplicates")
    log("sample", f"protocol={protocol['label']}: {protocol['text']}")
    for deviation in protocol["deviations"]:
        log("sample", f"  {deviation['name']}: {deviation['text']}")
    deviated = "".join(f"\n- {d['name']}: {d['text']}" for d in protocol["deviations"])
    note = (f"ahps reevaluate: NB201 cells on {dataset} trained with the NB201 recipe at their own "
            f"(architecture-aware) LR and init, ranked against {data['benchmark_path']}.\n\n{budget.get('text', '')}"
            f"\n\nprotocol={protocol['label']}: {protocol['text']}{deviated}")
    tr, parent = open_run_group(
        pipeline="reevaluate", tracking_uri=tracking_uri, experiment=experiment, run_group=group, step="sample",
        name=f"reevaluate nb201/{dataset}{' (reduced budget)' if budget.get('reduced') else ''} [{group}]",
        params=params, tags={"family": "nb201", "dataset": dataset, "budget": budget.get("label"),
                             **protocol_tags(protocol), "mlflow.note.content": note},
    )
    tr.log_dict(parent.run_id, jsonable(data), "reevaluate/sample.json")
    tr.set_tags(parent.run_id, {"ahps.sampled": len(cells), "ahps.skipped_no_path": len(no_path),
                                "ahps.skipped_duplicates": len(sample.duplicates)})
    return data


def _read_split(dataset: str, split_file: str, checksums_file: str, data_source: str,
                s3_endpoint: str) -> dict[str, Any] | None:
    """The split file read and verified now (:func:`ahps_core.data.splits.read_split`), as the protocol needs it:
    ``{"source", "md5", "nb201", "verified"}``; None without one."""
    if not split_file:
        return None
    from ahps_core.data import DATASETS
    from ahps_core.data.checksums import load_checksums
    from ahps_core.data.splits import read_split

    keys = DATASETS[dataset].split_keys
    if keys is None:
        raise ConfigError(f"dataset {dataset} has no NB201 split file (the benchmark evaluates its whole test "
                          f"set): split_file must be empty (got {split_file!r})")
    checksums = load_checksums(checksums_file, data_source=data_source) if checksums_file else None
    split = read_split(split_file, dataset, keys, checksums=checksums, endpoint_url=s3_endpoint or None)
    log("sample", f"split file {split.describe()}")
    return {"source": split.source, "md5": split.md5, "nb201": split.nb201, "verified": split.verified}


def reeval_base_lr_step(
    *, dataset: str, data_source: str, checksums_file: str, base_lr: float, lr_grid: Sequence[Any], lr_seeds: int,
    C: int, N: int, tracking_uri: str, experiment: str, run_group: str, s3_endpoint: str = "", out_dir: str,
    split_file: str = "",
) -> dict[str, Any]:
    """Step 2: the base LR, given (NB201 reference code: 0.46) or found on the nb201 proxy (``base_lr`` 0) with
    one epoch of NB201's recipe (:data:`ahps_core.presets.FAMILY_BUDGETS`)."""
    tr = tracker(tracking_uri, experiment, run_group)
    return base_lr_step(tr, tr.ensure_parent(), family="nb201", dataset=dataset, data_source=data_source,
                        base_lr=base_lr, lr_grid=[float(x) for x in lr_grid], lr_seeds=int(lr_seeds), width=0,
                        out_dir=out_dir, C=int(C), N=int(N), checksums_file=checksums_file, s3_endpoint=s3_endpoint,
                        split_file=split_file)


def reeval_plan_step(
    *, sample: Mapping[str, Any], seeds: Sequence[Any], base_lr: float, rule: str, convention: str,
    tracking_uri: str, experiment: str, run_group: str, out_dir: str, N: int = 5,
) -> list[dict[str, Any]]:
    """Step 3: the LR (transferred from ``base_lr``; ``N``: cells per stage, for the ``wu`` unit) and init of every
    sampled cell x seed, autoscaled arm only (:func:`~ahps_core.steps.transfer.plan_step`), each item carrying the
    cell's benchmark accuracy and index and the run's protocol status for its MLflow run."""
    budget = sample.get("budget", {}).get("label", "")
    protocol = protocol_tags(sample.get("protocol") or {})
    cells = {c["arch"]: {"benchmark_acc": c["benchmark_acc"], "benchmark_index": c["index"], "arch_code": c["code"],
                         "budget": budget, **protocol} for c in sample["cells"]}
    return plan_step(
        family="nb201", targets=list(cells), seeds=seeds, base_lr=base_lr, fixed_lr=0.0, rule=rule,
        convention=convention, tracking_uri=tracking_uri, experiment=experiment, run_group=run_group,
        out_dir=out_dir, arms=(REEVAL_ARM,), item_fields=cells, cells_per_stage=as_int(N, "N"),
    )


def reeval_extras(item: Mapping[str, Any]):
    """``(extra_tags, extra_params, extra_metrics)`` of a re-evaluated cell's training: its benchmark index, code
    and budget; ``benchmark_acc`` (mean over the records' seeds), ``new_acc`` and ``delta`` (points; a diverged
    run counts 0 %) once trained; the run's protocol tags (``protocol``, ``protocol_deviations``) from the item.
    (A module-level function, so a pack's worker process can receive it.)"""
    bench = float(item["benchmark_acc"])
    index = as_int(item["benchmark_index"], "benchmark_index")
    budget = str(item.get("budget") or "")
    protocol = {k: str(item[k]) for k in ("protocol", "protocol_deviations") if item.get(k)}
    tags = {"pipeline": "reevaluate", "benchmark_index": index, "arch_code": item.get("arch_code", ""),
            **({"budget": budget} if budget else {}), **protocol}
    return tags, {"benchmark_index": index}, functools.partial(versus_benchmark, bench)


def versus_benchmark(bench: float, result: Mapping[str, Any]) -> dict[str, float]:
    new = 100.0 * accuracy_of(result)
    return {"benchmark_acc": bench, "new_acc": new, "delta": new - bench}


def reeval_summary(item: Mapping[str, Any], summary: Mapping[str, Any], model_dir: str | Path) -> dict[str, Any]:
    """A cell's training summary with its benchmark comparison, also written to ``reevaluation.json``."""
    bench = float(item["benchmark_acc"])
    out = {**summary, **versus_benchmark(bench, summary),
           "benchmark_index": as_int(item["benchmark_index"], "benchmark_index"),
           "arch_code": item.get("arch_code", "")}
    write_json(Path(model_dir) / "reevaluation.json", out)
    log("train", f"{item['arch_code']} seed {out['seed']}: new {out['new_acc']:.2f} % vs benchmark "
                 f"{bench:.2f} % ({out['delta']:+.2f} points)")
    return out


def reeval_train_step(
    *, item: Mapping[str, Any], dataset: str, data_source: str, checksums_file: str, epochs: int, batch_size: int,
    C: int, N: int, max_steps_per_epoch: int, device: str, rule: str, convention: str, tracking_uri: str,
    experiment: str, checkpoint_root: str, s3_endpoint: str, model_dir: str, split_file: str = "", amp: str = "off",
    cell: str = "full", indegree: str = "all",
) -> dict[str, Any]:
    """Step 4 (one per cell x seed): :func:`train_step` with NB201's recipe (:data:`REEVAL_RECIPE`) at the item's LR
    and the architecture-aware init (``cell``, ``indegree``, ``amp``: the protocol's unless changed), split by
    ``split_file`` and evaluated on the part the benchmark reports (:data:`HEADLINE_PART`); then the run's
    benchmark comparison (:func:`reeval_extras`)."""
    tags, params, metrics = reeval_extras(item)
    summary = train_step(
        item=item, family="nb201", dataset=dataset, data_source=data_source, epochs=epochs,
        train_recipe=REEVAL_RECIPE, batch_size=batch_size, width=0, max_steps_per_epoch=max_steps_per_epoch,
        device=device, rule=rule, convention=convention, tracking_uri=tracking_uri, experiment=experiment,
        run_group=str(item["run_group"]), checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint,
        model_dir=model_dir, C=C, N=N, checksums_file=checksums_file, eval_part=HEADLINE_PART.get(dataset, ""),
        split_file=split_file, amp=amp, cell=cell, indegree=indegree,
        extra_tags=tags, extra_params=params, extra_metrics=metrics,
    )
    return reeval_summary(item, summary, model_dir)


def reeval_train_pack_step(
    *, pack: Mapping[str, Any], dataset: str, data_source: str, checksums_file: str, epochs: int, batch_size: int,
    C: int, N: int, max_steps_per_epoch: int, device: str, rule: str, convention: str, tracking_uri: str,
    experiment: str, checkpoint_root: str, s3_endpoint: str, model_dir: str, split_file: str = "", amp: str = "off",
    cell: str = "full", indegree: str = "all",
) -> list[dict[str, Any]]:
    """Step 4 as packs (:mod:`ahps_core.steps.pack`): every seed of a pack's cells, each as
    :func:`reeval_train_step` records it."""
    from ahps_core.steps.pack import run_dir, train_pack_step

    summaries = train_pack_step(
        pack=pack, family="nb201", dataset=dataset, data_source=data_source, epochs=epochs,
        train_recipe=REEVAL_RECIPE, batch_size=batch_size, width=0, max_steps_per_epoch=max_steps_per_epoch,
        device=device, rule=rule, convention=convention, tracking_uri=tracking_uri, experiment=experiment,
        checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model_dir, C=C, N=N,
        checksums_file=checksums_file, eval_part=HEADLINE_PART.get(dataset, ""), split_file=split_file, amp=amp,
        cell=cell, indegree=indegree, extras=reeval_extras,
    )
    return [reeval_summary(item, summary, run_dir(model_dir, item))
            for item, summary in zip(pack.get("items", []), summaries, strict=True)]


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
    from ahps_core.tracking import INPUTS_HASH_TAG, tracked_step

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
        runs = sorted(by_arch.get(arch, []), key=lambda r: as_int(r["seed"], "seed"))
        row: dict[str, Any] = {"arch": arch, "code": cell["code"], "index": cell["index"],
                               "benchmark_acc": cell["benchmark_acc"],
                               "predicted_lr": planned.get(arch, {}).get("predicted_lr"),
                               "ratio": planned.get(arch, {}).get("ratio")}
        if runs:
            accs = [100.0 * accuracy_of(r) for r in runs]
            row.update(new_acc=sum(accs) / len(accs), new_acc_per_seed={str(as_int(r["seed"])): a
                                                                       for r, a in zip(runs, accs, strict=True)},
                       diverged=sum(1 for r in runs if r.get("status") != "completed"), seeds=len(runs),
                       runs=[r.get("mlflow_run_id") for r in runs])
            row["delta"] = row["new_acc"] - row["benchmark_acc"]
            bench_acc[arch], new_acc[arch] = row["benchmark_acc"], row["new_acc"]
            bench_seeds[arch] = {int(s): float(a) for s, a in cell["benchmark_acc_per_seed"].items()}
        rows.append(row)
    for key, values in (("rank_benchmark", bench_acc), ("rank_new", new_acc)):
        ranks = competition_ranks(values)  # rank 1 = best; ties share the better rank
        for row in rows:
            row[key] = ranks.get(row["arch"])
    rows.sort(key=lambda r: (r["rank_benchmark"] is None, r["rank_benchmark"] or 0, r["arch"]))

    from ahps_core.plots import banner_text
    from ahps_core.plots_compare import plot_rank_change

    banner = banner_text({"protocol": sample.get("protocol"), "budget": sample.get("budget")})
    report = ranking.ranking_report(bench_acc, new_acc, bench_seeds=bench_seeds, dataset=dataset, ks=ks,
                                    n_boot=as_int(n_boot), out_dir=out, banner=banner)
    write_json(out / RANKING_REPORT_FILE, report)
    plots = dict(report.get("plots", {}))
    plots["rank_change"] = str(plot_rank_change(rows, out / f"{dataset}_rank_change.png", dataset, banner=banner))
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
        "seeds": plan.get("seeds"), "budget": sample.get("budget", {}), "protocol": sample.get("protocol", {}),
        "split": sample.get("split"), "sample_size": sample.get("sample_size"),
        "pool_size": sample.get("pool_size"), "rows": rows, "topk": main, "stats": stats, "plots": plots,
        "n_no_path": sample.get("n_no_path", 0), "n_duplicates": sample.get("n_duplicates", 0),
        "skipped_examples": list(sample.get("skipped", []))[:10] + list(plan.get("skipped", [])),
        "trainings": len(results), "reused_trainings": sum(1 for r in results if r.get("reused")),
        "output_dir": str(out),
    }
    write_json(out / SUMMARY_FILE, summary)
    (out / SUMMARY_MD_FILE).write_text(format_reevaluation_markdown(summary))

    tr = tracker(tracking_uri, experiment, run_group)
    inputs = stable_hash([sorted((r.get("mlflow_run_id") or "", str(r.get("arch")), str(r.get("seed")))
                                 for r in results), ks, as_int(n_boot), select_by])
    parent = tr.ensure_parent()
    budget = sample.get("budget", {})
    description = mlreport.note(mlreport.reevaluation_markdown(summary), more="ranking/summary.md")
    with tracked_step(tr, tr.key(RANKING_KEY), name=f"ranking vs benchmark ({dataset})", kind="ranking",
                      identity=inputs, identity_tag=INPUTS_HASH_TAG,
                      tags={"family": "nb201", "dataset": dataset, "rule": plan.get("rule"),
                            "convention": plan.get("convention"), "select_by": select_by,
                            "budget": budget.get("label", ""), **protocol_tags(sample.get("protocol") or {}),
                            mlreport.NOTE_TAG: description},
                      params={"topk": [k_num(k) for k in ks], "n_boot": as_int(n_boot), "select_by": select_by,
                              "benchmark": sample.get("benchmark_path"), "n_archs": len(rows)}) as run:
        if run.reused:
            log("rank", f"reused the finished ranking run {run.run_id} (same trainings)")
        else:
            _log_ranking(run, summary, main, rows, plots, out)
            head = {k: v for k, v in ranking_metrics(summary).items()
                    if k in ("tau_top100", "noise_tau_top100", "spearman_top100", "mean_accuracy_delta", "n_archs",
                             "gap_ratio", "rank_changes")}
            tr.log_metrics(parent.run_id, {**head, "base_lr": plan.get("base_lr")})
            tr.log_table(parent.run_id, mlreport.reevaluation_table(rows), mlreport.RANKING_TABLE_FILE)
            tr.set_tags(parent.run_id, {mlreport.NOTE_TAG: description})  # the banner of the sample step, + the table
            for path in plots.values():
                tr.log_file(parent.run_id, path, "plots")
            run.summary = {"stats": stats, "topk": main, "rows": rows}
        mlreport.tag_children(tr, mlreport.reevaluation_child_tags(rows))
    tr.finish(parent.run_id)
    summary["mlflow"] = {"tracking_uri": tr.uri, "experiment": experiment, "experiment_id": tr.experiment_id,
                         "parent_run_id": parent.run_id, "compare_run_id": run.run_id, "ranking_run_id": run.run_id,
                         "runs_url": mlreport.runs_url(tr.uri, tr.experiment_id)}
    write_json(out / SUMMARY_FILE, summary)
    top = main[0] if main else {}
    log("rank", f"{len(rows)} cells, tau-b top{k_label(top.get('k', 100))} {fmt(top.get('tau'), '.3f')} "
                f"(noise floor {fmt(top.get('noise_tau'), '.3f')}), mean delta "
                f"{fmt(stats.get('mean_accuracy_delta'), '+.2f')} points; ranking run {run.run_id}")
    return summary


def _log_ranking(run, summary: Mapping[str, Any], main: list[dict[str, Any]], rows: list[dict[str, Any]],
                 plots: Mapping[str, str], out: Path) -> None:
    run.log_metrics(ranking_metrics(summary))
    run.log_table(mlreport.reevaluation_table(rows), mlreport.RANKING_TABLE_FILE)
    for i, t in enumerate(main):  # tau against K as a curve too (step = position in the K list)
        run.log_metrics({"tau_by_k": t.get("tau"), "noise_tau_by_k": t.get("noise_tau"),
                         "spearman_by_k": t.get("spearman")}, step=i)
    for i, row in enumerate(rows):  # one curve per quantity (step = position in the table), not one bar each
        run.log_metrics({"new_acc_by_index": mlreport.rounded(row.get("new_acc")),
                         "benchmark_acc_by_index": mlreport.rounded(row.get("benchmark_acc")),
                         "delta_by_index": mlreport.rounded(row.get("delta"))}, step=i)
    for path in (out / RANKING_REPORT_FILE, out / SUMMARY_FILE, out / SUMMARY_MD_FILE):
        run.log_file(path, "ranking")
    for plot in plots.values():
        run.log_file(plot, "plots")


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
        k = k_label(t["k"])
        out[f"n_top{k}"] = t.get("n")
        for name in ("tau", "spearman", "noise_tau"):
            out[f"{name}_top{k}"] = t.get(name)
            low, high = t.get(f"{name}_ci") or [None, None]
            out[f"{name}_top{k}_ci_low"], out[f"{name}_top{k}_ci_high"] = low, high
    return out

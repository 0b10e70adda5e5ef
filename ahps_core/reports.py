"""What people read: the text and markdown reports of both pipelines, built from their ``summary.json``.

* transfer: :func:`format_table` (per architecture: predicted LR, accuracy per arm, delta, ranks),
  :func:`format_stats` (wins, mean delta with CI, Kendall tau-b / Spearman between the arms), :func:`format_markdown`;
* reevaluate: :func:`format_reevaluation` (the protocol banner with every deviation, the per-cell table, the top-K%
  ranking table with the noise floor, the mean delta and the gaps), :func:`format_reevaluation_markdown`.

Accuracies in a transfer summary are fractions (shown as %), in a reevaluate summary points (%).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any


def fmt(value: Any, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``; ``-`` for None and non-finite numbers."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(float(value), spec)


def k_label(k: Any) -> str:
    """A top-K percentage as a metric-name part: ``100.0`` -> ``100``, ``2.5`` -> ``2.5``."""
    return format(float(k), "g")


def k_num(k: Any) -> int | float:
    """A top-K percentage as JSON shows it best: ``100.0`` -> ``100``, ``2.5`` stays."""
    return int(float(k)) if float(k).is_integer() else float(k)


def _ci_text(ci: Any, spec: str = ".3f") -> str:
    lo, hi = (ci or [None, None])
    return "" if lo is None or hi is None else f" [{format(lo, spec)}, {format(hi, spec)}]"


def _table(head: list[str], body: list[list[str]], *, left: tuple[int, ...] = (0,)) -> list[str]:
    """Aligned text rows: a header, a rule, the body; columns in ``left`` left-aligned, the others right."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(row) for row in body)]


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
    lines = _table(head, body)
    for s in summary.get("skipped", []):
        lines.append(f"skipped {s['arch']}: {s['reason']}")
    return "\n".join(lines)


def format_stats(summary: Mapping[str, Any]) -> str:
    s = summary.get("stats", {})

    def ci(name: str) -> str:
        return _ci_text(s.get(name))

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


def format_transfer(summary: Mapping[str, Any]) -> str:
    """The report ``ahps run`` prints for a transfer run: the table, then the statistics."""
    return f"{format_table(summary)}\n\n{format_stats(summary)}"


def format_markdown(summary: Mapping[str, Any]) -> str:
    rows = summary.get("rows", [])
    lines = [f"# ahps transfer: {summary.get('family')} on {summary.get('dataset')} "
             f"(run group {summary.get('run_group')})", "",
             "| architecture | predicted LR | autoscaled acc % | fixed acc % | delta | rank autoscaled | rank fixed |",
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


def format_protocol(summary: Mapping[str, Any]) -> list[str]:
    """The protocol banner of a re-evaluation: ``protocol=nb201`` in one line, or every deviation from
    NAS-Bench-201's protocol framed by ``!`` (the REDUCED budget among them, as ``budget``); a summary recorded
    before protocols were tracked gets its budget banner."""
    protocol, budget = summary.get("protocol") or {}, summary.get("budget", {})
    bar = "!" * 100
    if not protocol:
        return [bar, f"!! {budget.get('text')}", bar, ""] if budget.get("reduced") else []
    if protocol.get("label") != "deviated":
        return [f"protocol=nb201: {protocol.get('text')}", ""]
    lines = [bar, f"!! protocol=deviated: {protocol.get('text')}:"]
    lines += [f"!!   {d['name']}: {d['text']}" for d in protocol.get("deviations", [])]
    return [*lines, bar, ""]


def format_reevaluation(summary: Mapping[str, Any]) -> str:
    """The report ``ahps run reevaluate`` prints: the protocol banner (:func:`format_protocol`), the per-cell table
    (benchmark vs new accuracy and ranks), the top-K% ranking table with the noise floor, the mean delta and the
    gaps."""
    budget = summary.get("budget", {})
    lines = format_protocol(summary)
    for note in budget.get("notes", []):
        lines.append(f"note: {note}")
    lines.append(f"re-evaluation of {len(summary.get('rows', []))} NB201 cells on {summary.get('dataset')} "
                 f"(benchmark {summary.get('benchmark_format')}: {summary.get('headline_set')} accuracy, mean over its "
                 f"seeds; new: NB201 recipe, autoscaled LR + arch-aware init, seeds {summary.get('seeds')}, "
                 f"evaluated on our '{summary.get('eval_part')}' part)")
    lines.append(f"base LR {fmt(summary.get('base_lr'), '.4g')}, rule {summary.get('rule')}, convention "
                 f"{summary.get('convention')}")
    split = summary.get("split") or {}
    if split:
        lines.append(f"split file {split.get('source')} (md5 {split.get('md5')}, "
                     f"{'NB201' if split.get('nb201') else 'not NB201'}'s split)")
    elif summary.get("dataset") in ("cifar100", "ImageNet16-120", "cifar10-valid") and not summary.get("protocol"):
        lines.append("note: the benchmark's x-test is half of the original test set, picked by NB201's split file; "
                     "without that file our 'test' part is a seeded stratified half (same size, other images)")
    lines.append("")
    body = []
    for r in summary.get("rows", []):
        delta = r.get("delta")
        body.append([
            r["code"], str(r["index"]), fmt(r.get("predicted_lr"), ".4g"), fmt(r.get("benchmark_acc"), ".2f"),
            fmt(r.get("new_acc"), ".2f") + (" (div)" if r.get("diverged") else ""),
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
        body.append([k_label(t["k"]), str(t["n"]), tau, rho, noise, note])
    lines += _table(["K %", "n", "tau-b [CI]", "Spearman", "noise tau-b [CI]", "note"], body, left=(0, 5))
    delta = s.get("mean_accuracy_delta")
    paper = s.get("paper_mean_gain")
    lines.append("")
    lines.append(f"mean accuracy delta (new - benchmark): {fmt(delta, '+.2f')} points"
                 f"{_ci_text(s.get('mean_accuracy_delta_ci'), '+.2f')}; new better on {s.get('new_better', 0)}/"
                 f"{s.get('n', 0)} cells" + (f" (Chen et al.: {paper:+.2f} on {summary.get('dataset')})"
                                             if paper is not None else ""))
    lines.append(f"pairwise accuracy gaps: mean {fmt(s.get('mean_gap_benchmark'), '.2f')} (benchmark) -> "
                 f"{fmt(s.get('mean_gap_new'), '.2f')} (new), ratio {fmt(s.get('gap_ratio'), '.3f')}"
                 f"{_ci_text(s.get('gap_ratio_ci'))}; {s.get('rank_changes', 0)} cell(s) changed rank")
    if s.get("diverged"):
        lines.append(f"diverged trainings (counted as 0 %): {s['diverged']}")
    ml = summary.get("mlflow") or {}
    if ml.get("ranking_run_id"):
        lines.append(f"MLflow ranking run {ml['ranking_run_id']} (parent run {ml.get('parent_run_id')})")
    return "\n".join(lines)


def reevaluation_markdown_head(summary: Mapping[str, Any]) -> list[str]:
    """The first lines of a re-evaluation's markdown: the title, the REDUCED budget and the protocol with every
    deviation as block quotes (empty when the run is on the protocol)."""
    budget, protocol = summary.get("budget", {}), summary.get("protocol") or {}
    lines = [f"# ahps reevaluate: NB201 on {summary.get('dataset')} (run group {summary.get('run_group')})", ""]
    if budget.get("reduced"):
        lines += [f"> **{budget.get('text')}**", ""]
    if protocol:
        lines += [f"> protocol={protocol.get('label')}: {protocol.get('text')}", ""]
        lines += [f"> - {d['name']}: {d['text']}" for d in protocol.get("deviations", [])] + [""]
    return lines


def format_reevaluation_markdown(summary: Mapping[str, Any]) -> str:
    lines = [*reevaluation_markdown_head(summary), "```", format_reevaluation(summary), "```"]
    return "\n".join(lines) + "\n"

"""MLflow as the report (docs/conventions.md A15): what the fan-in steps (``compare``, ``rank``) write on the
runs people open -- the markdown summary table as the run description (``mlflow.note.content``), the
per-architecture table as an MLflow table artifact, and on every finished child training run its arm's delta
and ranks as tags (set on the existing runs: no run is created). Accuracies are percentage points everywhere in
MLflow; the transfer pipeline's ``summary.json`` keeps fractions (its documented on-disk form)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NOTE_TAG = "mlflow.note.content"
TABLE_FILE = "comparison/by_arch.json"
RANKING_TABLE_FILE = "ranking/by_cell.json"
#: MLflow tags hold at most 8000 characters in the SQL stores (a longer description is cut with a pointer)
_MAX_NOTE = 7900


def points(fraction: Any) -> float | None:
    """A fraction (0.6694) as percentage points rounded to 4 decimals (66.94); None stays None."""
    return None if fraction is None else round(100.0 * float(fraction), 4)


def rounded(value: Any, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def note(markdown: str, *, more: str = "") -> str:
    """A run description: ``markdown``, cut to what a tag holds (saying where the whole of it is)."""
    if len(markdown) <= _MAX_NOTE:
        return markdown
    cut = markdown[:_MAX_NOTE].rsplit("\n", 1)[0]
    return f"{cut}\n\n(cut: the whole table is {more or 'in the artifacts'})\n"


def transfer_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The per-architecture table of a comparison (columns -> values, points), for ``log_table``."""
    cols: dict[str, list[Any]] = {k: [] for k in ("architecture", "predicted_lr", "acc_autoscaled_points",
                                                   "acc_fixed_points", "delta_points", "rank_autoscaled",
                                                   "rank_fixed", "rank_change")}
    for r in rows:
        cols["architecture"].append(str(r["arch"]))
        cols["predicted_lr"].append(rounded(r.get("predicted_lr"), 6))
        cols["acc_autoscaled_points"].append(points(r.get("autoscaled_acc")))
        cols["acc_fixed_points"].append(points(r.get("fixed_acc")))
        cols["delta_points"].append(points(r.get("delta")))
        cols["rank_autoscaled"].append(r.get("rank_autoscaled"))
        cols["rank_fixed"].append(r.get("rank_fixed"))
        cols["rank_change"].append(rank_change(r.get("rank_fixed"), r.get("rank_autoscaled")))
    return cols


def reevaluation_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The per-cell table of a re-evaluation (points), for ``log_table``."""
    cols: dict[str, list[Any]] = {k: [] for k in ("cell_code", "arch_string", "benchmark_index", "predicted_lr",
                                                   "benchmark_acc_points", "new_acc_points", "delta_points",
                                                   "rank_benchmark", "rank_new", "rank_change")}
    for r in rows:
        cols["cell_code"].append(str(r["code"]))
        cols["arch_string"].append(str(r["arch"]))
        cols["benchmark_index"].append(r.get("index"))
        cols["predicted_lr"].append(rounded(r.get("predicted_lr"), 6))
        cols["benchmark_acc_points"].append(rounded(r.get("benchmark_acc")))
        cols["new_acc_points"].append(rounded(r.get("new_acc")))
        cols["delta_points"].append(rounded(r.get("delta")))
        cols["rank_benchmark"].append(r.get("rank_benchmark"))
        cols["rank_new"].append(r.get("rank_new"))
        cols["rank_change"].append(rank_change(r.get("rank_benchmark"), r.get("rank_new")))
    return cols


def reevaluation_markdown(summary: Mapping[str, Any]) -> str:
    """The description of a re-evaluation's ranking and parent runs: the budget/protocol banner, a markdown table
    with one row per cell (code and NB201 string, accuracies in points, delta, ranks) and the headline numbers."""
    from ahps_core.reports import fmt, format_protocol, reevaluation_markdown_head

    s = summary.get("stats", {})
    lines = reevaluation_markdown_head(summary)
    if not summary.get("protocol") and format_protocol(summary):
        lines += [f"> {ln.strip('! ')}" for ln in format_protocol(summary) if ln.strip("! ")] + [""]
    top = (summary.get("topk") or [{}])[0]
    lines += [f"mean accuracy delta (new - benchmark) **{fmt(s.get('mean_accuracy_delta'), '+.2f')} points**; "
              f"new better on {s.get('new_better', 0)}/{s.get('n', 0)} cells; Kendall tau-b "
              f"{fmt(top.get('tau'), '.3f')} (noise floor {fmt(top.get('noise_tau'), '.3f')}); "
              f"{s.get('rank_changes', 0)} cell(s) changed rank", "",
              "| cell | NB201 string | index | LR | benchmark acc % | new acc % | delta (points) | rank bench "
              "| rank new |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary.get("rows", []):
        div = " (div)" if r.get("diverged") else ""
        lines.append(f"| `{r['code']}` | `{r['arch']}` | {r.get('index')} | {fmt(r.get('predicted_lr'), '.4g')} | "
                     f"{fmt(r.get('benchmark_acc'), '.2f')} | {fmt(r.get('new_acc'), '.2f')}{div} | "
                     f"{fmt(r.get('delta'), '+.2f')} | {r.get('rank_benchmark') or '-'} | {r.get('rank_new') or '-'} |")
    return "\n".join(lines) + "\n"


def rank_change(before: Any, after: Any) -> int | None:
    """Places gained (positive: ranked better ``after`` than ``before``); None when either rank is missing."""
    return None if before is None or after is None else int(before) - int(after)


def transfer_child_tags(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per child training run id: its arm's delta (points) and ranks, from the comparison's rows."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        delta = points(r.get("delta"))
        common = {"ahps.delta_points": "-" if delta is None else f"{delta:+.2f}",
                  "ahps.rank_autoscaled": r.get("rank_autoscaled") or "-",
                  "ahps.rank_fixed": r.get("rank_fixed") or "-",
                  "ahps.rank_change": _signed(rank_change(r.get("rank_fixed"), r.get("rank_autoscaled")))}
        for arm in ("autoscaled", "fixed"):
            acc = points(r.get(f"{arm}_acc"))
            for run_id in r.get(f"{arm}_runs") or []:
                if run_id:
                    out[str(run_id)] = {**common, "ahps.rank": r.get(f"rank_{arm}") or "-",
                                        "ahps.arm_acc_points": "-" if acc is None else f"{acc:.2f}"}
    return out


def reevaluation_child_tags(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per child training run id of a re-evaluation: the cell's delta (points) and ranks."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        delta = rounded(r.get("delta"))
        tags = {"ahps.delta_points": "-" if delta is None else f"{delta:+.2f}",
                "ahps.rank_benchmark": r.get("rank_benchmark") or "-", "ahps.rank_new": r.get("rank_new") or "-",
                "ahps.rank": r.get("rank_new") or "-",
                "ahps.rank_change": _signed(rank_change(r.get("rank_benchmark"), r.get("rank_new")))}
        for run_id in r.get("runs") or []:
            if run_id:
                out[str(run_id)] = tags
    return out


def _signed(n: int | None) -> str:
    return "-" if n is None else f"{n:+d}"


def tag_children(tr, tags_by_run: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the tags on the (finished) child runs; never creates a run (placeholders go to the journal)."""
    for run_id, tags in tags_by_run.items():
        tr.set_tags(run_id, tags)


def runs_url(tracking_uri: str, experiment_id: str, *, local: str = "http://127.0.0.1:5000") -> str:
    """The runs table of the experiment in the MLflow 3 UI (``workflowType=machine_learning``: the runs view,
    not the GenAI overview); a local store's URL is the ``mlflow ui`` default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else local
    if "@" in base.split("//", 1)[-1].split("/", 1)[0]:  # never print credentials of a URL
        scheme, rest = base.split("//", 1)
        base = f"{scheme}//{rest.split('@', 1)[1]}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

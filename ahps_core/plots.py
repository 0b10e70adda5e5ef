"""Every figure of the project, drawn with matplotlib's object API (imported only when a figure is drawn; no
pyplot, so no global state and no backend switching) and saved as PNG by :func:`save`.

* :func:`figure` / :func:`save`: a new figure with constrained layout, and its atomic PNG write;
* :func:`plot_lr_curve`: the LR-search curve (mean final training loss vs LR, every seed, the best LR, the
  diverged LRs);
* :func:`plot_pred_vs_measured`: predicted vs measured maximal LRs of ``ahps validate`` on log-log axes, one
  panel per (rule, convention), with the identity line, the fitted line, each measurement's seed-bootstrap CI
  and the proxy (like Fig. 2 of Chen et al. 2024);
* :func:`plot_topk`, :func:`plot_gaps`, :func:`plot_scatter`: the rank statistics of :mod:`ahps_core.ranking`
  (top-K% rank correlations, pairwise-gap CDFs, new vs benchmark accuracy).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ahps_core.checks import finite_or_none

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ahps_core.ranking import PairGaps, TopK

DPI = 110


def figure(width: float = 7.0, height: float = 4.5, *, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    """A new figure of ``width`` x ``height`` inches with constrained layout, and its axes: one ``Axes``, or a
    ``rows`` x ``cols`` array of them when either is > 1."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    if rows == 1 and cols == 1:
        return fig, fig.add_subplot()
    return fig, fig.subplots(rows, cols, squeeze=False)


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` as PNG (parents created) atomically: a reader never sees half a file."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _finite(value: Any) -> bool:
    return finite_or_none(value) is not None


# --- LR search and validation ---------------------------------------------------------------------------------


def plot_lr_curve(result: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draw an :class:`~ahps_core.lr_search.LRSearchResult` (or its ``to_dict()``) to ``path`` (PNG)."""
    data: Mapping[str, Any] = result if isinstance(result, Mapping) else result.to_dict()
    fig, ax = figure(6, 4)
    curve = data["curve"]
    finite = [p for p in curve if _finite(p["mean_loss"])]
    top = max([v for p in curve for v in p["losses"] if _finite(v)] or [1.0])
    for p in curve:
        for v in p["losses"]:
            if _finite(v):
                ax.scatter([p["lr"]], [v], s=10, color="tab:blue", alpha=0.35)
    ax.plot([p["lr"] for p in finite], [p["mean_loss"] for p in finite], "-o", color="tab:blue", ms=4,
            label="mean over seeds")
    div = [p["lr"] for p in curve if not _finite(p["mean_loss"])]
    if div:
        ax.scatter(div, [top] * len(div), marker="x", color="tab:red", label="diverged (+inf)")
    best = data["best_lr"]
    ax.axvline(best, color="tab:green", ls="--", label=f"best LR {best:.3g}")
    ax.set_xscale("log")
    if finite and min(p["mean_loss"] for p in finite) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final training loss")
    ax.set_title(title or f"LR search {data.get('label', '')}".strip())
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_pred_vs_measured(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Draw ``ahps validate``'s report (its ``comparisons``) to ``path`` (PNG)."""
    comps = [c for c in report["comparisons"] if c["points"]]
    n = max(len(comps), 1)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = figure(4.6 * cols, 4.2 * rows, rows=rows, cols=cols)
    panels = list(axes.flat) if isinstance(axes, np.ndarray) else [axes]
    for ax, comp in zip(panels, comps, strict=False):  # more panels than comparisons: the rest are blank
        xs = [p["predicted_lr"] for p in comp["points"]]
        ys = [p["measured_lr"] for p in comp["points"]]
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
        bars = [(p["predicted_lr"], p["measured_lr"], p["measured_ci"]) for p in comp["points"] if p.get("measured_ci")]
        if bars:  # the seed bootstrap's CI of each measured maximal LR
            ax.errorbar([b[0] for b in bars], [b[1] for b in bars], fmt="none", ecolor="tab:blue", alpha=0.4,
                        yerr=[[max(b[1] - b[2][0], 0) for b in bars], [max(b[2][1] - b[1], 0) for b in bars]])
        base = report.get("base") or {}
        if _finite(base.get("lr")):
            ax.scatter([base["lr"]], [base["lr"]], marker="*", s=90, color="tab:green", zorder=4,
                       label="proxy (base LR, not fitted)")
            xs, ys = xs + [base["lr"]], ys + [base["lr"]]
        for p in comp["points"]:
            ax.annotate(p["arch"], (p["predicted_lr"], p["measured_lr"]), fontsize=6, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
        lo, hi = min(xs + ys), max(xs + ys)
        lo, hi = lo / 1.5, hi * 1.5
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="measured = predicted")
        if _finite(comp.get("slope")) and _finite(comp.get("intercept")):
            fx = [lo, hi]
            fy = [math.exp(comp["intercept"] + comp["slope"] * math.log(v)) for v in fx]
            ax.plot(fx, fy, color="tab:orange", lw=1, label=f"fit, slope {comp['slope']:.2f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        r = comp.get("pearson_log")
        r_text = f"r = {r:.3f}" if _finite(r) else "r undefined"
        ci = comp.get("pearson_ci")
        if _finite(r) and ci and all(_finite(v) for v in ci):
            r_text += f" [{ci[0]:.2f}, {ci[1]:.2f}], n = {comp.get('n')}"
        ax.set_title(f"{comp['rule']} / {comp['convention']}: {r_text}", fontsize=9)
        ax.set_xlabel("predicted max LR (transferred)")
        ax.set_ylabel("measured max LR (grid search)")
        ax.legend(fontsize=7)
    for ax in panels[len(comps):]:
        ax.axis("off")
    fig.suptitle(f"{report.get('family')} on {report.get('dataset')}: base LR {report['base']['lr']:.3g}", fontsize=10)
    return save(fig, path)


def _plain_log_ticks(ax: Any) -> None:
    """Label only the decades and 2x/5x of log axes spanning less than a few decades (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


# --- rank statistics ------------------------------------------------------------------------------------------


def plot_topk(results: Mapping[str, Sequence[TopK]] | Sequence[TopK], path: str | os.PathLike[str], *,
              title: str = "") -> Path:
    """τ-b (with CI band), Spearman ρ and the noise τ against K; one τ line per selection in ``results``."""
    series = results if isinstance(results, Mapping) else {"benchmark": results}
    fig, ax = figure(9)
    for sel, rows in series.items():
        x = np.arange(len(rows))
        tau = np.array([r.tau for r in rows])
        lo = np.array([r.tau_ci[0] for r in rows])
        hi = np.array([r.tau_ci[1] for r in rows])
        line = ax.plot(x, tau, marker="o", label=f"Kendall τ-b (top set by {sel})")[0]
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        ax.plot(x, [r.spearman for r in rows], ls="--", color=line.get_color(), label=f"Spearman ρ (by {sel})")
        ax.plot(x, [r.noise_tau for r in rows], ls=":", marker="s", color=line.get_color(),
                label=f"seed-to-seed τ-b, noise floor (by {sel})")
    rows = next(iter(series.values()))
    ax.set_xticks(np.arange(len(rows)), [f"{r.k:g}\nn={r.n}" for r in rows], fontsize="small")
    ax.set_xlabel("top K% of architectures")
    ax.set_ylabel("rank correlation")
    ax.set_title(title or "Benchmark vs new ranking within the top K%")
    ax.legend(fontsize="x-small", loc="lower left")
    return save(fig, path)


def plot_gaps(gaps: PairGaps, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Empirical CDFs of the pairwise accuracy gaps under the benchmark and the new scheme."""
    fig, ax = figure()
    for g, label in ((gaps.bench_gaps, "benchmark"), (gaps.new_gaps, "new")):
        if g.size:
            xs = np.sort(g)
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=f"{label} (mean {np.mean(g):.2f})")
    ax.set_xlabel("pairwise accuracy gap |acc_i - acc_j| (points)")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(title or f"Pairwise gaps, n={gaps.n}{' (sampled pairs)' if gaps.sampled else ''}")
    if gaps.bench_gaps.size:
        ax.legend(fontsize="small")
    return save(fig, path)


def plot_scatter(
    bench_acc: Mapping[str, float],
    new_acc: Mapping[str, float],
    path: str | os.PathLike[str],
    *,
    top_k: float = 10,
    title: str = "",
) -> Path:
    """New vs benchmark accuracy, the identity line, and the benchmark's top ``top_k`` % highlighted."""
    from ahps_core.ranking import paired_accuracies, top_set

    archs, b, y = paired_accuracies(bench_acc, new_acc)
    fig, ax = figure()
    best = set(top_set(dict(zip(archs, b, strict=True)), top_k))
    top = np.array([i for i, a in enumerate(archs) if a in best], dtype=int)
    ax.scatter(b, y, s=10, alpha=0.6, label="architectures")
    if len(b):
        ax.scatter(b[top], y[top], s=14, color="tab:red", label=f"benchmark top {top_k:g}%")
        lim = [min(b.min(), y.min()), max(b.max(), y.max())]
        ax.plot(lim, lim, color="gray", lw=1, label="new = benchmark")
        ax.legend(fontsize="small")
    ax.set_xlabel("benchmark accuracy (%)")
    ax.set_ylabel("new accuracy (%)")
    ax.set_title(title or f"New vs benchmark accuracy (n={len(b)})")
    return save(fig, path)


# --- the transfer comparison -------------------------------------------------------------------------------


def _short(arch: str, n: int = 18) -> str:
    return arch if len(arch) <= n else arch[: n - 1] + "…"


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path, family: str, dataset: str) -> Path:
    """Final accuracy of every architecture under both arms (a transfer run's comparison)."""
    fig, ax = figure(max(6.0, 1.1 * len(rows) + 2), 4.2)
    x = list(range(len(rows)))
    w = 0.38
    shown: list[float] = []
    for off, arm, color in ((-w / 2, "autoscaled", "tab:blue"), (w / 2, "fixed", "tab:orange")):
        ys = [100 * (r.get(f"{arm}_acc") or 0.0) for r in rows]
        shown += ys
        bars = ax.bar([i + off for i in x], ys, w, label=arm, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    if shown:  # the differences between arms are a few points: zoom on them (the axis says where it starts)
        lo, hi = min(shown), max(shown)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - 3 * pad), min(100.0, hi + pad))
    ax.set_xticks(x, [_short(r["arch"]) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("final eval accuracy (%)")
    ax.set_title(f"Autoscaled vs fixed recipe: {family} on {dataset}")
    ax.legend(fontsize="small")
    return save(fig, path, dpi=100)


def plot_lrs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], path: Path, family: str) -> Path:
    """The transferred LR of every architecture against the base and fixed LRs."""
    fig, ax = figure(max(6.0, 1.0 * len(rows) + 2), 4.2)
    x = list(range(len(rows)))
    ax.bar(x, [r.get("predicted_lr") or 0.0 for r in rows], 0.6, color="tab:blue", label="transferred LR (autoscaled)")
    if plan.get("base_lr"):
        ax.axhline(plan["base_lr"], color="gray", ls="--", lw=1, label=f"base LR {plan['base_lr']:.3g} (proxy)")
    if plan.get("fixed_lr") and plan.get("fixed_lr") != plan.get("base_lr"):
        ax.axhline(plan["fixed_lr"], color="tab:orange", ls=":", lw=1, label=f"fixed LR {plan['fixed_lr']:.3g}")
    ax.set_xticks(x, [_short(r["arch"]) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Predicted LR per architecture ({family}, rule {plan.get('rule')}, {plan.get('convention')})")
    ax.legend(fontsize="small")
    return save(fig, path, dpi=100)


__all__ = ["DPI", "figure", "plot_accuracy", "plot_gaps", "plot_lr_curve", "plot_lrs", "plot_pred_vs_measured",
           "plot_scatter", "plot_topk", "save"]

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
#: The ``gid`` of the deviation banner's text (:func:`draw_banner`).
BANNER_GID = "ahps-banner"


def figure(width: float = 7.0, height: float = 4.5, *, rows: int = 1, cols: int = 1) -> tuple[Figure, Any]:
    """A new figure of ``width`` x ``height`` inches with constrained layout, and its axes: one ``Axes``, or a
    ``rows`` x ``cols`` array of them when either is > 1."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    if rows == 1 and cols == 1:
        return fig, fig.add_subplot()
    return fig, fig.subplots(rows, cols, squeeze=False)


def banner_text(summary: Mapping[str, Any]) -> str | None:
    """The deviation banner of a run's figures, as the text report shows it (:func:`ahps_core.reports.
    format_protocol`): every deviation from NB201's protocol by name, and the REDUCED budget's line; None for a run
    on the protocol (and for a transfer run, which has no benchmark protocol)."""
    protocol, budget = summary.get("protocol") or {}, summary.get("budget") or {}
    parts = []
    if protocol.get("label") == "deviated":
        names = [d["name"] for d in protocol.get("deviations", [])]
        parts.append(f"protocol=deviated ({', '.join(names) or protocol.get('text')})")
    if budget.get("reduced"):
        parts.append(str(budget.get("text")))
    return " | ".join(parts) or None


def draw_banner(fig: Figure, text: str) -> None:
    """``text`` in red across the top of ``fig`` (wrapped to its width); the constrained layout leaves it room."""
    import textwrap

    width, height = fig.get_size_inches()
    lines = textwrap.wrap(f"!! {text}", width=max(40, int(width * 72 / (8 * 0.68))))
    fig.text(0.5, 0.995, "\n".join(lines), ha="center", va="top", color="red", fontsize=8, fontweight="bold",
             gid=BANNER_GID)
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = fig.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        top = 1 - (len(lines) * 8 * 1.3 / 72 + 0.08) / height
        engine.set(rect=(0, 0, 1, max(top, 0.5)))


def save(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI, banner: str | None = None) -> Path:
    """Write ``fig`` to ``path`` as PNG (parents created) atomically: a reader never sees half a file. With
    ``banner`` (:func:`banner_text`), the banner is drawn on the figure first and its text kept in the PNG's
    ``ahps-banner`` text chunk (so a test, or a reader of the file, can tell a figure of a deviated run)."""
    if banner and not any(t.get_gid() == BANNER_GID for t in fig.texts):
        draw_banner(fig, banner)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"ahps-banner": banner} if banner else None)
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


def plot_pred_vs_measured(report: Mapping[str, Any], path: str | os.PathLike[str], *,
                          banner: str | None = None) -> Path:
    """Draw ``ahps validate``'s report (its ``comparisons``) to ``path`` (PNG). Point labels that would overlap
    another are left out (the report lists every point)."""
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
    if banner:
        draw_banner(fig, banner)
    hidden = drop_overlapping(fig, [t for ax in panels for t in ax.texts])
    if hidden:
        fig.text(0.01, 0.005, f"{hidden} point label(s) left out where they overlapped", fontsize=6, color="grey")
    return save(fig, path, banner=banner)


def renderer_of(fig: Figure) -> Any:
    """An Agg renderer of ``fig`` with its layout done (texts have their drawn boxes): for overlap checks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return canvas.get_renderer()


def drop_overlapping(fig: Figure, texts: Sequence[Any]) -> int:
    """Hide every text of ``texts`` whose drawn box overlaps one kept before it (in order); returns how many."""
    from matplotlib.text import Text

    renderer = renderer_of(fig)
    kept: list[Any] = []
    hidden = 0
    for t in texts:
        box = Text.get_window_extent(t, renderer)  # the text's own box (an annotation's includes its arrow)
        if any(box.overlaps(k) for k in kept):
            t.set_visible(False)
            hidden += 1
        else:
            kept.append(box)
    return hidden


def _plain_log_ticks(ax: Any) -> None:
    """Label only the decades and 2x/5x of log axes spanning less than a few decades (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


# --- rank statistics ------------------------------------------------------------------------------------------


def plot_topk(results: Mapping[str, Sequence[TopK]] | Sequence[TopK], path: str | os.PathLike[str], *,
              title: str = "", banner: str | None = None) -> Path:
    """τ-b (with CI band), Spearman ρ and the noise τ against K; one colour and marker per selection in
    ``results``, each selection's points offset sideways and hollow after the first, so that equal values of two
    selections stay both visible (one never hides the other); the legend sits below the axes."""
    series = results if isinstance(results, Mapping) else {"benchmark": results}
    fig, ax = figure(9, 5.2)
    m = len(series)
    styles = [("tab:blue", "o", "full"), ("tab:purple", "D", "none"), ("tab:green", "^", "none"),
              ("tab:brown", "v", "none")]
    for i, (sel, rows) in enumerate(series.items()):
        color, marker, fill = styles[i % len(styles)]
        x = np.arange(len(rows)) + (0.12 * (i - (m - 1) / 2) if m > 1 else 0.0)
        tau = np.array([r.tau for r in rows])
        lo = np.array([r.tau_ci[0] for r in rows])
        hi = np.array([r.tau_ci[1] for r in rows])
        ax.plot(x, tau, marker=marker, fillstyle=fill, color=color, lw=1.8, ms=7, zorder=3 + i,
                label=f"Kendall τ-b, 95% CI (top set by {sel})")
        ax.fill_between(x, lo, hi, color=color, alpha=0.12, hatch="//" if i else None)
        ax.plot(x, [r.spearman for r in rows], ls="--", marker=marker, fillstyle="none", ms=5, color=color,
                lw=1, label=f"Spearman ρ (by {sel})")
        ax.plot(x, [r.noise_tau for r in rows], ls=":", marker="s", fillstyle="none", ms=5, color=color, lw=1.2,
                label=f"seed-to-seed τ-b, noise floor (by {sel})")
    rows = next(iter(series.values()))
    ax.set_xticks(np.arange(len(rows)), [f"{r.k:g}\nn={r.n}" for r in rows], fontsize="small")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("top K% of architectures")
    ax.set_ylabel("rank correlation")
    ax.set_title(title or "Benchmark vs new ranking within the top K%")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=min(m, 2))
    return save(fig, path, banner=banner)


def plot_gaps(gaps: PairGaps, path: str | os.PathLike[str], *, title: str = "", banner: str | None = None) -> Path:
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
    return save(fig, path, banner=banner)


def plot_scatter(
    bench_acc: Mapping[str, float],
    new_acc: Mapping[str, float],
    path: str | os.PathLike[str],
    *,
    top_k: float = 10,
    title: str = "",
    banner: str | None = None,
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
    return save(fig, path, banner=banner)


__all__ = ["BANNER_GID", "DPI", "banner_text", "draw_banner", "figure", "plot_gaps", "plot_lr_curve",
           "plot_pred_vs_measured", "plot_scatter", "plot_topk", "renderer_of", "save"]

"""The comparison figures people read first: per-architecture accuracy deltas with their CIs and every seed as a
point (:func:`draw_delta`), and the rank change between two rankings as a slope chart (:func:`draw_slope`); with
the transfer pipeline's adapters (:func:`transfer_deltas`, :func:`plot_transfer_delta`, :func:`plot_transfer_ranks`)
and the re-evaluation's (:func:`plot_rank_change`).

Why deltas and not raw accuracy bars: both arms land within a few points of each other, so raw bars either start
at 0 (every difference invisible) or at ~92% (a 0.3-point gap looks large). A delta axis that always includes 0,
in percentage points, with each seed drawn and a 95% t-interval of the mean, shows the size of the effect and its
noise on one honest scale. The raw accuracies stay in the tables (``summary.md``).

Labels: every figure grows with the number of architectures (horizontal layout: one row per architecture), and
names are the cells' display names (:func:`cell_label`: the NB201 digit code for NB201 cells, the arch spec
otherwise), the same as the re-evaluation table's ``cell (code)`` column.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ahps_core.plots import figure, save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The label of the scatter collection that holds one point per (architecture, seed): tests count its points.
SEEDS_LABEL = "one seed"
#: The ``gid`` of every line of a slope chart (one per architecture).
SLOPE_GID = "rank-line"


def cell_label(arch: str, family: str = "") -> str:
    """The one display name of a cell in figures: the NB201 digit code (``3_33_133``) of an NB201 cell, the arch
    spec as given otherwise."""
    if family == "nb201" or arch.startswith("|"):
        from ahps_core.errors import ConfigError
        from ahps_core.specs import nb201_code

        try:
            return nb201_code(arch)
        except (ConfigError, ValueError):
            return arch
    return arch


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """The mean of ``values`` and the half-width of its Student-t ``level`` interval (None below 2 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def draw_delta(items: Sequence[tuple[str, Sequence[float]]], *, title: str, xlabel: str,
               banner: str | None = None) -> Figure:
    """One row per ``(label, per-seed deltas in points)``: each seed a point, the mean with its 95% t-interval
    (>= 2 seeds), a zero line; the x axis always includes 0. The figure grows with the number of rows."""
    n = max(len(items), 1)
    fig, ax = figure(7.5, 1.6 + 0.32 * n)
    xs, ys, all_values = [], [], [0.0]
    for i, (_, values) in enumerate(items):
        k = len(values)
        for j, v in enumerate(values):  # a small vertical spread so equal seeds stay visible
            xs.append(v)
            ys.append(i + (0.0 if k == 1 else 0.24 * (j / (k - 1) - 0.5)))
        all_values += list(values)
        if values:
            mean, half = mean_ci(values)
            color = "tab:blue" if mean > 0 else "tab:red" if mean < 0 else "grey"
            ax.errorbar([mean], [i], xerr=None if half is None else [[half], [half]], fmt="D", color=color,
                        ms=6, capsize=4, lw=1.5, zorder=4)
            if half is not None:
                all_values += [mean - half, mean + half]
    ax.scatter(xs, ys, s=14, color="black", alpha=0.55, zorder=3, label=SEEDS_LABEL)
    ax.axvline(0.0, color="grey", lw=1, ls="--", zorder=1)
    lo, hi = min(all_values), max(all_values)
    pad = max(0.1, 0.08 * (hi - lo))
    ax.set_xlim(min(lo, 0.0) - pad, max(hi, 0.0) + pad)
    ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize="small")
    ax.set_ylim(len(items) - 0.5, -0.5)  # the first row on top
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], ls="none", marker="o", color="black", alpha=0.55, ms=4, label=SEEDS_LABEL),
                       Line2D([], [], ls="none", marker="D", color="tab:blue", label="mean, 95% t-interval")],
              fontsize="x-small", loc="best")
    ax.grid(axis="x", alpha=0.3)
    fig.ahps_banner = banner  # type: ignore[attr-defined]
    return fig


def _spread(ys: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """``ys`` (sorted) moved apart to at least ``gap`` from each other, kept within [lo, hi] where possible."""
    out = list(ys)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + gap)
    over = out[-1] - hi if out else 0.0
    if over > 0:
        out[-1] -= over
        for i in range(len(out) - 2, -1, -1):
            out[i] = min(out[i], out[i + 1] - gap)
    return [max(v, lo - gap * len(out)) for v in out]


def draw_slope(left: Mapping[str, int], right: Mapping[str, int], *, left_title: str, right_title: str,
               title: str, labels: Mapping[str, str] | None = None, max_labels: int = 24,
               banner: str | None = None) -> Figure:
    """Rank under ``left`` vs rank under ``right`` (1 = best, on top): one line per architecture ranked by both,
    green when it rose, red when it fell, grey when unchanged. At most ``max_labels`` names per side: all when
    there are that few, otherwise the best of each ranking and the biggest movers; labels are spread apart so they
    never overlap (a thin leader line joins a moved label to its rank)."""
    archs = sorted(set(left) & set(right), key=lambda a: (left[a], a))
    labels = labels or {}
    n = max(len(archs), 1)
    height = min(12.0, 1.8 + 0.28 * min(n, max_labels) + 0.01 * n)
    fig, ax = figure(7.0, height)
    for a in archs:
        move = left[a] - right[a]
        color = "tab:green" if move > 0 else "tab:red" if move < 0 else "grey"
        ax.plot([0, 1], [left[a], right[a]], color=color, lw=1.6 if n <= 50 else 0.8, alpha=0.8 if n <= 50 else 0.4,
                marker="o", ms=4 if n <= 50 else 1.5, gid=SLOPE_GID)
    if len(archs) <= max_labels:
        shown = set(archs)
    else:
        k = max(1, max_labels // 3)
        best = sorted(archs, key=lambda a: min(left[a], right[a]))[:k]
        movers = sorted(archs, key=lambda a: (-abs(left[a] - right[a]), left[a]))[: max_labels - k]
        shown = set(best) | set(movers)
    top = max([*left.values(), *right.values(), 1])
    ax.set_ylim(top + 0.5, 0.5)
    ax.set_xlim(-0.75, 1.75)
    # the data height of one label line, from the axes' height in inches
    ax_h_in = max(height - 1.4, 0.5)
    gap = (top) * (8 * 1.25 / 72) / ax_h_in
    for x, side, ranks, ha in ((-0.04, "left", left, "right"), (1.04, "right", right, "left")):
        chosen = sorted(shown, key=lambda a: (ranks[a], a))
        ys = _spread([float(ranks[a]) for a in chosen], gap, 1.0, float(top))
        for a, y in zip(chosen, ys, strict=True):
            name = labels.get(a, a)
            ax.annotate(f"{name} ({ranks[a]})" if side == "right" else f"({ranks[a]}) {name}",
                        xy=(0 if side == "left" else 1, ranks[a]), xytext=(x, y), textcoords="data",
                        ha=ha, va="center", fontsize=8,
                        arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if abs(y - ranks[a]) > gap / 2
                        else None)
    ax.set_xticks([0, 1], [left_title, right_title])
    ax.set_yticks([])
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    note = "" if len(archs) <= max_labels else f" (labels: the best and the biggest movers of {len(archs)})"
    ax.set_title(f"{title}{note}", fontsize=10)
    fig.ahps_banner = banner  # type: ignore[attr-defined]
    return fig


def _finish(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    return save(fig, path, dpi=dpi, banner=getattr(fig, "ahps_banner", None))


# --- the transfer comparison ------------------------------------------------------------------------------------


def transfer_deltas(rows: Sequence[Mapping[str, Any]], family: str = "") -> list[tuple[str, list[float]]]:
    """Per architecture with both arms: the per-seed deltas (autoscaled - fixed, points), seeds paired by number;
    a summary without per-seed accuracies gives its mean delta as one point."""
    items = []
    for r in rows:
        auto, fixed = r.get("autoscaled_acc_per_seed") or {}, r.get("fixed_acc_per_seed") or {}
        seeds = sorted(set(auto) & set(fixed), key=str)
        if seeds:
            items.append((cell_label(r["arch"], family), [100 * (auto[s] - fixed[s]) for s in seeds]))
        elif r.get("delta") is not None:
            items.append((cell_label(r["arch"], family), [100 * r["delta"]]))
    return items


def plot_transfer_delta(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], family: str,
                        dataset: str, *, banner: str | None = None) -> Path:
    """The transfer comparison's headline figure: autoscaled - fixed accuracy per architecture (points)."""
    fig = draw_delta(transfer_deltas(rows, family), banner=banner,
                     title=f"Autoscaled - fixed accuracy per architecture: {family} on {dataset}",
                     xlabel="accuracy delta, autoscaled - fixed (percentage points; > 0: autoscaling helped)")
    return _finish(fig, path)


def plot_transfer_ranks(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], family: str,
                        dataset: str, *, banner: str | None = None) -> Path:
    """Rank under the fixed recipe vs rank under the autoscaled one, per architecture."""
    both = [r for r in rows if r.get("rank_fixed") is not None and r.get("rank_autoscaled") is not None]
    fig = draw_slope({r["arch"]: r["rank_fixed"] for r in both}, {r["arch"]: r["rank_autoscaled"] for r in both},
                     left_title="rank, fixed recipe", right_title="rank, autoscaled",
                     labels={r["arch"]: cell_label(r["arch"], family) for r in both}, banner=banner,
                     title=f"Did the ranking change? {family} on {dataset} (1 = best)")
    return _finish(fig, path)


def plot_lrs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], path: str | os.PathLike[str],
             family: str, *, banner: str | None = None) -> Path:
    """The transferred LR of every architecture (one row each, log axis) against the base and fixed LRs."""
    n = max(len(rows), 1)
    fig, ax = figure(7.5, 1.6 + 0.3 * n)
    y = list(range(len(rows)))
    ax.barh(y, [r.get("predicted_lr") or 0.0 for r in rows], 0.6, color="tab:blue", label="transferred LR (autoscaled)")
    if plan.get("base_lr"):
        ax.axvline(plan["base_lr"], color="gray", ls="--", lw=1, label=f"base LR {plan['base_lr']:.3g} (proxy)")
    if plan.get("fixed_lr") and plan.get("fixed_lr") != plan.get("base_lr"):
        ax.axvline(plan["fixed_lr"], color="tab:orange", ls=":", lw=1, label=f"fixed LR {plan['fixed_lr']:.3g}")
    if any(r.get("predicted_lr") for r in rows):
        ax.set_xscale("log")
    ax.set_yticks(y, [cell_label(r["arch"], family) for r in rows], fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("learning rate")
    ax.set_title(f"Predicted LR per architecture ({family}, rule {plan.get('rule')}, {plan.get('convention')})",
                 fontsize=10)
    ax.legend(fontsize="x-small")
    return save(fig, path, dpi=100, banner=banner)


# --- the re-evaluation --------------------------------------------------------------------------------------


def plot_rank_change(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], dataset: str, *,
                     banner: str | None = None) -> Path:
    """Benchmark rank vs new rank of every re-evaluated cell (labels: digit codes)."""
    both = [r for r in rows if r.get("rank_benchmark") is not None and r.get("rank_new") is not None]
    fig = draw_slope({r["arch"]: r["rank_benchmark"] for r in both}, {r["arch"]: r["rank_new"] for r in both},
                     left_title="benchmark rank", right_title="new rank (autoscaled)",
                     labels={r["arch"]: str(r.get("code") or cell_label(r["arch"], "nb201")) for r in both},
                     banner=banner, title=f"Benchmark vs new ranking on {dataset} (1 = best)")
    return _finish(fig, path)


__all__ = ["SEEDS_LABEL", "SLOPE_GID", "cell_label", "draw_delta", "draw_slope", "mean_ci", "plot_lrs",
           "plot_rank_change", "plot_transfer_delta", "plot_transfer_ranks", "transfer_deltas"]

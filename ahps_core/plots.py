"""Figures (matplotlib with the Agg backend, imported only when a figure is drawn).

* :func:`plot_lr_curve`: the LR-search curve (mean final training loss vs LR, every seed, the best LR, the
  diverged LRs);
* :func:`plot_pred_vs_measured`: predicted vs measured maximal LRs of ``ahps validate`` on log-log axes, one
  panel per (rule, convention), with the identity line and the fitted line (like Fig. 2 of Chen et al. 2024).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_lr_curve(result: Any, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draw an :class:`~ahps_core.lr_search.LRSearchResult` (or its ``to_dict()``) to ``path`` (PNG)."""
    data: Mapping[str, Any] = result if isinstance(result, Mapping) else result.to_dict()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
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
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_pred_vs_measured(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Draw ``ahps validate``'s report (its ``comparisons``) to ``path`` (PNG)."""
    plt = _pyplot()
    comps = [c for c in report["comparisons"] if c["points"]]
    n = max(len(comps), 1)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), squeeze=False)
    for ax, comp in zip(axes.flat, comps):
        xs = [p["predicted_lr"] for p in comp["points"]]
        ys = [p["measured_lr"] for p in comp["points"]]
        ax.scatter(xs, ys, color="tab:blue", zorder=3)
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
        ax.set_title(f"{comp['rule']} / {comp['convention']}: {r_text}", fontsize=9)
        ax.set_xlabel("predicted max LR (transferred)")
        ax.set_ylabel("measured max LR (grid search)")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(comps):]:
        ax.axis("off")
    fig.suptitle(f"{report.get('family')} on {report.get('dataset')}: base LR {report['base']['lr']:.3g}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def _plain_log_ticks(ax) -> None:
    """Label only the decades and 2x/5x of log axes spanning less than a few decades (no crowded minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def _save(fig, plt, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# --- the transfer comparison (lead: merge with the shared figure helpers) ---


def _wide_figure(width: float = 7.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.2), layout="constrained")
    return fig, fig.add_subplot()


def _short(arch: str, n: int = 18) -> str:
    return arch if len(arch) <= n else arch[: n - 1] + "…"


def plot_accuracy(rows: Sequence[Mapping[str, Any]], path: Path, family: str, dataset: str) -> Path:
    """Final accuracy of every architecture under both arms (a transfer run's comparison)."""
    fig, ax = _wide_figure(max(6.0, 1.1 * len(rows) + 2))
    x = list(range(len(rows)))
    w = 0.38
    shown: list[float] = []
    for off, arm, color in ((-w / 2, "autoscaled", "tab:blue"), (w / 2, "fixed", "tab:orange")):
        ys = [100 * (r.get(f"{arm}_acc") or 0.0) for r in rows]
        shown += ys
        bars = ax.bar([i + off for i in x], ys, w, label=arm, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small")
    if shown:  # the differences between recipes are a few points: zoom on them (the axis says where it starts)
        lo, hi = min(shown), max(shown)
        pad = max(1.0, 0.15 * (hi - lo))
        ax.set_ylim(max(0.0, lo - 3 * pad), min(100.0, hi + pad))
    ax.set_xticks(x, [_short(r["arch"]) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("final eval accuracy (%)")
    ax.set_title(f"Autoscaled vs fixed recipe: {family} on {dataset}")
    ax.legend(fontsize="small")
    return _save_png(fig, path)


def plot_lrs(rows: Sequence[Mapping[str, Any]], plan: Mapping[str, Any], path: Path, family: str) -> Path:
    """The transferred LR of every architecture against the base and fixed LRs."""
    fig, ax = _wide_figure(max(6.0, 1.0 * len(rows) + 2))
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
    return _save_png(fig, path)


def _save_png(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path

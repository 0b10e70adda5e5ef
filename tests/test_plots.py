"""The comparison figures: deltas with 0 on the axis and every seed drawn, slope charts with one line per
architecture, tick labels that do not overlap at 24 targets, the deviation banner on every figure of a deviated run
(and on none otherwise), top-K series that do not hide each other."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ahps_core import plots, plots_compare
from ahps_core.protocol import budget_info

SEEDS = ["0", "1", "2"]


def _rows(n: int, *, offset: float = 0.003, seeds=SEEDS) -> list[dict]:
    """Transfer summary rows with both arms near 92-95 % (deltas of a few tenths of a point)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        fixed = {s: 0.92 + 0.001 * i + 0.002 * rng.random() for s in seeds}
        auto = {s: fixed[s] + offset + 0.002 * (rng.random() - 0.5) for s in seeds}
        rows.append({"arch": f"mlp_{i:02d}_w{64 + 8 * i}", "predicted_lr": 0.01 * (1 + i % 5),
                     "autoscaled_acc": float(np.mean(list(auto.values()))),
                     "fixed_acc": float(np.mean(list(fixed.values()))),
                     "autoscaled_acc_per_seed": auto, "fixed_acc_per_seed": fixed})
        rows[-1]["delta"] = rows[-1]["autoscaled_acc"] - rows[-1]["fixed_acc"]
    for arm in ("autoscaled", "fixed"):
        order = sorted(rows, key=lambda r: -r[f"{arm}_acc"])
        for rank, r in enumerate(order, 1):
            r[f"rank_{arm}"] = rank
    return rows


def _seed_points(fig) -> int:
    ax = fig.axes[0]
    return sum(len(c.get_offsets()) for c in ax.collections if c.get_label() == plots_compare.SEEDS_LABEL)


def test_delta_axis_includes_zero_even_when_every_delta_is_positive():
    fig = plots_compare.draw_delta(plots_compare.transfer_deltas(_rows(5, offset=0.02)), title="t", xlabel="x")
    lo, hi = fig.axes[0].get_xlim()
    assert lo < 0 < hi
    assert min(v for _, vs in plots_compare.transfer_deltas(_rows(5, offset=0.02)) for v in vs) > 1.0  # points


@pytest.mark.parametrize(("n_archs", "seeds"), [(4, ["0"]), (6, SEEDS), (24, ["0", "1"])])
def test_every_seed_is_one_point(n_archs, seeds):
    fig = plots_compare.draw_delta(plots_compare.transfer_deltas(_rows(n_archs, seeds=seeds)), title="t", xlabel="x")
    assert _seed_points(fig) == n_archs * len(seeds)


def test_mean_ci_is_the_t_interval():
    from scipy import stats

    values = [0.1, 0.4, 0.3]
    mean, half = plots_compare.mean_ci(values)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values))
    assert (mean - half, mean + half) == pytest.approx((lo, hi))
    assert plots_compare.mean_ci([0.2]) == (0.2, None)


def test_slope_chart_draws_one_line_per_arch():
    rows = _rows(7)
    fig = plots_compare.draw_slope({r["arch"]: r["rank_fixed"] for r in rows},
                                   {r["arch"]: r["rank_autoscaled"] for r in rows},
                                   left_title="fixed", right_title="auto", title="t")
    lines = [ln for ln in fig.axes[0].lines if ln.get_gid() == plots_compare.SLOPE_GID]
    assert len(lines) == 7
    assert sorted(tuple(ln.get_ydata()) for ln in lines) == sorted(
        (r["rank_fixed"], r["rank_autoscaled"]) for r in rows)


def _boxes_overlap(texts, renderer) -> list[tuple[str, str]]:
    from matplotlib.text import Text

    # Text's own extent: an annotation's would include its leader line
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def test_labels_do_not_overlap_at_24_targets(tmp_path):
    rows = _rows(24)
    figs = {
        "delta": plots_compare.draw_delta(plots_compare.transfer_deltas(rows), title="t", xlabel="x"),
        "slope": plots_compare.draw_slope({r["arch"]: r["rank_fixed"] for r in rows},
                                          {r["arch"]: r["rank_autoscaled"] for r in rows},
                                          left_title="fixed", right_title="auto", title="t"),
    }
    for name, fig in figs.items():
        renderer = plots.renderer_of(fig)
        ax = fig.axes[0]
        ticks = ax.get_yticklabels() if name == "delta" else ax.texts
        assert len([t for t in ticks if t.get_text()]) == (24 if name == "delta" else 48), name  # slope: 2 sides
        assert _boxes_overlap(ticks, renderer) == [], name


def test_slope_chart_of_many_cells_labels_a_few_without_overlap():
    rng = np.random.default_rng(1)
    left = {f"c{i}": i + 1 for i in range(300)}
    new = rng.permutation(300)
    right = {f"c{i}": int(new[i]) + 1 for i in range(300)}
    fig = plots_compare.draw_slope(left, right, left_title="b", right_title="n", title="t", max_labels=24)
    renderer = plots.renderer_of(fig)
    texts = fig.axes[0].texts
    assert 0 < len(texts) <= 48
    assert _boxes_overlap(texts, renderer) == []
    assert len([ln for ln in fig.axes[0].lines if ln.get_gid() == plots_compare.SLOPE_GID]) == 300


def _banner_of(path) -> str | None:
    with Image.open(path) as im:
        return im.info.get(plots.BANNER_GID)


def test_banner_text_follows_the_protocol_and_budget():
    reduced = budget_info(C=8, N=1, epochs=1)
    assert plots.banner_text({"budget": budget_info(C=16, N=5, epochs=200)}) is None
    assert plots.banner_text({"protocol": {"label": "nb201"}, "budget": {}}) is None
    text = plots.banner_text({"protocol": {"label": "deviated", "deviations": [{"name": "budget", "text": "x"},
                                                                              {"name": "seeds", "text": "y"}]},
                              "budget": reduced})
    assert text is not None and "protocol=deviated (budget, seeds)" in text and "REDUCED" in text


def test_banner_is_drawn_at_the_top_in_red():
    fig = plots_compare.draw_delta([("a", [0.1, 0.2])], title="t", xlabel="x")
    plots.draw_banner(fig, "REDUCED network/budget: " + "a long reason; " * 12)
    renderer = plots.renderer_of(fig)
    banner = [t for t in fig.texts if t.get_gid() == plots.BANNER_GID]
    assert len(banner) == 1 and banner[0].get_color() == "red"
    box, title = banner[0].get_window_extent(renderer), fig.axes[0].title.get_window_extent(renderer)
    assert box.y0 >= title.y1 - 1  # above the axes' title, not on it
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width + 1  # wrapped to the figure's width


@pytest.mark.parametrize("deviated", [True, False])
def test_banner_on_every_figure_of_a_deviated_reevaluation(tmp_path, deviated):
    from ahps_core.ranking import ranking_report

    budget = budget_info(C=8, N=1, epochs=1) if deviated else budget_info(C=16, N=5, epochs=200)
    banner = plots.banner_text({"budget": budget})
    rng = np.random.default_rng(2)
    bench = {f"c{i}": 80 + rng.random() * 10 for i in range(12)}
    new = {a: v + rng.normal() for a, v in bench.items()}
    report = ranking_report(bench, new, dataset="cifar10", ks=(50, 100), n_boot=20, out_dir=tmp_path, banner=banner)
    rows = [{"arch": a, "code": a, "rank_benchmark": i + 1, "rank_new": 12 - i} for i, a in enumerate(bench)]
    paths = [*report["plots"].values(), plots_compare.plot_rank_change(rows, tmp_path / "rc.png", "cifar10",
                                                                        banner=banner)]
    assert len(paths) == 4
    for path in paths:
        assert _banner_of(path) == (budget["text"] if deviated else None), path


def test_transfer_figures_carry_a_given_banner(tmp_path):
    rows = _rows(3)
    plan = {"base_lr": 0.01, "fixed_lr": 0.02, "rule": "r", "convention": "c"}
    paths = [plots_compare.plot_transfer_delta(rows, tmp_path / "d.png", "mlp", "digits", banner="REDUCED x"),
             plots_compare.plot_transfer_ranks(rows, tmp_path / "r.png", "mlp", "digits", banner="REDUCED x"),
             plots_compare.plot_lrs(rows, plan, tmp_path / "l.png", "mlp", banner="REDUCED x")]
    assert [_banner_of(p) for p in paths] == ["REDUCED x"] * 3
    assert _banner_of(plots_compare.plot_transfer_delta(rows, tmp_path / "d2.png", "mlp", "digits")) is None


def test_topk_series_do_not_hide_each_other(tmp_path, monkeypatch):
    import matplotlib.figure

    from ahps_core.ranking import topk_correlations

    rng = np.random.default_rng(3)
    bench = {f"c{i}": float(i) for i in range(20)}
    new = {a: v + rng.normal() for a, v in bench.items()}
    same = topk_correlations(bench, new, ks=(25, 50, 100), n_boot=10)
    captured: list = []
    orig = matplotlib.figure.Figure.savefig

    def keep(self, *a, **k):
        captured.append(self)
        return orig(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    # identical values under both selections: the worst case for one series hiding the other
    assert plots.plot_topk({"benchmark": same, "new": same}, tmp_path / "topk.png").exists()
    ax = captured[0].axes[0]
    taus = [ln for ln in ax.lines if str(ln.get_label()).startswith("Kendall")]
    assert len(taus) == 2
    assert not np.allclose(taus[0].get_xdata(), taus[1].get_xdata())  # offset sideways
    assert taus[0].get_marker() != taus[1].get_marker() and taus[0].get_color() != taus[1].get_color()
    legend = ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == 6


def test_validate_point_labels_do_not_overlap_at_24_targets(tmp_path, monkeypatch):
    import matplotlib.figure
    from matplotlib.text import Text

    captured: list = []
    orig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (captured.append(self),
                                                                                    orig(self, *a, **k))[1])
    # 24 targets whose predicted and measured LRs crowd into half a decade
    points = [{"arch": f"2_{i:02d}_{i:03d}", "predicted_lr": 0.01 * (1 + 0.02 * i),
               "measured_lr": 0.01 * (1 + 0.021 * i), "measured_ci": None} for i in range(24)]
    report = {"comparisons": [{"rule": "r", "convention": "c", "points": points, "slope": 1.0, "intercept": 0.0,
                               "pearson_log": 0.9, "n": 24}], "base": {"lr": 0.01}, "family": "mlp",
              "dataset": "digits"}
    plots.plot_pred_vs_measured(report, tmp_path / "v.png")
    fig = captured[0]
    renderer = plots.renderer_of(fig)
    texts = [t for t in fig.axes[0].texts if t.get_visible()]
    assert 0 < len(texts) < 24  # crowded: some labels left out ...
    boxes = [Text.get_window_extent(t, renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])  # ... none overlaps
    assert any("left out" in t.get_text() for t in fig.texts)

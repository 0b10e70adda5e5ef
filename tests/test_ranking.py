"""Rank statistics: τ-b against scipy and by hand, top-K selection, noise floor, bootstrap, degenerate sets, plots."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
from nb201_fixture import FIXTURE_DIR
from scipy import stats

from ahps_core.benchmarks import DATASETS, open_benchmark
from ahps_core.errors import ConfigError
from ahps_core.plots import plot_gaps, plot_scatter, plot_topk
from ahps_core.ranking import (
    accuracy_delta,
    pairwise_gaps,
    ranking_report,
    top_set,
    topk_correlations,
)

pytestmark = pytest.mark.filterwarnings("error")  # degenerate inputs must not even warn


def synthetic(n=60, seed=0):
    """Benchmark accuracies as a 3-seed mean, and a noisy "new" accuracy; rounded to 0.01 (ties happen)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(70, 5, n)
    archs = [f"a{i:03d}" for i in range(n)]
    seeds = {a: {s: round(float(t + rng.normal(0, 1)), 2) for s in (777, 888, 999)}
             for a, t in zip(archs, true, strict=True)}
    bench = {a: round(float(np.mean(list(v.values()))), 2) for a, v in seeds.items()}
    new = {a: round(float(t + rng.normal(0.5, 1.5)), 2) for a, t in zip(archs, true, strict=True)}
    return bench, new, seeds


def test_tau_b_by_hand_and_against_scipy_with_ties():
    bench, new = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, {"a": 1, "b": 3, "c": 2, "d": 5, "e": 4}
    one = topk_correlations(bench, new, ks=(100,), n_boot=0)
    assert one[0].tau == pytest.approx(0.6)  # 10 pairs, 2 discordant: (8 - 2) / 10
    assert one[0].spearman == pytest.approx(0.8)  # 1 - 6 * 4 / (5 * 24)
    bench, new, _ = synthetic()
    bench["a001"] = bench["a002"]  # force ties in both
    new["a003"] = new["a004"]
    (res,) = topk_correlations(bench, new, ks=(100,), n_boot=0)
    keys = sorted(bench)
    b, y = [bench[a] for a in keys], [new[a] for a in keys]
    assert res.n == 60
    assert res.tau == stats.kendalltau(b, y, variant="b").statistic
    assert res.spearman == stats.spearmanr(b, y).statistic
    assert res.tau != stats.kendalltau(b, y, variant="c").statistic  # the variant matters with ties


def test_top_k_sizes_follow_ceil():
    bench, new, _ = synthetic(n=37)
    sizes = [t.n for t in topk_correlations(bench, new, n_boot=0)]
    assert sizes == [math.ceil(37 * k / 100) for k in (100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1)]


def test_selection_by_benchmark_and_by_new_differ():
    # the benchmark's best three (a, b, c) keep their order under the new scheme; the new scheme's best three
    # (d, e, f) are ranked in reverse by the benchmark
    bench = {"a": 90, "b": 89, "c": 88, "d": 70, "e": 71, "f": 72, "g": 50, "h": 49, "i": 48, "j": 47}
    new = {"a": 80, "b": 79, "c": 78, "d": 95, "e": 94, "f": 93, "g": 50, "h": 49, "i": 48, "j": 47}
    assert top_set(bench, 30) == ["a", "b", "c"]
    assert top_set(new, 30) == ["d", "e", "f"]
    (by_bench,) = topk_correlations(bench, new, ks=(30,), n_boot=0)
    (by_new,) = topk_correlations(bench, new, ks=(30,), select_by="new", n_boot=0)
    assert (by_bench.tau, by_new.tau) == (pytest.approx(1.0), pytest.approx(-1.0))


def test_noise_floor_on_the_fixture_per_seed_accuracies():
    records = open_benchmark(FIXTURE_DIR)
    seeds = {f"{records.index_of(a)}@{ds}": v for ds in DATASETS for a, v in records.seed_accuracies(ds).items()}
    bench = {a: float(np.mean(list(v.values()))) for a, v in seeds.items()}
    res = topk_correlations(bench, bench, ks=(100, 20), bench_seeds=seeds, n_boot=0)
    # 12 (architecture, dataset) entries, 66 pairs; one pair (0@cifar10 vs 284@cifar10-valid) flips between
    # seeds 777 and 888 and between 888 and 999: tau = 64/66 for those two seed pairs, 1 for 777-999
    assert res[0].noise_tau == pytest.approx((32 / 33 + 1 + 32 / 33) / 3)
    pairs = [stats.kendalltau(*([seeds[a][s] for a in sorted(seeds)] for s in pair), variant="b").statistic
             for pair in combinations((777, 888, 999), 2)]
    assert res[0].noise_tau == pytest.approx(np.mean(pairs))
    assert res[0].tau == pytest.approx(1.0)
    assert res[1].n == 3 and res[1].noise_tau == pytest.approx(1.0)  # the best 3 never swap


def test_missing_seeds_and_no_seeds_are_noted():
    bench, new, seeds = synthetic()
    del seeds["a005"][999]
    (res,) = topk_correlations(bench, new, ks=(100,), bench_seeds=seeds, n_boot=0)
    assert not math.isnan(res.noise_tau) and "1 architecture(s) lack some benchmark seeds" in res.note
    from_json = json.loads(json.dumps(seeds))  # seed keys become strings
    assert topk_correlations(bench, new, ks=(100,), bench_seeds=from_json, n_boot=0) == [res]
    (res,) = topk_correlations(bench, new, ks=(100,), n_boot=0)
    assert math.isnan(res.noise_tau) and "no per-seed" in res.note


def test_bootstrap_cis_contain_the_estimate_and_are_reproducible():
    bench, new, seeds = synthetic()
    run = dict(ks=(100, 50), bench_seeds=seeds, n_boot=300)
    a = topk_correlations(bench, new, seed=1, **run)
    assert a == topk_correlations(bench, new, seed=1, **run)
    assert a != topk_correlations(bench, new, seed=2, **run)
    for t in a:
        assert t.tau_ci[0] <= t.tau <= t.tau_ci[1] and t.tau_ci[0] < t.tau_ci[1]
        assert t.spearman_ci[0] <= t.spearman <= t.spearman_ci[1]
        assert t.noise_tau_ci[0] <= t.noise_tau <= t.noise_tau_ci[1]
    # adding a K does not change the others' intervals (per-K streams)
    assert topk_correlations(bench, new, seed=1, **{**run, "ks": (50,)})[0] == a[1]
    assert accuracy_delta(bench, new, 300, 1) == accuracy_delta(bench, new, 300, 1)


def test_degenerate_sets_give_nan_and_a_note():
    two = topk_correlations({"a": 1, "b": 2}, {"a": 2, "b": 1}, ks=(100,), n_boot=50)[0]
    assert two.n == 2 and math.isnan(two.tau) and math.isnan(two.tau_ci[0]) and "fewer than 3" in two.note
    const = {"a": 5, "b": 5, "c": 5, "d": 5}
    flat = topk_correlations(const, {"a": 1, "b": 2, "c": 3, "d": 4}, ks=(100,), n_boot=50)[0]
    assert math.isnan(flat.tau) and math.isnan(flat.spearman) and "constant benchmark" in flat.note
    none = topk_correlations({"a": 1}, {"b": 1}, ks=(100, 1), n_boot=50)
    assert [t.n for t in none] == [0, 0] and all(math.isnan(t.tau) for t in none)
    empty = accuracy_delta({"a": 1}, {"b": 2})
    assert empty.n == 0 and all(math.isnan(x) for x in empty[:3])
    assert accuracy_delta({"a": 1}, {"a": 3}).mean == 2 and math.isnan(accuracy_delta({"a": 1}, {"a": 3}).ci_low)
    gaps = pairwise_gaps({"a": 1}, {"a": 2})
    assert gaps.n_pairs == 0 and math.isnan(gaps.ratio) and "fewer than 2" in gaps.note
    same = pairwise_gaps({"a": 1, "b": 1}, {"a": 2, "b": 3})
    assert math.isnan(same.ratio) and "undefined" in same.note


def test_accuracy_delta():
    bench, new, _ = synthetic()
    d = accuracy_delta(bench, new, n_boot=500, seed=0)
    diffs = np.array([new[a] - bench[a] for a in bench])
    assert d.mean == pytest.approx(diffs.mean()) and d.n == 60
    assert d.ci_low < d.mean < d.ci_high
    shifted = accuracy_delta(bench, {a: v + 1.25 for a, v in bench.items()}, n_boot=100)
    assert shifted == pytest.approx((1.25, 1.25, 1.25, 60))


def test_pairwise_gaps_exact_and_sampled():
    bench, new, _ = synthetic(n=40)
    g = pairwise_gaps(bench, new, n_boot=200)
    keys = sorted(bench)
    brute_b = [abs(bench[i] - bench[j]) for i, j in combinations(keys, 2)]
    brute_y = [abs(new[i] - new[j]) for i, j in combinations(keys, 2)]
    assert (g.n, g.n_pairs, g.sampled) == (40, 780, False)
    assert g.mean_bench == pytest.approx(np.mean(brute_b)) and g.mean_new == pytest.approx(np.mean(brute_y))
    assert g.ratio == pytest.approx(np.mean(brute_y) / np.mean(brute_b))
    assert g.ratio_ci[0] < g.ratio < g.ratio_ci[1]
    assert g.frac_shrunk == pytest.approx(np.mean(np.array(brute_y) < np.array(brute_b)))
    halved = pairwise_gaps(bench, {a: v / 2 for a, v in bench.items()}, n_boot=0)
    assert halved.ratio == pytest.approx(0.5) and halved.frac_shrunk == 1.0
    s = pairwise_gaps(bench, new, n_boot=0, max_pairs=100)
    assert s.sampled and s.bench_gaps.size == 100 and s.mean_bench == g.mean_bench


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"select_by": "both"}, "accepted are benchmark, new"),
        ({"ks": (0,)}, r"each in \(0, 100\]"),
        ({"n_boot": -1}, "non-negative"),
        ({"ci": 1.5}, "confidence level"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        topk_correlations({"a": 1}, {"a": 1}, **kwargs)


def test_non_finite_accuracies_are_refused():
    with pytest.raises(ConfigError, match="non-finite accuracy.*'b'"):
        accuracy_delta({"a": 1, "b": float("nan")}, {"a": 1, "b": 2})


def is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")


def test_plots_and_report(tmp_path):
    bench, new, seeds = synthetic(n=30)
    res = topk_correlations(bench, new, ks=(100, 50, 10), bench_seeds=seeds, n_boot=50)
    assert is_png(plot_topk(res, tmp_path / "t.png"))
    assert is_png(plot_gaps(pairwise_gaps(bench, new, n_boot=0), tmp_path / "sub" / "g.png"))
    assert is_png(plot_scatter(bench, new, tmp_path / "s.png"))
    assert is_png(plot_gaps(pairwise_gaps({"a": 1}, {"a": 1}), tmp_path / "empty.png"))  # degenerate: still a plot
    rep = ranking_report(
        bench, new, bench_seeds=seeds, dataset="cifar100", ks=(100, 10, 1), n_boot=30, out_dir=tmp_path / "r"
    )
    rep = json.loads(json.dumps(rep, allow_nan=False))
    assert rep["n_common"] == 30 and set(rep["topk"]) == {"benchmark", "new"}
    assert [t["n"] for t in rep["topk"]["benchmark"]] == [30, 3, 1]
    assert rep["topk"]["benchmark"][2]["tau"] is None and "fewer than 3" in rep["topk"]["benchmark"][2]["note"]
    assert rep["delta"]["n"] == 30 and rep["gaps"]["n_pairs"] == 435
    assert sorted(rep["plots"]) == ["gaps", "scatter", "topk"]
    for p in rep["plots"].values():
        assert p.startswith(str(tmp_path / "r" / "cifar100_")) and is_png(tmp_path / "r" / p.rsplit("/", 1)[1])


def test_bootstrap_correlations_equal_scipy_with_ties():
    from ahps_core.ranking import bootstrap_correlations

    rng = np.random.default_rng(7)
    for n in (3, 5, 17, 60):
        b = rng.integers(0, 6, size=n).astype(float)  # many ties on both sides
        y = b + rng.integers(-2, 3, size=n)
        idx = rng.integers(0, n, size=(40, n))
        idx[0] = 0  # a resample of one architecture repeated: constant, undefined
        tau, rho = bootstrap_correlations(b, y, idx)
        assert np.isnan(tau[0]) and np.isnan(rho[0])
        for r in range(1, 40):
            bb, yy = b[idx[r]], y[idx[r]]
            if np.ptp(bb) == 0 or np.ptp(yy) == 0:  # scipy warns and returns NaN: we return NaN quietly
                assert np.isnan(tau[r]) and np.isnan(rho[r])
                continue
            assert tau[r] == pytest.approx(stats.kendalltau(bb, yy, variant="b").statistic, abs=1e-12, nan_ok=True)
            assert rho[r] == pytest.approx(stats.spearmanr(bb, yy).statistic, abs=1e-12, nan_ok=True)

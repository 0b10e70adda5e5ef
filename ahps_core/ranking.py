"""Rank statistics between benchmark accuracies and re-trained ("new") accuracies.

Protocol (Chen, Wu, Wang, Hanin, ICLR 2024, §4.3, Fig. 4 and Appendix E.4; docs/conventions.md §1.6 and A9):

* **Top-K% sets**, K = 100, 90, ..., 10, 5, 1 (:data:`DEFAULT_KS`): the ``ceil(N * K / 100)`` best of the N
  architectures present in both inputs. The paper does not say which accuracy defines "best" (A9):
  ``select_by="benchmark"`` (default: the set is fixed by the benchmark, independent of the new runs) or
  ``"new"``; :func:`ranking_report` gives both. Ties at the cut are broken by architecture key.
* **Kendall τ-b** (``scipy.stats.kendalltau(variant="b")``; the paper names "Kendall-Tau", τ-b is the variant
  that corrects for ties, which benchmark accuracies at 0.01% resolution have) and **Spearman ρ**
  (``scipy.stats.spearmanr``) between the benchmark accuracy (NB201: mean over seeds 777/888/999) and the new
  accuracy, within each set.
* **Noise floor** (Appendix E.4): on the same set, τ-b between the benchmark's own seeds, averaged over seed
  pairs. It compares single seeds while the main τ uses a 3-seed mean, so it is a conservative floor.
* **Bootstrap CIs**: percentile intervals over ``n_boot`` resamples of the *architectures* of a set, with
  replacement, drawn by ``numpy.random.default_rng`` seeded per statistic and K (adding a K does not change
  the others). ``scipy.stats.bootstrap`` was not used: its default BCa interval fails or warns on resamples
  whose statistic is undefined (a resample of a small set can be constant), and it would draw separate
  resamples per statistic; here τ, ρ and the noise τ of one K share the same resamples and undefined
  resamples are dropped and counted in the note.
* **Pairwise gaps** (Fig. 4, right column, "pairwise accuracy gaps between architectures shrink"; the
  statistic is our reading [I]): ``|acc_i - acc_j|`` over pairs of architectures, under the benchmark and
  under the new scheme; the exact mean over all pairs, the ratio new/benchmark with a bootstrap CI, and the
  share of pairs whose gap shrank.
* **Mean accuracy delta** (§4.3: +0.44 / +1.24 / +2.09 points on CIFAR-10 / CIFAR-100 / ImageNet16-120):
  mean of ``new - benchmark`` with a bootstrap CI.

Degenerate inputs (fewer than 3 architectures, constant accuracies) give NaN and a note, never an exception.
:func:`ranking_report` returns strict JSON (NaN as ``null``); its figures are drawn by :mod:`ahps_core.plots`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import stats

from ahps_core import plots
from ahps_core.checks import check_choice, finite_or_none
from ahps_core.errors import ConfigError

DEFAULT_KS: tuple[float, ...] = (100, 90, 80, 70, 60, 50, 40, 30, 20, 10, 5, 1)
SELECT_BY = ("benchmark", "new")
NAN_CI = (math.nan, math.nan)


@dataclass(frozen=True)
class TopK:
    """Rank agreement within the top ``k`` % (``n`` architectures). CIs are ``(low, high)``."""

    k: float
    n: int
    tau: float
    tau_ci: tuple[float, float]
    spearman: float
    spearman_ci: tuple[float, float]
    noise_tau: float
    noise_tau_ci: tuple[float, float]
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "n": self.n,
            "tau": finite_or_none(self.tau),
            "tau_ci": [finite_or_none(x) for x in self.tau_ci],
            "spearman": finite_or_none(self.spearman),
            "spearman_ci": [finite_or_none(x) for x in self.spearman_ci],
            "noise_tau": finite_or_none(self.noise_tau),
            "noise_tau_ci": [finite_or_none(x) for x in self.noise_tau_ci],
            "note": self.note,
        }


class Delta(NamedTuple):
    """Mean of ``new - benchmark`` over ``n`` architectures, with its bootstrap CI."""

    mean: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class PairGaps:
    """Pairwise accuracy gaps ``|acc_i - acc_j|``; ``bench_gaps``/``new_gaps`` hold the pairs used for plots
    and ``frac_shrunk`` (all pairs, or ``max_pairs`` drawn at random when ``sampled``); the means are exact
    over all pairs."""

    n: int
    n_pairs: int
    sampled: bool
    bench_gaps: np.ndarray = field(repr=False)
    new_gaps: np.ndarray = field(repr=False)
    mean_bench: float
    mean_new: float
    ratio: float
    ratio_ci: tuple[float, float]
    frac_shrunk: float
    note: str = ""

    def to_dict(self) -> dict:
        def quantiles(g: np.ndarray) -> dict:
            if g.size == 0:
                return {"p10": None, "median": None, "p90": None}
            p10, med, p90 = np.percentile(g, [10, 50, 90])
            return {"p10": float(p10), "median": float(med), "p90": float(p90)}

        return {
            "n": self.n,
            "n_pairs": self.n_pairs,
            "pairs_sampled": self.sampled,
            "mean_bench": finite_or_none(self.mean_bench),
            "mean_new": finite_or_none(self.mean_new),
            "ratio_new_over_bench": finite_or_none(self.ratio),
            "ratio_ci": [finite_or_none(x) for x in self.ratio_ci],
            "frac_shrunk": finite_or_none(self.frac_shrunk),
            "bench": quantiles(self.bench_gaps),
            "new": quantiles(self.new_gaps),
            "note": self.note,
        }


# --- top-K correlations ---------------------------------------------------------------------------------------


def topk_correlations(
    bench_acc: Mapping[str, float],
    new_acc: Mapping[str, float],
    *,
    ks: Sequence[float] = DEFAULT_KS,
    select_by: str = "benchmark",
    bench_seeds: Mapping[str, Mapping[int, float]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> list[TopK]:
    """Kendall τ-b, Spearman ρ and the seed-to-seed noise τ within each top-K% set, with bootstrap CIs.

    Only architectures in both ``bench_acc`` and ``new_acc`` count. ``bench_seeds`` maps an architecture to
    its per-seed benchmark accuracies (:meth:`~ahps_core.benchmarks.BenchmarkRecords.seed_accuracies`);
    without it the noise floor is NaN. ``n_boot=0`` skips the bootstrap (CIs NaN).
    """
    check_choice("select_by", select_by, SELECT_BY)
    _check_boot(n_boot, ci)
    bad = [k for k in ks if not (isinstance(k, (int, float)) and 0 < k <= 100)]
    if bad or not ks:
        raise ConfigError(f"top-K percentages {list(ks)!r} must be non-empty, each in (0, 100]")
    archs, b, y = paired_accuracies(bench_acc, new_acc)
    order = _ranked(archs, b if select_by == "benchmark" else y)
    seeds_matrix, seed_note = _seed_matrix(archs, bench_seeds)
    out = []
    for k in ks:
        top = np.array(order[: _top_count(len(archs), k)], dtype=int)
        out.append(_topk(k, b[top], y[top], seeds_matrix[top], seed_note, n_boot, seed, ci))
    return out


def top_set(acc: Mapping[str, float], k: float) -> list[str]:
    """The ``ceil(N * k / 100)`` best architectures by ``acc``, best first (ties broken by key)."""
    archs = sorted(acc)
    order = _ranked(archs, np.array([acc[a] for a in archs], dtype=float))
    return [archs[i] for i in order[: _top_count(len(archs), k)]]


def _ranked(archs: list[str], values: np.ndarray) -> list[int]:
    return sorted(range(len(archs)), key=lambda i: (-values[i], archs[i]))


def _top_count(n: int, k: float) -> int:
    return math.ceil(round(n * k / 100, 9))


def _topk(
    k: float, b: np.ndarray, y: np.ndarray, s: np.ndarray, seed_note: str, n_boot: int, seed: int, ci: float
) -> TopK:
    n = len(b)
    tau, rho, note = _correlations(b, y)
    has_seeds = s.shape[1] > 0
    noise, noise_note = _noise_tau(s) if has_seeds else (math.nan, seed_note)
    notes = [x for x in (note, noise_note) if x]
    incomplete = int(np.isnan(s).any(axis=1).sum()) if has_seeds else 0
    if incomplete:
        notes.append(f"{incomplete} architecture(s) lack some benchmark seeds: each seed pair uses those with both")
    if n < 3 or n_boot == 0:
        return TopK(k, n, tau, NAN_CI, rho, NAN_CI, noise, NAN_CI, "; ".join(notes))
    rng = np.random.default_rng([seed, round(k * 1000)])
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = np.full((n_boot, 3), math.nan)
    boot[:, 0], boot[:, 1] = bootstrap_correlations(b, y, idx)
    if has_seeds:
        boot[:, 2] = _batch_noise_tau(s, idx)
    dropped = int(np.isnan(boot[:, 0]).sum())
    if dropped and not note:
        notes.append(f"{dropped} of {n_boot} bootstrap resamples were degenerate (constant) and dropped")

    def interval(column: int, point: float) -> tuple[float, float]:
        return NAN_CI if math.isnan(point) else _percentile_ci(boot[:, column], ci)

    return TopK(
        k, n, tau, interval(0, tau), rho, interval(1, rho), noise, interval(2, noise), "; ".join(notes)
    )


def _correlations(b: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """(τ-b, ρ, note); NaN with a note when undefined."""
    if len(b) < 3:
        return math.nan, math.nan, f"fewer than 3 architectures ({len(b)}): correlations undefined"
    if np.ptp(b) == 0 or np.ptp(y) == 0:
        which = "benchmark" if np.ptp(b) == 0 else "new"
        return math.nan, math.nan, f"constant {which} accuracies: correlations undefined"
    tau = stats.kendalltau(b, y, variant="b").statistic
    rho = stats.spearmanr(b, y).statistic
    return float(tau), float(rho), ""


def _noise_tau(s: np.ndarray) -> tuple[float, str]:
    """Mean over seed pairs of τ-b between per-seed accuracies (rows: architectures, NaN: seed missing)."""
    taus = []
    for i, j in combinations(range(s.shape[1]), 2):
        both = ~np.isnan(s[:, i]) & ~np.isnan(s[:, j])
        tau, _, note = _correlations(s[both, i], s[both, j])
        if not note:
            taus.append(tau)
    if not taus:
        return math.nan, "noise floor undefined: no seed pair with 3+ architectures and non-constant accuracies"
    return float(np.mean(taus)), ""


def bootstrap_correlations(b: np.ndarray, y: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kendall τ-b and Spearman ρ of every bootstrap resample ``(b[idx[r]], y[idx[r]])`` at once.

    Hand-written because the bootstrap needs thousands of replicates, where the per-call overhead of
    ``scipy.stats.kendalltau`` (~0.7 ms) dominates. A resample only re-weights the pairs of the original set:
    with ``c`` the resample's count of each original architecture and ``S_b = sgn(b_i - b_j)``,
    ``sum_{i<j} sgn(db) sgn(dy)`` over the resample is ``c^T (S_b * S_y) c / 2``, and the untied-pair counts
    are ``c^T |S_b| c / 2`` and ``c^T |S_y| c / 2`` (duplicates of one architecture are tied on both sides,
    exactly as scipy counts them). So τ-b for all replicates is three quadratic forms: one matrix product.
    ρ is the Pearson correlation of average ranks (``scipy.stats.rankdata`` along rows). Tests check both
    against scipy on the materialized resamples, ties included. Undefined (constant) resamples give NaN.
    """
    n = len(b)
    counts = np.zeros((len(idx), n))
    np.add.at(counts, (np.arange(len(idx))[:, None], idx), 1.0)
    sb = np.sign(b[:, None] - b[None, :])
    sy = np.sign(y[:, None] - y[None, :])
    quad = lambda m: np.einsum("ri,ri->r", counts @ m, counts)  # noqa: E731
    num, db, dy = quad(sb * sy), quad(np.abs(sb)), quad(np.abs(sy))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where((db > 0) & (dy > 0), num / np.sqrt(db * dy), math.nan)
    rb = stats.rankdata(b[idx], axis=1)
    ry = stats.rankdata(y[idx], axis=1)
    rb -= rb.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rb * rb).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (rb * ry).sum(axis=1) / den, math.nan)
    return tau, rho


def _batch_noise_tau(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """:func:`_noise_tau` of every bootstrap resample ``s[idx[r]]`` (NaN where no seed pair is defined)."""
    taus = []
    for i, j in combinations(range(s.shape[1]), 2):
        if not (np.isnan(s[:, i]).any() or np.isnan(s[:, j]).any()):
            taus.append(bootstrap_correlations(s[:, i], s[:, j], idx)[0])
            continue
        # rare: missing seeds, so each resample keeps a different subset; exact per-resample path
        a, c = s[idx, i], s[idx, j]
        both = ~np.isnan(a) & ~np.isnan(c)
        taus.append(np.array([_correlations(a[r][both[r]], c[r][both[r]])[0] for r in range(len(idx))]))
    with np.errstate(invalid="ignore"):
        stacked = np.vstack(taus)
        valid = ~np.isnan(stacked)
        counts = valid.sum(axis=0)
        return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), math.nan)


def _seed_matrix(archs: list[str], bench_seeds: Mapping[str, Mapping[int, float]] | None) -> tuple[np.ndarray, str]:
    if not bench_seeds:
        return np.zeros((len(archs), 0)), "no per-seed benchmark accuracies given: no noise floor"
    per_arch = [{int(sd): float(v) for sd, v in bench_seeds.get(a, {}).items()} for a in archs]  # JSON: "777"
    seeds = sorted({sd for accs in per_arch for sd in accs})
    m = np.full((len(archs), len(seeds)), math.nan)
    for r, accs in enumerate(per_arch):
        for c, sd in enumerate(seeds):
            m[r, c] = accs.get(sd, math.nan)
    if len(seeds) < 2:
        return np.zeros((len(archs), 0)), f"per-seed accuracies have {len(seeds)} seed(s): no seed pair, no noise floor"
    return m, ""


# --- gaps and deltas ------------------------------------------------------------------------------------------


def pairwise_gaps(
    bench_acc: Mapping[str, float],
    new_acc: Mapping[str, float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    max_pairs: int = 100_000,
) -> PairGaps:
    """Pairwise accuracy gaps under the benchmark and the new scheme (Chen et al., Fig. 4 right column)."""
    _check_boot(n_boot, ci)
    if not isinstance(max_pairs, int) or max_pairs < 1:
        raise ConfigError(f"max_pairs={max_pairs!r} must be a positive integer")
    _, b, y = paired_accuracies(bench_acc, new_acc)
    n = len(b)
    n_pairs = n * (n - 1) // 2
    if n < 2:
        empty = np.zeros(0)
        note = f"fewer than 2 architectures ({n}): no pairs"
        return PairGaps(n, 0, False, empty, empty, math.nan, math.nan, math.nan, NAN_CI, math.nan, note)
    rng = np.random.default_rng([seed, 1])
    if n_pairs <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, size=max_pairs)
        j = (i + rng.integers(1, n, size=max_pairs)) % n  # uniform over j != i
    gb, gy = np.abs(b[i] - b[j]), np.abs(y[i] - y[j])
    mean_b, mean_y = _mean_abs_diff(b), _mean_abs_diff(y)
    ratio = mean_y / mean_b if mean_b > 0 else math.nan
    note = "" if mean_b > 0 else "all benchmark accuracies are equal: the gap ratio is undefined"
    ratio_ci = NAN_CI
    if n_boot and mean_b > 0:
        ratios = np.full(n_boot, math.nan)
        for r, idx in enumerate(rng.integers(0, n, size=(n_boot, n))):
            mb = _mean_abs_diff(b[idx])
            if mb > 0:
                ratios[r] = _mean_abs_diff(y[idx]) / mb
        ratio_ci = _percentile_ci(ratios, ci)
    return PairGaps(n, n_pairs, n_pairs > max_pairs, gb, gy, mean_b, mean_y, ratio, ratio_ci,
                    float(np.mean(gy < gb)), note)


def _mean_abs_diff(x: np.ndarray) -> float:
    """Exact mean of ``|x_i - x_j|`` over pairs i < j in O(n log n): sum_k x_(k) (2k - n - 1) / C(n, 2)."""
    n = len(x)
    xs = np.sort(x)
    return float(np.dot(xs, 2 * np.arange(1, n + 1) - n - 1) / (n * (n - 1) / 2))


def accuracy_delta(
    bench_acc: Mapping[str, float], new_acc: Mapping[str, float], n_boot: int = 1000, seed: int = 0, ci: float = 0.95
) -> Delta:
    """Mean of ``new - benchmark`` over the common architectures and its percentile bootstrap CI."""
    _check_boot(n_boot, ci)
    _, b, y = paired_accuracies(bench_acc, new_acc)
    d = y - b
    if len(d) == 0:
        return Delta(math.nan, math.nan, math.nan, 0)
    if len(d) < 2 or n_boot == 0:
        return Delta(float(d.mean()), math.nan, math.nan, len(d))
    rng = np.random.default_rng([seed, 2])
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    low, high = _percentile_ci(means, ci)
    return Delta(float(d.mean()), low, high, len(d))


# --- report ---------------------------------------------------------------------------------------------------


def ranking_report(
    bench_acc: Mapping[str, float],
    new_acc: Mapping[str, float],
    *,
    bench_seeds: Mapping[str, Mapping[int, float]] | None = None,
    dataset: str | None = None,
    ks: Sequence[float] = DEFAULT_KS,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    out_dir: str | Path | None = None,
    banner: str | None = None,
) -> dict:
    """Everything above for one dataset as strict JSON; with ``out_dir``, the three plots too (paths listed), each
    with the deviation ``banner`` (:func:`ahps_core.plots.banner_text`) when given."""
    archs, _, _ = paired_accuracies(bench_acc, new_acc)
    topk = {
        sel: topk_correlations(bench_acc, new_acc, ks=ks, select_by=sel, bench_seeds=bench_seeds,
                               n_boot=n_boot, seed=seed, ci=ci)
        for sel in SELECT_BY
    }
    gaps = pairwise_gaps(bench_acc, new_acc, n_boot=n_boot, seed=seed, ci=ci)
    delta = accuracy_delta(bench_acc, new_acc, n_boot=n_boot, seed=seed, ci=ci)
    report: dict = {
        "dataset": dataset,
        "n_bench": len(bench_acc),
        "n_new": len(new_acc),
        "n_common": len(archs),
        "protocol": {
            "source": "Chen et al., ICLR 2024, §4.3, Fig. 4, App. E.4",
            "statistics": "Kendall tau-b (scipy.stats.kendalltau, variant='b'); Spearman rho (scipy.stats.spearmanr)",
            "top_set": "ceil(N*K/100) best architectures by the 'select_by' accuracy, ties broken by key",
            "noise_floor": "mean over benchmark seed pairs of tau-b between per-seed accuracies, same set",
            "bootstrap": f"percentile, {n_boot} resamples of architectures, seed {seed}, {ci:.0%} interval",
            "ks": list(ks),
        },
        "topk": {sel: [t.to_dict() for t in rows] for sel, rows in topk.items()},
        "delta": {"mean": finite_or_none(delta.mean),
                  "ci": [finite_or_none(delta.ci_low), finite_or_none(delta.ci_high)], "n": delta.n},
        "gaps": gaps.to_dict(),
    }
    if out_dir is not None:
        out = Path(out_dir)
        stem = f"{dataset}_" if dataset else ""
        label = f" ({dataset})" if dataset else ""
        report["plots"] = {
            "topk": str(plots.plot_topk(topk, out / f"{stem}topk.png", title=f"Top-K% rank agreement{label}",
                                        banner=banner)),
            "gaps": str(plots.plot_gaps(gaps, out / f"{stem}gaps.png", title=f"Pairwise accuracy gaps{label}",
                                        banner=banner)),
            "scatter": str(plots.plot_scatter(bench_acc, new_acc, out / f"{stem}scatter.png",
                                              title=f"New vs benchmark accuracy{label}", banner=banner)),
        }
    return report


# --- helpers --------------------------------------------------------------------------------------------------


def paired_accuracies(
    bench_acc: Mapping[str, float], new_acc: Mapping[str, float]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Architectures in both mappings (sorted keys) and their benchmark and new accuracies; non-finite values
    are refused."""
    archs = sorted(set(bench_acc) & set(new_acc))
    b = np.array([float(bench_acc[a]) for a in archs], dtype=float)
    y = np.array([float(new_acc[a]) for a in archs], dtype=float)
    bad = [a for a, u, v in zip(archs, b, y, strict=True) if not (math.isfinite(u) and math.isfinite(v))]
    if bad:
        raise ConfigError(
            f"non-finite accuracy for {len(bad)} architecture(s), e.g. {bad[0]!r}: drop or fix them first"
        )
    return archs, b, y


def _percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return NAN_CI
    low, high = np.percentile(finite, [50 * (1 - ci), 50 * (1 + ci)])
    return float(low), float(high)


def _check_boot(n_boot: int, ci: float) -> None:
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 0:
        raise ConfigError(f"n_boot={n_boot!r} must be a non-negative integer (0 skips the bootstrap)")
    if not 0 < ci < 1:
        raise ConfigError(f"ci={ci!r} must be a confidence level in (0, 1), e.g. 0.95")


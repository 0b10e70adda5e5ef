"""The statistics of ``ahps validate``: fits with confidence intervals, the measurement's own uncertainty, and
the stratified sample of target topologies.

* :func:`fit_stats`: Pearson r of log LRs with its p-value (``scipy.stats.pearsonr``) and a bootstrap CI over
  targets (pairs resampled with replacement), Spearman rho, and the least-squares line log(measured) =
  slope * log(predicted) + intercept with the slope's standard error, its t-interval and a bootstrap CI.
* :func:`seed_bootstrap`: the best LR of one search when its seeds are resampled with replacement (the LR grid
  and runs are the search's own: nothing is retrained), so :func:`measurement_uncertainty` can say how well the
  seed-averaged criterion pins the maximal LR down, and :func:`fit_under_seed_noise` how much r and the slope move
  with the measurement noise alone.
* :func:`distinct_values`: how many distinct values a list of LRs took (to 1e-6 in log).
* :func:`stratified_sample`: a seeded sample of a family's topologies, stratified over depth (the most weight
  layers on an input->output path) and number of paths (module :func:`stratified_sample`).

Every random draw is a ``numpy.random.default_rng(seed)``: a report is reproducible. No torch.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ahps_core.checks import check_int
from ahps_core.errors import ConfigError

DEFAULT_BOOT = 2000
CI_LEVEL = 0.95
#: Default size of a validation sample: two topologies per (depth, paths) stratum of the 5-vertex DAGs.
DEFAULT_SAMPLE = 32
#: Number-of-paths bins of the stratified sample, by family (upper bounds, inclusive).
PATH_BINS = {"mlp": (1, 2, 4, 8), "cnn": (1, 2, 4, 8), "nb201": (1, 2, 3, 4)}


# --- fits ----------------------------------------------------------------------------------------------------


def _ci(values: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(finite, a)), float(np.quantile(finite, 1 - a))]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x``/``y`` (``[B, n]``); NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-24, (xc * yc).sum(axis=1) / den, np.nan)


def _slope_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx = (xc ** 2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sxx > 1e-24, (xc * yc).sum(axis=1) / sxx, np.nan)


def fit_stats(
    predicted: Sequence[float], measured: Sequence[float], *, n_boot: int = DEFAULT_BOOT, seed: int = 0,
) -> dict[str, Any]:
    """Pearson r (with p-value and bootstrap CI), Spearman rho and the log-log least-squares line (slope with
    standard error, t-interval and bootstrap CI) of ``measured`` against ``predicted`` (module docstring).
    Fields are None where fewer than 3 points (2 for r and the line) or a constant coordinate leave them
    undefined; ``n_boot`` 0 skips the bootstrap."""
    from scipy import stats

    check_int("bootstrap resamples", n_boot, 0)
    x = np.log(np.asarray(predicted, dtype=float))
    y = np.log(np.asarray(measured, dtype=float))
    n = int(x.size)
    out: dict[str, Any] = {
        "n": n, "pearson_log": None, "p_value": None, "pearson_ci": None, "spearman": None, "slope": None,
        "slope_stderr": None, "slope_ci": None, "slope_ci_t": None, "intercept": None, "ci_level": CI_LEVEL,
        "n_boot": n_boot,
    }
    if n < 2 or np.ptp(x) <= 1e-12:
        return out
    fit = stats.linregress(x, y)
    out["slope"], out["intercept"] = float(fit.slope), float(fit.intercept)
    if n >= 3:
        out["slope_stderr"] = float(fit.stderr)
        t = float(stats.t.ppf(0.5 + CI_LEVEL / 2, n - 2))
        out["slope_ci_t"] = [float(fit.slope - t * fit.stderr), float(fit.slope + t * fit.stderr)]
    if np.ptp(y) > 1e-12:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = stats.pearsonr(x, y)
            rho = stats.spearmanr(x, y)
        out["pearson_log"], out["p_value"] = float(r[0]), float(r[1])
        out["spearman"] = float(rho[0]) if math.isfinite(rho[0]) else None
    if n >= 3 and n_boot:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        xb, yb = x[idx], y[idx]
        out["pearson_ci"] = _ci(np.clip(_pearson_rows(xb, yb), -1.0, 1.0))
        out["slope_ci"] = _ci(_slope_rows(xb, yb))
    return out


# --- the measurement's uncertainty ---------------------------------------------------------------------------


def _curve_arrays(curve: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(lrs [G], losses [G, S])`` of a search curve (``{lr, losses}`` per point; +inf for a diverged run)."""
    lrs = np.array([float(p["lr"]) for p in curve])
    losses = np.array([[float(v) for v in p["losses"]] for p in curve])
    return lrs, losses


def seed_bootstrap(curve: Sequence[Mapping[str, Any]], *, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> np.ndarray:
    """``n_boot`` best LRs of the search ``curve`` with its seeds resampled with replacement: for each resample,
    the argmin over the evaluated LRs of the mean criterion of the drawn seeds (+inf when a drawn seed diverged;
    ties to the smaller LR). NaN for a resample where every LR diverged."""
    check_int("bootstrap resamples", n_boot, 1)
    lrs, losses = _curve_arrays(curve)
    if lrs.size == 0:
        raise ConfigError("an empty search curve has no best learning rate")
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    S = losses.shape[1]
    draw = np.random.default_rng(seed).integers(0, S, size=(n_boot, S))
    with np.errstate(invalid="ignore"):
        means = losses[:, draw].mean(axis=2)  # [G, B]: inf propagates from any diverged drawn seed
    means = np.where(np.isfinite(means), means, np.inf)
    best = np.argmin(means, axis=0)  # first minimum = the smaller LR
    out = lrs[best].astype(float)
    out[~np.isfinite(means.min(axis=0))] = np.nan
    return out


def measurement_uncertainty(search: Mapping[str, Any], *, n_boot: int = DEFAULT_BOOT, seed: int = 0) -> dict[str, Any]:
    """How well one search pins its maximal LR down: the refinement's ``bracket`` (``[lower, upper]`` evaluated
    neighbours of the best LR and the ``resolution`` in decades), and the seed bootstrap's CI, its standard
    deviation in decades and the fraction of resamples that pick the reported LR."""
    best = float(search["best_lr"])
    boot = seed_bootstrap(search["curve"], n_boot=n_boot, seed=seed)
    ok = boot[np.isfinite(boot)]
    bracket = search.get("bracket") or {}
    return {
        "bracket": [bracket.get("lower"), bracket.get("upper")] if bracket else None,
        "resolution_decades": bracket.get("resolution"),
        "seed_boot_ci": _ci(ok),
        "seed_boot_sd_decades": float(np.std(np.log10(ok))) if ok.size else None,
        "seed_boot_same": float(np.mean(np.isclose(ok, best, rtol=1e-9))) if ok.size else None,
    }


def fit_under_seed_noise(
    predicted: Sequence[float], curves: Sequence[Sequence[Mapping[str, Any]]], *, n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Pearson r and slope when every target's measured LR is replaced by a seed-bootstrap draw of its own
    search (the predictions held fixed): their CIs are the spread due to measurement noise alone."""
    if len(predicted) < 3:
        return {"pearson_ci_seeds": None, "slope_ci_seeds": None}
    x = np.log(np.asarray(predicted, dtype=float))
    ys = np.stack([np.log(seed_bootstrap(c, n_boot=n_boot, seed=seed + 1 + i)) for i, c in enumerate(curves)],
                  axis=1)  # [B, n]
    keep = np.isfinite(ys).all(axis=1)
    xb = np.broadcast_to(x, ys.shape)[keep]
    return {"pearson_ci_seeds": _ci(np.clip(_pearson_rows(xb, ys[keep]), -1.0, 1.0)),
            "slope_ci_seeds": _ci(_slope_rows(xb, ys[keep]))}


def distinct_values(values: Sequence[float], *, tol: float = 1e-6) -> int:
    """How many distinct values ``values`` (positive) took, equal when their logs differ by less than ``tol``."""
    logs = sorted(math.log(v) for v in values)
    count = 0
    last = None
    for v in logs:
        if last is None or v - last >= tol:
            count += 1
            last = v
    return count


# --- the stratified sample -----------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _strata(family: str) -> dict[tuple[int, int], tuple[str, ...]]:
    """Every topology of ``family`` with at least one weight layer on a path, one spec per distinct signal graph,
    grouped by (depth, paths bin) (:func:`stratified_sample`)."""
    import itertools

    from ahps_core.errors import NoPathError
    from ahps_core.paths import raw_moments
    from ahps_core.specs import parse_arch

    sizes: tuple[int, ...]
    if family in ("mlp", "cnn"):
        alphabet, sizes = "012", (1, 2, 3, 4)
    elif family == "nb201":
        alphabet, sizes = "01234", (1, 2, 3)
    else:
        raise ConfigError(f"cannot sample architectures of family {family!r}: accepted are mlp, cnn, nb201")
    bins = PATH_BINS[family]
    seen: set[frozenset[tuple[int, int, str, int]]] = set()
    out: dict[tuple[int, int], list[str]] = {}
    for digits in itertools.product(alphabet, repeat=sum(sizes)):
        it = iter(digits)
        code = "_".join("".join(next(it) for _ in range(k)) for k in sizes)
        graph = parse_arch(code, family)
        if not graph.has_path:
            continue
        try:
            m = raw_moments(graph)
        except NoPathError:
            continue
        if m.kmax < 1:
            continue
        key = frozenset((e.src, e.dst, e.op.value, e.kernel) for e in graph.path_edges)
        if key in seen:
            continue
        seen.add(key)
        b = next(i for i, hi in enumerate(bins) if m.n <= hi)
        out.setdefault((m.kmax, b), []).append(code)
    return {k: tuple(v) for k, v in sorted(out.items())}


def stratified_sample(family: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct topologies of ``family`` (mlp/cnn: 5-vertex DAG codes; nb201: cells), drawn with
    ``random.Random(seed)`` evenly over depth and number of paths.

    Depth is the largest number of weight layers (hidden Linear/Conv edges; nb201: convs) on an input->output
    path, 1..4 (nb201 1..3); paths are binned 1, 2, 3-4, 5-8 (nb201 1, 2, 3, 4). ``n`` is spread evenly over the
    depths, then within a depth evenly over its path bins, then drawn uniformly in each (depth, bin) cell; a
    cell with too few topologies passes its share on. Topologies without a hidden weight layer on any path (the
    rule gives them the proxy's LR whatever their skips: they test the skip sums, not the depth rule; give them
    with ``--archs``) and duplicates of one signal graph (dead edges) are left out.
    """
    check_int("sample size", n, 1)
    strata = _strata(family)
    total = sum(len(v) for v in strata.values())
    if n > total:
        raise ConfigError(f"sample size {n} exceeds the {total} distinct {family} topologies with a weight layer")
    rng = random.Random(seed)
    depths = sorted({d for d, _ in strata})
    pools = {k: list(v) for k, v in strata.items()}
    for v in pools.values():
        rng.shuffle(v)
    picked: list[str] = []
    taken: dict[tuple[int, int], int] = {}
    while len(picked) < n:
        order = depths[:]
        rng.shuffle(order)
        for d in order:  # one round: one topology per depth, cycling through that depth's path bins
            if len(picked) == n:
                break
            cells = [k for k in pools if k[0] == d and pools[k]]
            if not cells:
                continue
            fewest = min(taken.get(k, 0) for k in cells)
            choice = rng.choice([k for k in cells if taken.get(k, 0) == fewest])
            taken[choice] = taken.get(choice, 0) + 1
            picked.append(pools[choice].pop())
    return picked


def stratum(family: str, spec: str) -> dict[str, int] | None:
    """``{depth, paths_bin}`` of a sampled topology (None when it is not in the sampled space)."""
    for k, v in _strata(family).items():
        if spec in v:
            return {"depth": k[0], "paths_bin": PATH_BINS[family][k[1]]}
    return None


__all__ = ["CI_LEVEL", "DEFAULT_BOOT", "DEFAULT_SAMPLE", "PATH_BINS", "distinct_values", "fit_stats",
           "fit_under_seed_noise", "measurement_uncertainty", "seed_bootstrap", "stratified_sample", "stratum"]

"""Reproducible samples of NAS-Bench-201 cells, deduplicated, optionally stratified by benchmark accuracy.

The space is every NB201 cell: 4 nodes, 6 edges, 5 ops, 5^6 = 15,625 cells (Dong & Yang, ICLR 2020). Chen et
al. (ICLR 2024, §4.3) train "randomly sampled" cells without saying how many or how; see docs/conventions.md A9.

Duplicates ("isomorphic" cells)
-------------------------------
Three equivalence rules (``iso``), counted over the whole space (``tests/test_sampling.py`` pins the numbers):

============  ================================================================  =====================
``iso``       two cells are the same when ...                                   classes (with a path)
============  ================================================================  =====================
``function``  their *op-instance DAGs* are isomorphic: every conv/pool edge     5,424
(default)     fed by a non-zero node is an instance; ``skip_connect`` passes
              its source's sum through (so skip chains collapse and sums are
              flattened); ``none`` edges and everything not reaching the output
              vanish. Same DAG = same parametrized function, weight sharing
              included (a conv read twice through skips is one conv, not two).
``graph``     their labelled DAGs are isomorphic after dropping ``none`` edges   8,764
              and pruning nodes/edges off every input->output path, nodes 0
              and 3 fixed (the 2 orders of nodes 1, 2 are tried)
``nb201``     NB201/NATS-Bench's own key,                                        6,461 (6,466 classes
              ``TopologyStructure.to_unique_str(consider_zero=True)``           with the 5 of cells
                                                                                 without a path)
============  ================================================================  =====================

The literature's "6,466 unique NB201 architectures" is the ``nb201`` count *including* the 5 classes of
cells without a path. That key is an expression *tree*: it cannot see weight sharing, so it merges cells with
different numbers of convolutions, e.g. one conv read twice through skips,
``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|``, with two convs,
``|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|``: 644 of its classes mix
op counts, 430 of them conv (parameter) counts. It also keeps some true duplicates apart (a node summing two
zero inputs is not recognised as zero). ``function`` is a coarsening of ``graph`` (every ``graph`` class lies
in one ``function`` class) and never mixes op counts. Like NB201's key, it treats an op applied to an all-zero
node as zero (exact for pooling; for ReLU-Conv-BN it drops BN's learnable constant).

Cells without an input->output path (341 of 15,625) output zero: they are never sampled and are recorded in
:attr:`Sample.skipped` with the reason (a batch never stops on one bad item); isomorphic duplicates of records are
listed in :attr:`Sample.duplicates` with the cell they duplicate.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np

from ahps_core.benchmarks import check_dataset, nb201_arch_string
from ahps_core.errors import ConfigError
from ahps_core.graph import NB201_OPS, ArchGraph, nb201_arch_str, parse_arch, parse_nb201_arch_str

SPACES = ("nb201",)
ISO_RULES = ("function", "graph", "nb201")
NO_PATH_REASON = "no input->output path: every path from node 0 to node 3 crosses a 'none' edge (the cell outputs zero)"


class AccuracySource(Protocol):
    """What stratified sampling needs from benchmark records (:class:`~ahps_core.benchmarks.BenchmarkRecords`)."""

    def arch_strs(self) -> list[str]: ...

    def accuracies(self, dataset: str, archs: Iterable[str] | None = None) -> dict[str, float]: ...


@dataclass(frozen=True)
class Sample:
    """A sample of cells (NB201 arch strings, in the order drawn) and the candidates it had to skip.

    ``n_candidates`` cells were considered (the space, or the records' architectures); ``n_skipped`` of them
    have no path; ``n_duplicates`` were dropped as equivalent to an earlier one (``duplicates`` lists each with
    the cell it duplicates, when the candidates are benchmark records); ``pool_size`` remained.
    ``strata`` (stratified samples only) gives each accuracy bin's range, size and draw.
    """

    cells: list[str]
    skipped: list[dict[str, str]]
    k: int
    seed: int
    space: str
    iso: str | None
    n_candidates: int
    n_duplicates: int
    pool_size: int
    strata: list[dict] | None = None
    duplicates: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "cells": list(self.cells),
            "skipped": [dict(s) for s in self.skipped],
            "k": self.k,
            "seed": self.seed,
            "space": self.space,
            "dedup": self.iso,
            "n_candidates": self.n_candidates,
            "n_skipped": len(self.skipped),
            "n_duplicates": self.n_duplicates,
            "pool_size": self.pool_size,
            "strata": self.strata,
        }


def all_cells(space: str = "nb201") -> list[str]:
    """Every cell of ``space`` as an arch string, in digit-code order (``0_00_000``, ``0_00_001``, ...)."""
    _check_space(space)
    return list(_all_nb201())


@lru_cache(maxsize=1)
def _all_nb201() -> tuple[str, ...]:
    return tuple(
        nb201_arch_str([[ops[0]], [ops[1], ops[2]], [ops[3], ops[4], ops[5]]])
        for ops in itertools.product(NB201_OPS, repeat=6)
    )


def iso_key(arch: str | ArchGraph, iso: str = "function") -> Hashable | None:
    """Canonical key of an NB201 cell under rule ``iso`` (see the module docstring); ``None`` without a path."""
    if iso not in ISO_RULES:
        raise ConfigError(f"unknown dedup rule {iso!r}: accepted rules are {', '.join(ISO_RULES)}")
    arch_str = nb201_arch_string(arch)
    if iso == "function":
        return _function_key(parse_nb201_arch_str(arch_str))
    graph = parse_arch(arch_str, family="nb201")
    if not graph.has_path:
        return None
    if iso == "graph":
        edges = [(e.src, e.dst, e.name) for e in graph.path_edges]
        swap = {0: 0, 1: 2, 2: 1, 3: 3}
        return min(tuple(sorted(edges)), tuple(sorted((swap[s], swap[d], n) for s, d, n in edges)))
    from nats_bench.genotype_utils import topology_str2structure

    return topology_str2structure(arch_str).to_unique_str(consider_zero=True)


def _function_key(ops: list[list[str]]) -> tuple | None:
    """Canonical form of the op-instance DAG of a cell (``ops[j-1][i]`` is the op on edge i -> j).

    Vertex 0 is the cell input; vertex ``m >= 1`` is the m-th conv/pool instance, ``(op, inputs)`` with
    ``inputs`` the sorted multiset of vertices summed at its source node. A node's value is such a multiset:
    ``none`` adds nothing, ``skip_connect`` adds its source's multiset, an op adds one new instance (unless its
    source is zero). The key is the lexicographically smallest encoding over the vertex orders that sort
    instances by their expression tree and permute only instances with equal trees, which is invariant under
    isomorphism and determines the DAG.
    """
    instances: list[tuple[str, tuple[int, ...]]] = []
    values: list[tuple[int, ...]] = [(0,)]
    for group in ops:
        acc: list[int] = []
        for src, op in enumerate(group):
            value = values[src]
            if op == "none" or not value:
                continue
            if op == "skip_connect":
                acc.extend(value)
            else:
                instances.append((op, value))
                acc.append(len(instances))
        values.append(tuple(sorted(acc)))
    out = values[-1]
    if not out:
        return None
    live: set[int] = set()
    stack = [v for v in out if v]
    while stack:
        v = stack.pop()
        if v not in live:
            live.add(v)
            stack.extend(u for u in instances[v - 1][1] if u)
    tree = {0: "x"}
    for v in sorted(live):  # instances only read earlier instances: ascending order is topological
        op, inputs = instances[v - 1]
        tree[v] = f"{op}({'+'.join(sorted(tree[u] for u in inputs))})"
    groups: dict[str, list[int]] = {}
    for v in sorted(live):
        groups.setdefault(tree[v], []).append(v)
    best: tuple | None = None
    for perms in itertools.product(*(itertools.permutations(groups[t]) for t in sorted(groups))):
        pos = {0: 0} | {v: i for i, v in enumerate(itertools.chain.from_iterable(perms), start=1)}
        order = sorted(live, key=pos.__getitem__)
        enc = (
            tuple((instances[v - 1][0], tuple(sorted(pos[u] for u in instances[v - 1][1]))) for v in order),
            tuple(sorted(pos[v] for v in out)),
        )
        if best is None or enc < best:
            best = enc
    return best


@lru_cache(maxsize=len(ISO_RULES))
def _space_keys(iso: str) -> tuple[Hashable | None, ...]:
    return tuple(iso_key(a, iso) for a in _all_nb201())


def sample_cells(
    k: int,
    seed: int,
    *,
    space: str = "nb201",
    records: AccuracySource | None = None,
    dataset: str | None = None,
    stratify: bool = False,
    strata: int = 10,
    dedup: bool = True,
    iso: str = "function",
) -> Sample:
    """Draw ``k`` distinct cells with ``numpy.random.default_rng(seed)``.

    Candidates are every cell of ``space`` or, with ``records``, the architectures that have records. Cells
    without a path are skipped (listed with the reason); with ``dedup`` only the first cell (in digit-code
    order) of each ``iso`` class stays. Unstratified, the sample is the first ``k`` of a seeded permutation
    of the pool, so for one seed a smaller sample is a prefix of a larger one.

    ``stratify`` (needs ``records`` and ``dataset``): sort the pool by benchmark accuracy (the dataset's
    headline accuracy, mean over seeds), cut it into ``min(strata, pool, k)`` equal-count bins (accuracy
    quantiles) and draw ``k // bins`` from each, the remainder going to bins picked at random. This reads the
    record of every pool architecture (a full ``-simple`` directory: thousands of files, minutes).
    """
    _check_space(space)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"sample size k={k!r} must be a positive integer")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    if dedup and iso not in ISO_RULES:
        raise ConfigError(f"unknown dedup rule {iso!r}: accepted rules are {', '.join(ISO_RULES)}")
    if stratify:
        if records is None or dataset is None:
            raise ConfigError("stratify=True needs benchmark records and a dataset to rank the cells by accuracy")
        if not isinstance(strata, int) or isinstance(strata, bool) or strata < 1:
            raise ConfigError(f"strata={strata!r} must be a positive integer")
    if dataset is not None:
        check_dataset(dataset)

    rule = iso if dedup else "function"
    if records is None:
        candidates: Sequence[str] = _all_nb201()
        keys: Sequence[Hashable | None] = _space_keys(rule)
    else:
        candidates = sorted({nb201_arch_string(a) for a in records.arch_strs()}, key=_code_order)
        keys = [iso_key(a, rule) for a in candidates]
    skipped = [{"arch": a, "reason": NO_PATH_REASON} for a, key in zip(candidates, keys, strict=True) if key is None]
    pool: list[str] = []
    kept: dict[Hashable, str] = {}
    duplicates: list[dict[str, str]] = []
    for a, key in zip(candidates, keys, strict=True):
        if key is None:
            continue
        if dedup and key in kept:
            if records is not None:  # the whole space's ~10k duplicates are counted, not listed
                duplicates.append({"arch": a, "reason": f"isomorphic duplicate of {kept[key]} (dedup rule {iso!r})"})
            continue
        kept[key] = a
        pool.append(a)
    n_duplicates = len(candidates) - len(skipped) - len(pool)
    if k > len(pool):
        where = f"the {space} space" if records is None else "the benchmark records"
        where += f" ({len(candidates):,} cells)"
        raise ConfigError(
            f"cannot sample k={k:,} cells: {where} {'hold' if records is not None else 'holds'} only {len(pool):,} "
            f"{'unique ' if dedup else ''}cells with an input->output path "
            f"({len(skipped):,} without a path{f', {n_duplicates:,} duplicates under iso={iso!r}' if dedup else ''})"
        )
    rng = np.random.default_rng(seed)
    bins = None
    if stratify:
        assert records is not None and dataset is not None  # checked above
        cells, bins = _stratified(pool, records.accuracies(dataset, pool), k, strata, rng)
    else:
        cells = [pool[i] for i in rng.permutation(len(pool))[:k]]
    return Sample(
        cells=cells,
        skipped=skipped,
        k=k,
        seed=seed,
        space=space,
        iso=iso if dedup else None,
        n_candidates=len(candidates),
        n_duplicates=n_duplicates,
        pool_size=len(pool),
        strata=bins,
        duplicates=duplicates,
    )


def _stratified(
    pool: list[str], acc: dict[str, float], k: int, strata: int, rng: np.random.Generator
) -> tuple[list[str], list[dict]]:
    """Equal-count accuracy bins (ties broken by digit code), ``k`` spread as evenly as bin sizes allow."""
    ranked = sorted(pool, key=lambda a: (acc[a], _code_order(a)))
    n_bins = min(strata, len(ranked), k)
    bins = [list(b) for b in np.array_split(np.array(ranked, dtype=object), n_bins)]
    quota = [k // n_bins] * n_bins
    for b in rng.choice(n_bins, size=k % n_bins, replace=False):
        quota[int(b)] += 1
    overflow = sum(max(0, q - len(b)) for q, b in zip(quota, bins, strict=True))
    quota = [min(q, len(b)) for q, b in zip(quota, bins, strict=True)]
    while overflow:  # only when k is close to the pool size: move draws to bins with room
        for b in rng.permutation(n_bins):
            if overflow and quota[b] < len(bins[b]):
                quota[b] += 1
                overflow -= 1
    cells: list[str] = []
    info = []
    for b, q in zip(bins, quota, strict=True):
        drawn = [b[i] for i in rng.choice(len(b), size=q, replace=False)]
        cells.extend(drawn)
        info.append({"acc_min": acc[b[0]], "acc_max": acc[b[-1]], "n_pool": len(b), "n_sampled": q})
    return cells, info


def _code_order(arch_str: str) -> tuple[int, ...]:
    return tuple(NB201_OPS.index(op) for group in parse_nb201_arch_str(arch_str) for op in group)


def _check_space(space: str) -> None:
    if space not in SPACES:
        raise ConfigError(f"unknown search space {space!r}: accepted spaces are {', '.join(SPACES)}")

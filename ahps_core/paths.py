"""Exact input->output path statistics by dynamic programming over a topological order.

For every vertex *v* the DP keeps, over all signal-carrying paths from the input to *v* with *k* weight
edges, the exact integers ``N = #paths``, ``S1 = sum k``, ``S2 = sum k^2``, ``S3 = sum k^3`` and the
min/max of *k*. An edge with weight count ``w`` (1 for a weight layer, 0 otherwise) maps the moments of
its source to its destination by the binomial expansion of ``(k + w)^j``; a constant depth offset ``c`` is
applied once at the end the same way. That is O(V + E) big-integer operations, instead of enumerating
paths whose number grows exponentially (a 10,000-vertex DAG can have ~e^500 of them).

The optional length histogram keeps, per vertex, the exact number of paths of each length: O(E * depth).

Pure Python (numpy only for the optional histogram).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ahps_core.errors import ArchSpecError, NoPathError
from ahps_core.graph import ArchGraph, Op


@dataclass(frozen=True)
class PathStats:
    """Exact statistics of the path depths ``L_p = offset + (weight edges on p)`` over input->output paths."""

    num_paths: int
    sum_l: int
    sum_l2: int
    sum_l3: int
    min_depth: int
    max_depth: int
    offset: int
    collapsed: bool = False
    histogram: dict[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "num_paths": self.num_paths,
            "sum_l": self.sum_l,
            "sum_l2": self.sum_l2,
            "sum_l3": self.sum_l3,
            "min_depth": self.min_depth,
            "max_depth": self.max_depth,
        }
        if self.collapsed:
            d["collapsed"] = True
        if self.histogram is not None:
            d["histogram"] = {str(k): v for k, v in sorted(self.histogram.items())}
        return d


@dataclass(frozen=True)
class RawMoments:
    """Moments of the weight-edge count k over input->output paths (no offset)."""

    n: int
    s1: int
    s2: int
    s3: int
    kmin: int
    kmax: int


def raw_moments(graph: ArchGraph) -> RawMoments:
    """Exact moments of k over all input->output signal paths. Raises :class:`NoPathError` if there is none."""
    n_nodes = graph.num_nodes
    out_edges: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes)]
    for e in graph.path_edges:
        out_edges[e.src].append((e.dst, 1 if e.op is Op.WEIGHT else 0))
    if not graph.has_path:
        raise NoPathError(_no_path_message(graph))
    N = [0] * n_nodes
    S1 = [0] * n_nodes
    S2 = [0] * n_nodes
    S3 = [0] * n_nodes
    inf = 1 << 62
    kmin = [inf] * n_nodes
    kmax = [-1] * n_nodes
    src = graph.input
    N[src] = 1
    kmin[src] = kmax[src] = 0
    for v in graph.topological_order:
        nv = N[v]
        if not nv:
            continue
        s1, s2, s3, lo, hi = S1[v], S2[v], S3[v], kmin[v], kmax[v]
        for d, w in out_edges[v]:
            if w:
                N[d] += nv
                S1[d] += s1 + nv
                S2[d] += s2 + 2 * s1 + nv
                S3[d] += s3 + 3 * s2 + 3 * s1 + nv
            else:
                N[d] += nv
                S1[d] += s1
                S2[d] += s2
                S3[d] += s3
            if lo + w < kmin[d]:
                kmin[d] = lo + w
            if hi + w > kmax[d]:
                kmax[d] = hi + w
    t = graph.output
    return RawMoments(N[t], S1[t], S2[t], S3[t], kmin[t], kmax[t])


def path_stats(
    graph: ArchGraph, *, offset: int = 0, collapse_weightless: bool = False, histogram: bool = False
) -> PathStats:
    """Path statistics with ``L_p = offset + k_p``.

    ``collapse_weightless`` reproduces the reference code's quirk for MLP/CNN DAGs: when no path has a weight
    edge, the DAG counts as a single path of depth ``offset`` however many skip paths it has.
    """
    m = raw_moments(graph)
    if collapse_weightless and m.kmax == 0:
        return PathStats(1, offset, offset**2, offset**3, offset, offset, offset, collapsed=True,
                         histogram={offset: 1} if histogram else None)
    c = offset
    if c + m.kmin < 0:
        raise ArchSpecError(
            f"architecture {graph.spec!r}: a path with {m.kmin} weight layers has depth {c + m.kmin} < 0 "
            f"under depth offset {c}"
        )
    n = m.n
    sum_l = m.s1 + c * n
    sum_l2 = m.s2 + 2 * c * m.s1 + c * c * n
    sum_l3 = m.s3 + 3 * c * m.s2 + 3 * c * c * m.s1 + c**3 * n
    hist = None
    if histogram:
        hist = {k + c: v for k, v in length_histogram(graph).items()}
    return PathStats(n, sum_l, sum_l2, sum_l3, m.kmin + c, m.kmax + c, c, histogram=hist)


def length_histogram(graph: ArchGraph) -> dict[int, int]:
    """Exact number of input->output paths per weight-edge count k (O(E * depth), exact integers)."""
    import numpy as np  # only the histogram needs it

    if not graph.has_path:
        raise NoPathError(_no_path_message(graph))
    n_nodes = graph.num_nodes
    out_edges: list[list[tuple[int, int]]] = [[] for _ in range(n_nodes)]
    for e in graph.path_edges:
        out_edges[e.src].append((e.dst, 1 if e.op is Op.WEIGHT else 0))
    # hist[v] = (lowest k, object array of exact counts for k = lowest, lowest+1, ...)
    hist: list[tuple[int, np.ndarray] | None] = [None] * n_nodes
    hist[graph.input] = (0, np.array([1], dtype=object))
    for v in graph.topological_order:
        hv = hist[v]
        if hv is None:
            continue
        lo, arr = hv
        for d, w in out_edges[v]:
            lo2 = lo + w
            hd = hist[d]
            if hd is None:
                hist[d] = (lo2, arr.copy())
                continue
            dlo, darr = hd
            new_lo = min(dlo, lo2)
            new_hi = max(dlo + len(darr), lo2 + len(arr))
            if new_lo != dlo or new_hi != dlo + len(darr):
                grown = np.zeros(new_hi - new_lo, dtype=object)
                grown[dlo - new_lo : dlo - new_lo + len(darr)] = darr
                darr, dlo = grown, new_lo
            darr[lo2 - dlo : lo2 - dlo + len(arr)] += arr
            hist[d] = (dlo, darr)
        if v != graph.output:
            hist[v] = None  # free memory: every successor has been updated
    lo, arr = hist[graph.output]  # type: ignore[misc]
    return {lo + i: int(c) for i, c in enumerate(arr) if c}


def effective_depth(graph: ArchGraph, *, offset: int = 0) -> int:
    """Wu et al.'s effective depth: ``offset`` + the minimum over input->output paths of (weight layers on
    the path + additions passed), an addition being a vertex with two or more live signal inputs."""
    if not graph.has_path:
        raise NoPathError(_no_path_message(graph))
    inf = 1 << 62
    best = [inf] * graph.num_nodes
    best[graph.input] = 0
    out_edges: list[list[tuple[int, int]]] = [[] for _ in range(graph.num_nodes)]
    for e in graph.path_edges:
        cost = (1 if e.op is Op.WEIGHT else 0) + (1 if graph.in_degree(e.dst) >= 2 else 0)
        out_edges[e.src].append((e.dst, cost))
    for v in graph.topological_order:
        bv = best[v]
        if bv == inf:
            continue
        for d, cost in out_edges[v]:
            if bv + cost < best[d]:
                best[d] = bv + cost
    return offset + best[graph.output]


def _no_path_message(graph: ArchGraph) -> str:
    return (
        f"architecture {graph.spec!r} has no input->output path: every path from node "
        f"{graph.node_label(graph.input)} to node {graph.node_label(graph.output)} crosses a zero edge, "
        "so no signal reaches the output and no learning rate can be transferred to it"
    )


def enumerate_paths(graph: ArchGraph, limit: int | None = None) -> list[int]:
    """Brute force: the weight-edge count of every input->output signal path (exponential; for tests and
    the benchmark's baseline). ``limit`` stops after that many paths with a RuntimeError."""
    succ: dict[int, list[tuple[int, int]]] = {}
    for e in graph.path_edges:
        succ.setdefault(e.src, []).append((e.dst, 1 if e.op is Op.WEIGHT else 0))
    out: list[int] = []
    target = graph.output
    stack = [(graph.input, 0)]
    while stack:
        v, k = stack.pop()
        if v == target:
            out.append(k)
            if limit is not None and len(out) > limit:
                raise RuntimeError(f"more than {limit} paths")
            continue
        for d, w in succ.get(v, ()):
            stack.append((d, k + w))
    return out

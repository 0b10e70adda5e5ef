"""Path statistics: the DP against a brute-force enumerator on many random DAGs, and at scale."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from ahps_core.bench.paths_bench import ladder_dag, local_dag
from ahps_core.errors import NoPathError
from ahps_core.graph import Op, parse_arch
from ahps_core.paths import effective_depth, enumerate_paths, length_histogram, path_stats
from tests.dag_utils import random_dag


def brute_paths(graph):
    """Independent oracle: every input->output path as its list of edges (recursive, by edge lists)."""
    succ = {}
    for e in graph.edges:
        if e.op is not Op.ZERO:
            succ.setdefault(e.src, []).append(e)
    out = []

    def walk(v, acc):
        if v == graph.output:
            out.append(list(acc))
            return
        for e in succ.get(v, ()):
            acc.append(e)
            walk(e.dst, acc)
            acc.pop()

    walk(graph.input, [])
    return out


def test_dp_matches_enumeration_on_random_dags():
    rng = random.Random(1234)
    checked = with_paths = 0
    for _ in range(400):
        spec = random_dag(rng, rng.randint(2, 7), p_edge=rng.choice((0.3, 0.5, 0.8)))
        g = parse_arch(spec)
        paths = brute_paths(g)
        ks = [sum(e.op is Op.WEIGHT for e in p) for p in paths]
        checked += 1
        if not paths:
            with pytest.raises(NoPathError):
                path_stats(g)
            continue
        with_paths += 1
        for offset in (0, 1, 3):
            s = path_stats(g, offset=offset, histogram=True)
            ls = [k + offset for k in ks]
            assert s.num_paths == len(ls)
            assert (s.sum_l, s.sum_l2, s.sum_l3) == (sum(ls), sum(x**2 for x in ls), sum(x**3 for x in ls))
            assert (s.min_depth, s.max_depth) == (min(ls), max(ls))
            assert s.histogram == dict(Counter(ls))
        # Wu's effective depth: min over paths of weights + additions passed (vertices with >= 2 live inputs)
        eff = min(sum((e.op is Op.WEIGHT) + (g.in_degree(e.dst) >= 2) for e in p) for p in paths)
        assert effective_depth(g) == eff
        assert sorted(enumerate_paths(g)) == sorted(ks)
    assert checked == 400 and with_paths > 200


def test_collapse_quirk_only_when_no_path_has_a_weight():
    g = parse_arch("1_11_111_1111", "mlp")  # 8 skip-only paths
    assert path_stats(g, offset=3).sum_l3 == 8 * 27 == 216  # literal sum (E2f)
    collapsed = path_stats(g, offset=3, collapse_weightless=True)
    assert (collapsed.num_paths, collapsed.sum_l3, collapsed.collapsed) == (1, 27, True)
    g = parse_arch("2_11_111_1111", "mlp")  # one weight edge: no collapse
    assert path_stats(g, offset=3, collapse_weightless=True).sum_l3 == 364


def test_zero_edges_and_dead_branches_do_not_count():
    g = parse_arch({"edges": [
        {"from": "x", "to": "a", "op": "weight"}, {"from": "a", "to": "y", "op": "weight"},
        {"from": "x", "to": "b", "op": "zero"}, {"from": "b", "to": "y", "op": "weight"},
        {"from": "x", "to": "c", "op": "weight"}, {"from": "c", "to": "d", "op": "skip"},
    ], "input": "x", "output": "y"})
    s = path_stats(g)
    assert (s.num_paths, s.sum_l3) == (1, 8)
    assert g.in_degree(g.node_names.index("y")) == 1  # the edge from the dead vertex b carries nothing


def test_ten_thousand_vertex_dag_exact():
    g = local_dag(10_000, seed=0)
    assert g.num_nodes == 10_000 and 29_000 <= len(g.edges) <= 31_000
    s = path_stats(g, offset=3)
    # independent check of the count in log space (floats: no big integers involved)
    logn = [-math.inf] * g.num_nodes
    logn[0] = 0.0
    for e in sorted(g.path_edges, key=lambda e: e.src):  # vertices are numbered in topological order
        a, b = logn[e.dst], logn[e.src]
        hi = max(a, b)
        logn[e.dst] = hi + math.log(math.exp(a - hi) + math.exp(b - hi)) if hi > -math.inf else -math.inf
    assert math.log(s.num_paths) == pytest.approx(logn[-1], rel=1e-9)
    assert s.num_paths > 10**200
    mean_l = s.sum_l / s.num_paths
    assert s.min_depth <= mean_l <= s.max_depth
    # Cauchy-Schwarz-type consistency of the exact moments
    assert s.sum_l2 * s.num_paths >= s.sum_l**2
    assert s.sum_l3 * s.sum_l >= s.sum_l2**2


@pytest.mark.slow
def test_ten_thousand_vertex_histogram_sums_to_count():
    g = local_dag(10_000, seed=1)
    hist = length_histogram(g)
    s = path_stats(g)
    assert sum(hist.values()) == s.num_paths
    assert sum(k**3 * c for k, c in hist.items()) == s.sum_l3


def test_ladder_counts_are_tribonacci():
    trib = [1, 1, 2]
    for _ in range(30):
        trib.append(trib[-1] + trib[-2] + trib[-3])
    for n in (4, 10, 20, 30):
        assert path_stats(ladder_dag(n)).num_paths == trib[n - 1]  # the output is vertex n-1

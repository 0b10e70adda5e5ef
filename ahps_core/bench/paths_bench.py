"""``ahps bench paths``: the path-statistics DP against brute-force enumeration.

Growing "ladder" DAGs (vertex i reads vertices i-1, i-2, i-3 through randomly typed weight/skip edges, so
the number of input->output paths grows like the tribonacci numbers, ~1.84^n): for each size, the best-of-N
time of the DP and of enumerating every path, and their ratio, until one enumeration takes about
``--max-enum-seconds``. Then a 10,000-vertex / ~30,000-edge locally connected DAG:
exact moments, effective depth and the full length histogram by DP (enumeration is out of the question:
~e^500 paths).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ahps_core.checks import check_int
from ahps_core.graph import ArchGraph
from ahps_core.specs import parse_arch
from ahps_core.paths import effective_depth, enumerate_paths, length_histogram, path_stats

T = TypeVar("T")


def local_dag(n: int, *, seed: int = 0, max_pred: int = 5, window: int = 50, p_weight: float = 0.6) -> ArchGraph:
    """Vertex i>0 has 1..max_pred predecessors among the previous ``window`` vertices; weight or skip edges."""
    rng = random.Random(seed)
    names = [f"v{i}" for i in range(n)]
    edges = []
    for i in range(1, n):
        lo = max(0, i - window)
        for j in rng.sample(range(lo, i), min(i - lo, rng.randint(1, max_pred))):
            edges.append({"from": names[j], "to": names[i], "op": "weight" if rng.random() < p_weight else "skip"})
    return parse_arch({"nodes": names, "input": names[0], "output": names[-1], "edges": edges})


def ladder_dag(n: int, *, seed: int = 0, reach: int = 3, p_weight: float = 0.5) -> ArchGraph:
    """Vertex i reads vertices i-1..i-reach (those that exist); every path reaches the output."""
    rng = random.Random(seed)
    names = [f"v{i}" for i in range(n)]
    edges = [
        {"from": names[j], "to": names[i], "op": "weight" if rng.random() < p_weight else "skip"}
        for i in range(1, n) for j in range(max(0, i - reach), i)
    ]
    return parse_arch({"nodes": names, "input": names[0], "output": names[-1], "edges": edges})


def _best(fn: Callable[..., T], repeat: int, *args: Any) -> tuple[float, T]:
    """The best time of ``repeat`` (>= 1) calls of ``fn(*args)``, and the last call's result."""
    check_int("repeat", repeat, 1)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _fresh(g: ArchGraph) -> ArchGraph:
    """A copy without cached properties, so each timing includes the graph preprocessing."""
    return ArchGraph(g.num_nodes, g.edges, g.family, g.spec, g.input, g.output, g.node_names, g.depth_offset)


def run(max_enum_seconds: float = 10.0, big_nodes: int = 10_000, repeat: int = 3, seed: int = 0) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    n = 6
    verbose = sys.stderr.isatty()
    while True:
        g = ladder_dag(n, seed=seed)
        dp_t, stats = _best(lambda graph: path_stats(_fresh(graph)), repeat, g)
        enum_repeat = repeat if not rows or rows[-1]["enum_s"] < 1.0 else 1
        enum_t, ks = _best(enumerate_paths, enum_repeat, g)
        assert len(ks) == stats.num_paths and sum(k**3 for k in ks) == stats.sum_l3  # same answer
        rows.append({"nodes": n, "edges": len(g.edges), "paths": stats.num_paths, "dp_s": dp_t,
                     "enum_s": enum_t, "speedup": enum_t / dp_t})
        if verbose:
            click.echo(f"  n={n:4d} edges={len(g.edges):5d} paths={stats.num_paths:>12,d} "
                       f"dp={dp_t * 1e3:8.3f} ms  enum={enum_t:8.3f} s  ratio={enum_t / dp_t:10.0f}x", err=True)
        if enum_t * 1.84**2 > max_enum_seconds:  # the next size would exceed the budget
            break
        n += 2
    big = local_dag(big_nodes, seed=seed)
    mom_t, stats = _best(lambda: path_stats(_fresh(big)), repeat)
    eff_t, eff = _best(lambda: effective_depth(_fresh(big)), repeat)
    hist_t, hist = _best(lambda: length_histogram(_fresh(big)), 1)
    assert sum(hist.values()) == stats.num_paths
    return {
        "growing": rows,
        "big": {
            "nodes": big.num_nodes, "edges": len(big.edges), "ln_paths": math.log(stats.num_paths),
            "max_depth": stats.max_depth, "moments_s": mom_t, "effective_depth_s": eff_t,
            "histogram_s": hist_t, "effective_depth": eff,
        },
    }


@click.command("paths")
@click.option("--max-enum-seconds", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Grow the DAG until one brute-force enumeration takes about this long.")
@click.option("--big-nodes", type=click.IntRange(min=10), default=10_000, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Best of N.")
@click.option("--json", "as_json", is_flag=True)
def command(max_enum_seconds: float, big_nodes: int, repeat: int, as_json: bool) -> None:
    """Path DP vs brute-force enumeration on growing DAGs, then the 10,000-vertex DAG."""
    result = run(max_enum_seconds, big_nodes, repeat)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{'nodes':>6} {'edges':>6} {'paths':>14} {'DP (ms)':>9} {'enum (s)':>9} {'enum/DP':>10}")
    for r in result["growing"]:
        click.echo(f"{r['nodes']:>6} {r['edges']:>6} {r['paths']:>14,d} {r['dp_s'] * 1e3:>9.3f} "
                   f"{r['enum_s']:>9.3f} {r['speedup']:>9.0f}x")
    b = result["big"]
    click.echo(
        f"\n{b['nodes']:,}-vertex DAG, {b['edges']:,} edges, ~e^{b['ln_paths']:.0f} paths, depth {b['max_depth']}:\n"
        f"  exact moments (count, sum L, L^2, L^3, min/max): {b['moments_s'] * 1e3:.1f} ms\n"
        f"  effective depth (Wu):                         {b['effective_depth_s'] * 1e3:.1f} ms\n"
        f"  exact length histogram:                       {b['histogram_s'] * 1e3:.1f} ms"
    )

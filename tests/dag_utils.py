"""Random DAG generators shared by tests (graph-family mappings)."""

from __future__ import annotations

import random

OPS = ("weight", "skip", "pool", "zero")


def random_dag(rng: random.Random, n: int, p_edge: float = 0.5, max_parallel: int = 2) -> dict:
    """A random DAG mapping on nodes v0..v{n-1} (v0 input, v{n-1} output) with random typed edges,
    parallel edges allowed. Every node gets at least one edge so the spec is valid."""
    names = [f"v{i}" for i in range(n)]
    edges = []
    for dst in range(1, n):
        for src in range(dst):
            for _ in range(rng.randint(1, max_parallel)):
                if rng.random() < p_edge:
                    edges.append({"from": names[src], "to": names[dst], "op": rng.choice(OPS),
                                  "kernel": rng.choice((1, 3, 5))})
    touched = {e["from"] for e in edges} | {e["to"] for e in edges}
    for i, name in enumerate(names):
        if name not in touched:
            j = i + 1 if i + 1 < n else i - 1
            a, b = sorted((i, j))
            edges.append({"from": names[a], "to": names[b], "op": "zero"})
    return {"nodes": names, "input": names[0], "output": names[-1], "edges": edges}


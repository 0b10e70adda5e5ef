"""Why topologies deviate from the sum-cubed rule: the diagnostics of an ``ahps validate`` report (not a rule).

**Coherent paths.** Chen et al.'s derivation adds the one-step updates of the input->output paths as if they were
independent: ``E[dz^2] ~ eta^2 * sum_p L_p^3`` (the cross-path terms are elided, Appendix B eq. 26). Paths that
pass *the same weight layers* and differ only in their skip edges carry the same signal, so their contributions
are identical, not independent: ``m`` such paths add like one path of ``m`` times the amplitude, ``m^2`` times
the energy. Grouping the paths by the set of weight layers they traverse (group ``g``: ``m_g`` paths, ``k_g``
weight layers, depth ``L_g = k_g + offset`` of the convention) gives the *coherent* sum
``sum_g m_g^2 * L_g^3``, which equals ``sum_p L_p^3`` when no two paths share their weight layers (chains, the
dense ``2_22_222_2222``: nothing changes there) and grows with the number of skip-parallel copies (e.g.
``1_11_111_1111``: 8 copies of the stem's output, 64x the proxy's energy, where the reference convention's
collapse predicts the proxy's LR). The coherent prediction is ``base_lr * sqrt(coherent_base / coherent_target)``
times the rule's kernel factor; no collapse of weightless DAGs is needed (it is what the coherence counts).

:func:`explain` adds, per ``sum-cubed`` comparison, the coherent predictions and their fit
(:func:`ahps_core.validate_stats.fit_stats`), and lists the topologies that deviate most from the rule (ratio
measured/predicted, direction, number of paths, skip edges on paths, the largest group of skip-parallel
paths). Paths are enumerated (5-vertex DAGs and NB201 cells have at most 8 and 4): a graph with more than
:data:`PATH_LIMIT` paths is left out of the diagnostic. Pure Python.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ahps_core.graph import ArchGraph, Op
from ahps_core.validate_stats import fit_stats

PATH_LIMIT = 100_000
DEVIATION_FACTOR = 1.5


def weight_groups(graph: ArchGraph, limit: int = PATH_LIMIT) -> Counter[frozenset[int]] | None:
    """How many input->output paths pass each set of weight edges (edge indices); None above ``limit`` paths."""
    succ: dict[int, list[tuple[int, int | None]]] = {}
    on_paths = set(graph.path_edges)
    for i, e in enumerate(graph.edges):
        if e in on_paths:
            succ.setdefault(e.src, []).append((e.dst, i if e.op is Op.WEIGHT else None))
    groups: Counter[frozenset[int]] = Counter()
    stack: list[tuple[int, frozenset[int]]] = [(graph.input, frozenset())]
    count = 0
    while stack:
        v, ws = stack.pop()
        if v == graph.output:
            groups[ws] += 1
            count += 1
            if count > limit:
                return None
            continue
        for d, w in succ.get(v, ()):
            stack.append((d, ws | {w} if w is not None else ws))
    return groups


def coherent_sum_l3(graph: ArchGraph, offset: int) -> int | None:
    """``sum_g m_g^2 (k_g + offset)^3`` over the weight-layer groups of ``graph``'s paths (module docstring)."""
    groups = weight_groups(graph)
    if groups is None:
        return None
    return sum(m * m * (len(ws) + offset) ** 3 for ws, m in groups.items())


def _skips_on_paths(graph: ArchGraph) -> int:
    return sum(1 for e in graph.path_edges if e.op is not Op.WEIGHT)


def explain(
    comparisons: Sequence[dict[str, Any]], graphs: Mapping[str, ArchGraph], proxy: ArchGraph, base_lr: float,
    *, n_boot: int = 0,
) -> dict[str, Any]:
    """Add ``coherent_paths`` to every ``sum-cubed`` comparison (in place) and return the deviations of the first
    comparison: ``{rule, convention, factor, below, above}`` (points whose measured/predicted ratio is below
    ``1 / factor`` or above ``factor``, most deviating first)."""
    from ahps_core.scaling import depth_convention

    for comp in comparisons:
        if comp["rule"] != "sum-cubed":
            continue
        offset = depth_convention(proxy, comp["convention"]).offset
        base = coherent_sum_l3(proxy, offset)
        pts = []
        for p in comp["points"]:
            g = graphs.get(p["arch"])
            total = coherent_sum_l3(g, depth_convention(g, comp["convention"]).offset) if g is not None else None
            if base is None or not total or total <= 0:
                continue
            kernel = p.get("kernel_factor", 1.0) or 1.0
            pts.append({"arch": p["arch"], "measured_lr": p["measured_lr"],
                        "predicted_lr": base_lr * math.sqrt(base / total) * kernel, "coherent_sum_l3": total})
        fit = fit_stats([q["predicted_lr"] for q in pts], [q["measured_lr"] for q in pts], n_boot=n_boot)
        comp["coherent_paths"] = {**fit, "points": pts}
    head = comparisons[0]
    rows = []
    for p in head["points"]:
        g = graphs.get(p["arch"])
        groups = weight_groups(g) if g is not None else None
        rows.append({
            "arch": p["arch"], "ratio": p["measured_lr"] / p["predicted_lr"], "measured_lr": p["measured_lr"],
            "predicted_lr": p["predicted_lr"], "num_paths": p.get("num_paths"),
            "skips_on_paths": _skips_on_paths(g) if g is not None else None,
            "largest_parallel_group": max(groups.values()) if groups else None,
        })
    below = sorted((r for r in rows if r["ratio"] < 1 / DEVIATION_FACTOR), key=lambda r: r["ratio"])
    above = sorted((r for r in rows if r["ratio"] > DEVIATION_FACTOR), key=lambda r: -r["ratio"])
    return {"rule": head["rule"], "convention": head["convention"], "factor": DEVIATION_FACTOR, "below": below,
            "above": above}


__all__ = ["DEVIATION_FACTOR", "PATH_LIMIT", "coherent_sum_l3", "explain", "weight_groups"]

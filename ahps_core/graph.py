"""Architecture graphs: vertices and typed edges.

An :class:`ArchGraph` is a directed acyclic multigraph. Vertex ``input`` holds the network's input (for the
reference families: the stem's output), vertex ``output`` feeds the readout. Every edge has a type:

* ``weight``: a parametrized layer (Linear+ReLU, Conv+ReLU, NB201's ReLU-Conv-BN) with a kernel side length;
* ``skip``: the identity;
* ``pool``: a parameter-free op that carries signal but no weight (NB201's ``avg_pool_3x3``);
* ``zero``: a disabled edge (no forward or backward signal).

Graphs are parsed from every accepted spec form (DAG codes, NB201 cells, graph files) by :mod:`ahps_core.specs`;
its names (``parse_arch``, ``nb201_code``, ``NB201_OPS``, ...) can also be imported from here.

This module is pure Python: no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ahps_core.errors import ArchSpecError

if TYPE_CHECKING:
    from ahps_core.specs import (
        DAG_DIGITS,
        GRAPH_OP_ALIASES,
        NB201_NODES,
        NB201_OP_TYPES,
        NB201_OPS,
        detect_family,
        nb201_arch_str,
        nb201_arch_string,
        nb201_code,
        parse_arch,
        parse_nb201_arch_str,
        split_family_prefix,
    )

#: Families of architecture specs: the three model families and ``graph`` (a file of nodes and typed edges).
FAMILIES = ("mlp", "cnn", "nb201", "graph")



class Op(str, Enum):
    """Edge types of an architecture graph."""

    WEIGHT = "weight"
    SKIP = "skip"
    POOL = "pool"
    ZERO = "zero"


@dataclass(frozen=True, slots=True)
class Edge:
    """One typed edge ``src -> dst``. ``kernel`` is the side length of a weight layer's kernel (1 for
    linear layers and 1x1 convs); ``name`` is the op's name in the source spec (e.g. ``nor_conv_3x3``)."""

    src: int
    dst: int
    op: Op
    kernel: int = 1
    name: str = ""

    @property
    def carries_signal(self) -> bool:
        return self.op is not Op.ZERO





@dataclass(frozen=True)
class ArchGraph:
    """A validated architecture DAG.

    ``spec`` is the canonical spec string the graph was parsed from (DAG code, NB201 arch string, or file
    path); ``depth_offset`` is the family's constant path-depth offset *as declared by the spec itself*
    (only ``graph`` files set it; the reference families' offsets are a matter of convention and live in
    :mod:`ahps_core.scaling`).
    """

    num_nodes: int
    edges: tuple[Edge, ...]
    family: str
    spec: str
    input: int = 0
    output: int = -1
    node_names: tuple[str, ...] = field(default=(), compare=False)
    depth_offset: int = 0

    def __post_init__(self) -> None:
        if self.output == -1:
            object.__setattr__(self, "output", self.num_nodes - 1)

    # -- structure -------------------------------------------------------------------------------------------
    @cached_property
    def topological_order(self) -> tuple[int, ...]:
        return _toposort(self.num_nodes, self.edges, self.spec)

    @cached_property
    def signal_edges(self) -> tuple[Edge, ...]:
        """Edges that carry signal (every type but ``zero``)."""
        return tuple(e for e in self.edges if e.carries_signal)

    @cached_property
    def live_nodes(self) -> frozenset[int]:
        """Vertices reachable from the input through signal-carrying edges."""
        return frozenset(_reach(self.input, self.signal_edges, forward=True))

    @cached_property
    def useful_nodes(self) -> frozenset[int]:
        """Vertices on at least one input->output path of signal-carrying edges."""
        return self.live_nodes & frozenset(_reach(self.output, self.signal_edges, forward=False))

    @cached_property
    def path_edges(self) -> tuple[Edge, ...]:
        """Signal-carrying edges on at least one input->output path."""
        useful = self.useful_nodes
        return tuple(e for e in self.signal_edges if e.src in useful and e.dst in useful)

    @property
    def has_path(self) -> bool:
        return self.output in self.useful_nodes

    def in_degree(self, node: int) -> int:
        """Number of live signal-carrying inputs of ``node`` (skips and pools included, zero edges and edges
        from vertices the input never reaches excluded). The input vertex counts as 1."""
        return self._in_degrees[node]

    @cached_property
    def _in_degrees(self) -> tuple[int, ...]:
        deg = [0] * self.num_nodes
        live = self.live_nodes
        for e in self.signal_edges:
            if e.src in live:
                deg[e.dst] += 1
        deg[self.input] = max(deg[self.input], 1)
        return tuple(deg)

    @cached_property
    def weight_kernels(self) -> frozenset[int]:
        """Kernel sizes of the weight edges on input->output paths."""
        return frozenset(e.kernel for e in self.path_edges if e.op is Op.WEIGHT)

    def with_kernel(self, kernel: int) -> ArchGraph:
        """The same graph with every weight edge's kernel set to ``kernel`` (for ``cnn`` DAG codes)."""
        edges = tuple(
            Edge(e.src, e.dst, e.op, kernel if e.op is Op.WEIGHT else e.kernel, e.name) for e in self.edges
        )
        return ArchGraph(
            self.num_nodes, edges, self.family, self.spec, self.input, self.output, self.node_names,
            self.depth_offset,
        )

    def node_label(self, node: int) -> str:
        return self.node_names[node] if self.node_names else str(node)

    def to_dict(self) -> dict:
        """A ``graph``-family mapping of this graph (round-trips through :func:`ahps_core.specs.parse_arch`)."""
        names = [self.node_label(v) for v in range(self.num_nodes)]
        return {
            "nodes": names,
            "input": names[self.input],
            "output": names[self.output],
            "depth_offset": self.depth_offset,
            "edges": [
                {"from": names[e.src], "to": names[e.dst], "op": e.op.value, "kernel": e.kernel}
                for e in self.edges
            ],
        }



# --- graph algorithms ---------------------------------------------------------------------------------------


def _toposort(n: int, edges: tuple[Edge, ...], spec: str) -> tuple[int, ...]:
    """Kahn's algorithm; a cycle is an :class:`ArchSpecError` naming vertices on it."""
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for e in edges:
        indeg[e.dst] += 1
        succ[e.src].append(e.dst)
    stack = [v for v in range(n) if indeg[v] == 0]
    stack.reverse()
    order: list[int] = []
    while stack:
        v = stack.pop()
        order.append(v)
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                stack.append(w)
    if len(order) != n:
        stuck = sorted(v for v in range(n) if indeg[v] > 0)
        raise ArchSpecError(f"graph {spec!r} has a cycle through node(s) {stuck[:10]}")
    return tuple(order)


def _reach(start: int, edges: Iterable[Edge], *, forward: bool) -> set[int]:
    adj: dict[int, list[int]] = {}
    for e in edges:
        a, b = (e.src, e.dst) if forward else (e.dst, e.src)
        adj.setdefault(a, []).append(b)
    seen = {start}
    stack = [start]
    while stack:
        v = stack.pop()
        for w in adj.get(v, ()):
            if w not in seen:
                seen.add(w)
                stack.append(w)
    return seen



__all__ = [
    "FAMILIES", "ArchGraph", "Edge", "Op",
    # from ahps_core.specs, loaded on first use (specs imports this module):
    "DAG_DIGITS", "GRAPH_OP_ALIASES", "NB201_NODES", "NB201_OPS", "NB201_OP_TYPES", "detect_family",
    "nb201_arch_str", "nb201_arch_string", "nb201_code", "parse_arch", "parse_nb201_arch_str", "split_family_prefix",
]
_SPEC_NAMES = frozenset(__all__[4:])


def __getattr__(name: str) -> Any:
    """The names of :mod:`ahps_core.specs` listed in ``__all__``, so that ``from ahps_core.graph import
    parse_arch`` keeps working without an import cycle."""
    if name in _SPEC_NAMES:
        from ahps_core import specs

        return getattr(specs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

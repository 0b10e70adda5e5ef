"""The whole NAS-Bench-201 macro network of a cell as one architecture graph (pure Python: no torch).

Wu et al.'s depth unit (``wu``, docs/conventions.md §2.7) counts every weight layer of the *whole* network, so for
an NB201 cell the graph it is counted on is the macro network :class:`ahps_core.models.nb201.TinyNetwork` builds
around it (docs/conventions.md §1.7, "NAS-Bench-201"), composed here from the cell's own graph:

* ``input -> stem``: the stem's 3x3 conv (a weight edge; its BN is transparent);
* three stages of ``cells_per_stage`` copies of the cell (node 0 of a copy is the previous copy's node 3; only the
  cell's input->output path edges are copied: weight, skip and pool edges as they are);
* between stages the reduction block: ``conv_a`` (3x3) then ``conv_b`` (3x3) on one path, the shortcut's 1x1 conv
  (after its transparent 2x2 average pooling) on the other, summed: an addition;
* the classifier (a weight edge; the last BN, ReLU and the global pooling are transparent).

This is the graph :func:`ahps_core.models.fx.extract_graph` recovers from the built network (tested), without torch.
The result is a ``graph``-family :class:`~ahps_core.graph.ArchGraph` whose depth units count every layer.
"""

from __future__ import annotations

from ahps_core.checks import check_int
from ahps_core.errors import ConfigError
from ahps_core.graph import ArchGraph, Edge, Op

#: How the cells of an NB201 network are built (:mod:`ahps_core.models.nb201`): ``full``, NB201's exact network
#: (every op of the cell); ``pruned``, only the ops on an input->output path.
CELL_MODES = ("full", "pruned")

#: NB201's cells per stage (N): 5 cells in each of the three stages.
NB201_CELLS_PER_STAGE = 5


def nb201_network_graph(cell: ArchGraph, cells_per_stage: int = NB201_CELLS_PER_STAGE) -> ArchGraph:
    """The whole macro network of the NB201 ``cell`` with ``cells_per_stage`` cells per stage (module docstring).

    Raises :class:`~ahps_core.errors.NoPathError` for a cell without an input->output path."""
    from ahps_core.paths import raw_moments

    if cell.family != "nb201":
        raise ConfigError(f"architecture {cell.spec!r} is a {cell.family} spec: the macro network needs an nb201 cell")
    check_int("cells per stage", cells_per_stage, 1)
    raw_moments(cell)  # NoPathError, with its message, for a cell that no signal crosses
    names = ["input"]
    edges: list[Edge] = []

    def vertex(name: str) -> int:
        names.append(name)
        return len(names) - 1

    current = vertex("stem")
    edges.append(Edge(0, current, Op.WEIGHT, 3, "stem"))
    useful = [v for v in cell.topological_order if v in cell.useful_nodes and v != cell.input]
    for stage in range(3):
        for i in range(cells_per_stage):
            nodes = {cell.input: current}
            for v in useful:
                nodes[v] = vertex(f"stage{stage + 1}.cell{i + 1}.node{cell.node_label(v)}")
            edges += [Edge(nodes[e.src], nodes[e.dst], e.op, e.kernel, e.name) for e in cell.path_edges]
            current = nodes[cell.output]
        if stage < 2:
            conv_a, total = vertex(f"reduction{stage + 1}.conv_a"), vertex(f"reduction{stage + 1}.sum")
            edges += [Edge(current, conv_a, Op.WEIGHT, 3, "conv_a"), Edge(conv_a, total, Op.WEIGHT, 3, "conv_b"),
                      Edge(current, total, Op.WEIGHT, 1, "shortcut")]
            current = total
    output = vertex("output")
    edges.append(Edge(current, output, Op.WEIGHT, 1, "classifier"))
    return ArchGraph(len(names), tuple(edges), "graph", f"nb201-network({cell.spec}, N={cells_per_stage})",
                     input=0, output=output, node_names=tuple(names))


__all__ = ["NB201_CELLS_PER_STAGE", "nb201_network_graph"]

"""MLP and CNN networks over a DAG cell, as in the reference code (docs/conventions.md §1.7, "Networks").

Layout, exactly as the reference's ``models/mlp_dags.py`` / ``models/cnn_dags.py``:

* stem: MLP ``flatten -> Linear(in_dim, width) -> ReLU``; CNN ``Conv k x k (in_ch, width, stride 1, padding
  (k-1)//2) -> ReLU``. Its output is DAG vertex 0.
* vertex t = sum over the edges ``f -> t`` of ``op(vertex f)``: a weight edge is ``Linear(width, width) -> ReLU``
  (CNN: ``Conv k x k`` same padding ``-> ReLU``), so the ReLU sits *inside* the edge and vertices hold sums of
  post-activations; a skip edge is the identity; a zero edge contributes nothing and is not computed.
* readout: ``Linear(width, classes)`` on the last vertex (CNN: global average pooling first).

One deliberate difference: only the edges on input->output paths (:attr:`ArchGraph.path_edges`) are built.
The reference also computes vertices the input never reaches (``x * 0`` followed by Linear+ReLU gives
``ReLU(bias)``, a learnable constant that is 0 at init) and vertices that never reach the output (their
parameters get no gradient). Neither carries input signal; leaving them out makes the model compute exactly the
signal graph, which is also what :func:`ahps_core.models.fx.extract_graph` recovers from it. (Parameter counts
are lower than the reference's for such graphs by the omitted layers.)
"""

from __future__ import annotations

import math

import torch
import torch.fx
from torch import nn

from ahps_core.graph import ArchGraph, Op

#: ``(vertex, ((source vertex, index into DagNet.layers or -1 for a skip), ...))`` in topological order.
NodePlan = tuple[tuple[int, tuple[tuple[int, int], ...]], ...]


def node_plan(graph: ArchGraph, layer_of_edge: dict[int, int], *, every_edge: bool = False) -> NodePlan:
    """The per-vertex summation plan over ``graph``'s input->output path edges, computed once at build time.

    ``layer_of_edge`` maps the index of each weight or pool edge in ``graph.edges`` to its module's index;
    edges missing from it (skips) are identities. ``every_edge``: plan every signal-carrying edge and every vertex
    but the input instead (NB201's ``cell=full``); a vertex without one holds zeros, as NB201's ``none`` ops give.
    """
    keep = set(graph.signal_edges if every_edge else graph.path_edges)
    terms: dict[int, list[tuple[int, int]]] = {}
    if every_edge:
        terms = {v: [] for v in range(graph.num_nodes) if v != graph.input}
    for i, e in enumerate(graph.edges):
        if e in keep:
            terms.setdefault(e.dst, []).append((e.src, layer_of_edge.get(i, -1)))
    return tuple((v, tuple(terms[v])) for v in graph.topological_order if v in terms)


@torch.fx.wrap
def vertex_sum(*terms: torch.Tensor) -> torch.Tensor:
    """The sum of a vertex's input terms. torch.fx records it as one call (``torch.fx.wrap``), so the graph
    extracted from our models has exactly one merge vertex per DAG vertex with several inputs, with the DAG's
    in-degree (a chain of binary ``+`` is ambiguous there, see :mod:`ahps_core.models.fx`)."""
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


def run_plan(plan: NodePlan, layers: nn.ModuleList, x: torch.Tensor, num_nodes: int, inp: int) -> list:
    """Evaluate a :data:`NodePlan`: vertex ``inp`` holds ``x``; every planned vertex is the sum of its terms (zeros
    shaped like ``x`` for a vertex planned without any)."""
    nodes: list = [None] * num_nodes
    nodes[inp] = x
    for v, terms in plan:
        ys = [nodes[src] if li < 0 else layers[li](nodes[src]) for src, li in terms]
        nodes[v] = torch.zeros_like(x) if not ys else ys[0] if len(ys) == 1 else vertex_sum(*ys)
    return nodes


class DagNet(nn.Module):
    """The reference MLP (``family="mlp"``) or CNN (``family="cnn"``) over the DAG ``graph``.

    ``layers[i]`` is the ``Linear/Conv -> ReLU`` block of weight edge ``graph.edges[edge_index[i]]``.
    ``kernel_size`` is the stem's kernel side (CNN); weight edges use their own ``Edge.kernel``.
    """

    def __init__(
        self, graph: ArchGraph, *, in_shape: tuple[int, ...], num_classes: int, width: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.graph = graph
        self.family = graph.family
        self.width = width
        self.num_classes = num_classes
        cnn = self.family == "cnn"
        self.stem: nn.Conv2d | nn.Linear
        if cnn:
            self.stem = nn.Conv2d(in_shape[0], width, kernel_size, stride=1, padding=(kernel_size - 1) // 2)
        else:
            self.stem = nn.Linear(math.prod(in_shape), width)
        self.stem_act = nn.ReLU(inplace=True)
        layers: list[nn.Sequential] = []
        edge_index: list[int] = []
        layer_of_edge: dict[int, int] = {}
        path = set(graph.path_edges)
        for i, e in enumerate(graph.edges):
            if e.op is Op.WEIGHT and e in path:
                layer_of_edge[i] = len(layers)
                edge_index.append(i)
                if cnn:
                    k = e.kernel
                    lin: nn.Module = nn.Conv2d(width, width, k, stride=1, padding=(k - 1) // 2)
                else:
                    lin = nn.Linear(width, width)
                layers.append(nn.Sequential(lin, nn.ReLU(inplace=True)))
        self.layers = nn.ModuleList(layers)
        self.edge_index: tuple[int, ...] = tuple(edge_index)
        self.readout = nn.Linear(width, num_classes)
        self._plan = node_plan(graph, layer_of_edge)
        self._num_nodes = graph.num_nodes
        self._input = graph.input
        self._output = graph.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward_vertices(x)[self._output]
        if self.family == "cnn":
            out = out.mean((2, 3))
        return self.readout(out)

    def forward_vertices(self, x: torch.Tensor) -> list:
        """Values of every DAG vertex for input ``x`` (vertex 0 is the stem's output; ``None`` for vertices
        that are not computed because they are on no input->output path)."""
        if self.family == "mlp":
            x = torch.flatten(x, 1)
        h = self.stem_act(self.stem(x))
        return run_plan(self._plan, self.layers, h, self._num_nodes, self._input)

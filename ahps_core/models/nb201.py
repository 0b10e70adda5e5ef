"""The NAS-Bench-201 macro network (``TinyNetwork``) for any cell (docs/conventions.md §1.7, "NAS-Bench-201").

Written to match NB201's own code (D-X-Y/AutoDL-Projects ``lib/models/cell_operations.py``,
``lib/models/cell_infers/cells.py``, ``lib/models/cell_infers/tiny_network.py``) and the reference's copy of it:

* stem: ``Conv3x3(in_ch, C, padding 1, no bias) -> BN(C)``;
* three stages of ``N`` cells with ``C``, ``2C``, ``4C`` channels; between stages a ``ResNetBasicblock`` with
  stride 2: ``conv_a = ReLU -> Conv3x3 stride 2 (no bias) -> BN``, ``conv_b = ReLU -> Conv3x3 (no bias) -> BN``,
  shortcut ``AvgPool2d(2, 2) -> Conv1x1 (no bias)`` (no BN, no ReLU), output ``shortcut + conv_b(conv_a(x))``;
* ``lastact = BN -> ReLU``, global average pooling, ``Linear(4C, classes)``.

Cell ops: ``nor_conv_kxk = ReLU -> Conv kxk (no bias, same padding) -> BN(affine, track_running_stats)``;
``avg_pool_3x3 = AvgPool2d(3, stride 1, padding 1, count_include_pad=False)``; ``skip_connect`` the identity;
``none`` contributes nothing and is not computed (NB201 computes ``x.mul(0.)``). Node j is the sum over i < j of
``op_ij(node i)``, in source order; the cell's output is node 3.

Cells (:data:`CELL_MODES`): ``cell="full"`` is NB201's exact network: every op of the cell is built and evaluated,
also those off every input->output path -- ops out of nodes the cell input never reaches (a node whose inputs are
all ``none`` holds zeros, so a conv out of it outputs its BN shift, a learnable constant that is 0 at init) and ops
into nodes that never reach node 3 (they get no gradient). Its parameter counts equal the benchmark's records for
every cell. ``cell="pruned"`` (the default of :func:`ahps_core.models.build_model`) builds, as for the DAG
networks (:mod:`ahps_core.models.dag`), only the ops on input->output paths: the same output at init, but fewer
parameters for cells with convs off every path (3,976 of NB201's 15,284 cells with a path; both tested against the
NATS-Bench records in ``tests/test_models.py``). NB201's re-evaluation protocol uses ``full``
(:mod:`ahps_core.protocol`).
"""

from __future__ import annotations

import torch
from torch import nn

from ahps_core.nb201_graph import CELL_MODES
from ahps_core.checks import check_choice
from ahps_core.graph import ArchGraph, Op
from ahps_core.models.dag import node_plan, run_plan

#: ``full``: NB201's exact cell (every op built); ``pruned``: only the ops on input->output paths.


class ReLUConvBN(nn.Module):
    """NB201's ``ReLUConvBN``: ``ReLU -> Conv(no bias) -> BatchNorm2d(affine=True, track_running_stats=True)``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=True, track_running_stats=True),
        )

    @property
    def conv(self) -> nn.Conv2d:
        conv = self.op[1]
        assert isinstance(conv, nn.Conv2d)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResNetBasicblock(nn.Module):
    """NB201's stride-2 reduction block between stages (see the module docstring)."""

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(inplanes, planes, 3, 2)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
        )
        self.out_dim = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class InferCell(nn.Module):
    """One NB201 cell over the 4-node ``graph``; ``layers[i]`` is the op of ``graph.edges[edge_index[i]]``;
    ``cell``: one of :data:`CELL_MODES` (module docstring)."""

    def __init__(self, graph: ArchGraph, channels: int, cell: str = "pruned") -> None:
        super().__init__()
        full = check_choice("cell", cell, CELL_MODES) == "full"
        layers: list[nn.Module] = []
        edge_index = []
        layer_of_edge = {}
        built = set(graph.signal_edges if full else graph.path_edges)
        for i, e in enumerate(graph.edges):
            if e not in built or e.op is Op.SKIP:
                continue
            layer_of_edge[i] = len(layers)
            edge_index.append(i)
            if e.op is Op.WEIGHT:
                layers.append(ReLUConvBN(channels, channels, e.kernel, 1))
            else:  # Op.POOL: avg_pool_3x3
                layers.append(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False))
        self.layers = nn.ModuleList(layers)
        self.edge_index: tuple[int, ...] = tuple(edge_index)
        self.out_dim = channels
        self._plan = node_plan(graph, layer_of_edge, every_edge=full)
        self._num_nodes = graph.num_nodes
        self._input = graph.input
        self._output = graph.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_plan(self._plan, self.layers, x, self._num_nodes, self._input)[self._output]


class TinyNetwork(nn.Module):
    """NB201's macro network with ``N`` cells per stage and ``C`` channels in the first stage (benchmark: C=16,
    N=5), its cells built as ``cell`` says (:data:`CELL_MODES`). Returns the logits only (NB201's own returns
    ``(features, logits)``)."""

    def __init__(self, graph: ArchGraph, *, in_channels: int, num_classes: int, C: int = 16, N: int = 5,
                 cell: str = "pruned") -> None:
        super().__init__()
        self.graph = graph
        self.family = "nb201"
        self.C = C
        self.N = N
        self.cell = check_choice("cell", cell, CELL_MODES)
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        channels = [C] * N + [2 * C] + [2 * C] * N + [4 * C] + [4 * C] * N
        reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        cells: list[nn.Module] = []
        c_prev = C
        for c_curr, reduction in zip(channels, reductions, strict=True):
            cells.append(ResNetBasicblock(c_prev, c_curr) if reduction else InferCell(graph, c_curr, self.cell))
            c_prev = c_curr
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature)
        out = self.global_pooling(self.lastact(feature))
        return self.classifier(torch.flatten(out, 1))

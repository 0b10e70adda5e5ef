"""Build a model from an :class:`ArchGraph`, and the one-hidden-layer proxy of each family."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ahps_core.checks import check_choice, check_int
from ahps_core.errors import ConfigError
from ahps_core.graph import ArchGraph, Op
from ahps_core.models.dag import DagNet
from ahps_core.models.nb201 import TinyNetwork
from ahps_core.nb201_graph import CELL_MODES
from ahps_core.paths import raw_moments
from ahps_core.scaling import default_base

MODEL_FAMILIES = ("mlp", "cnn", "nb201")
DEFAULT_WIDTH = {"mlp": 256, "cnn": 64}
DEFAULT_KERNEL = 3

#: The proxy (base) network of each family, on which the base LR is searched (docs/conventions.md §1.6 step 1: the
#: "L = 1" network, input -> hidden -> output). mlp/cnn: the DAG ``1`` (stem -> one skip -> readout, the
#: reference's ``DEPTHS_BASE=[3]``, docs/conventions.md §1.7); nb201: the cell ``1_01_001`` (a chain of skips, i.e. an
#: identity cell) inside the same macro network, so stem, reduction blocks and head are those of every target
#: (the reference's ``DEPTHS_BASE=[1]`` for NB201). These are :func:`ahps_core.scaling.default_base`'s graphs.
PROXY_SPECS = {"mlp": "1", "cnn": "1", "nb201": "1_01_001"}


def build_model(
    graph: ArchGraph,
    *,
    num_classes: int,
    in_shape: tuple[int, ...],
    width: int | None = None,
    C: int = 16,
    N: int = 5,
    init: str = "arch-aware",
    degree: str = "source",
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
    cell: str = "pruned",
    indegree: str = "live",
) -> nn.Module:
    """The network of ``graph`` (family ``mlp``, ``cnn`` or ``nb201``), initialized with ``init``.

    * ``in_shape``: one input's shape, ``(channels, height, width)`` (any shape for ``mlp``: it is flattened).
    * ``width``: hidden width of ``mlp`` (default 256) and ``cnn`` (default 64) networks; ``nb201`` uses ``C``
      (channels of the first stage) and ``N`` (cells per stage) instead.
    * ``kernel_size`` (``cnn`` only): overrides the kernel side of the stem and of every weight edge; by default
      the graph's weight-edge kernel (3 when the graph has no weight edge). The model's ``graph`` attribute
      carries the kernel actually used.
    * ``init``/``degree``/``indegree``/``generator``: see :func:`ahps_core.init.initialize`.
    * ``cell`` (``nb201`` only): ``full`` (NB201's exact cell, every op built) or ``pruned`` (only the ops on
      input->output paths, the default; :mod:`ahps_core.models.nb201`). mlp/cnn DAG networks are always pruned.

    Raises :class:`NoPathError` for a graph without an input->output path and :class:`ConfigError` for bad
    options.
    """
    from ahps_core.init import initialize  # local: ahps_core.init imports the model classes

    fam = graph.family
    if fam not in MODEL_FAMILIES:
        raise ConfigError(
            f"cannot build a model for family {fam!r}: accepted families are {', '.join(MODEL_FAMILIES)} "
            "(a 'graph' spec describes paths, not layers)"
        )
    raw_moments(graph)  # raises NoPathError (with its message) when no input->output path exists
    check_int("num_classes", num_classes, 1)
    check_choice("cell", cell, CELL_MODES)
    if cell != "pruned" and fam != "nb201":
        raise ConfigError(f"cell {cell!r} applies to nb201 cells only: {fam} DAG networks build the ops on "
                          "input->output paths (cell 'pruned')")
    shape = _check_shape(in_shape, fam)
    if fam == "nb201":
        if width is not None:
            raise ConfigError(f"width {width!r} does not apply to nb201: set C (channels of the first stage)")
        if kernel_size is not None:
            raise ConfigError(f"kernel_size {kernel_size!r} does not apply to nb201 (its ops fix their kernels)")
        check_int("C", C, 1)
        check_int("N", N, 1)
        model: nn.Module = TinyNetwork(graph, in_channels=shape[0], num_classes=num_classes, C=C, N=N, cell=cell)
    else:
        width = DEFAULT_WIDTH[fam] if width is None else check_int("width", width, 1)
        if fam == "mlp":
            if kernel_size is not None:
                raise ConfigError(f"kernel_size {kernel_size!r} does not apply to mlp (cnn only)")
            stem_kernel = 1
        else:
            if kernel_size is not None:
                stem_kernel = check_int("kernel_size", kernel_size, 1)
                graph = graph.with_kernel(stem_kernel)
            else:
                kernels = {e.kernel for e in graph.path_edges if e.op is Op.WEIGHT}
                stem_kernel = max(kernels) if kernels else DEFAULT_KERNEL
        model = DagNet(graph, in_shape=shape, num_classes=num_classes, width=width, kernel_size=stem_kernel)
    return initialize(model, init, degree=degree, indegree=indegree, generator=generator)


def proxy_graph(family: str, *, kernel_size: int | None = None) -> ArchGraph:
    """The graph of ``family``'s proxy network: :func:`ahps_core.scaling.default_base`, the base the transfer
    rules measure every target against (its spec is :data:`PROXY_SPECS`)."""
    if family not in MODEL_FAMILIES:
        raise ConfigError(f"unknown model family {family!r}: accepted are {', '.join(MODEL_FAMILIES)}")
    return default_base(family, base_kernel_size=kernel_size if family == "cnn" else None)


def build_proxy(
    family: str,
    *,
    num_classes: int,
    in_shape: tuple[int, ...],
    width: int | None = None,
    C: int = 16,
    N: int = 5,
    init: str = "arch-aware",
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """The one-hidden-layer proxy of ``family`` (:data:`PROXY_SPECS`), on which the base LR is searched.

    For mlp/cnn it is stem -> readout with one hidden layer; every in-degree is 1, so both degree rules agree.
    For nb201 it is the macro network (stem, two reduction blocks, head) with identity cells.
    """
    graph = proxy_graph(family, kernel_size=kernel_size)
    return build_model(
        graph, num_classes=num_classes, in_shape=in_shape, width=width, C=C, N=N, init=init,
        kernel_size=kernel_size, generator=generator,
    )


def _check_shape(in_shape: object, family: str) -> tuple[int, ...]:
    shape: tuple[Any, ...]
    try:
        shape = tuple(in_shape)  # type: ignore[arg-type]
    except TypeError:
        shape = ()
    ok = bool(shape) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    if family != "mlp" and len(shape) != 3:
        ok = False
    if not ok:
        need = "a tuple of positive ints" if family == "mlp" else "(channels, height, width) of positive ints"
        raise ConfigError(f"in_shape {in_shape!r} for {family}: expected {need}")
    return shape


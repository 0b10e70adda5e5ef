"""Weight initialization: the architecture-aware scheme of Chen et al. and PyTorch's default.

``arch-aware`` reproduces the reference code's ``critic_init_`` (docs/conventions.md §1.7, "Initialization"); every
weight is drawn from ``N(0, std^2)``:

* **hidden weight edges** (MLP/CNN DAG edges, NB201 cell convs): He fan-in divided by an in-degree,
  ``Var = 2 / (fan_in * d)``, with ``d`` from :func:`ahps_core.scaling.init_plan`: the in-degree of the edge's
  *source* vertex by default (eq. 4 and the reference code: our vertices sum post-activation outputs, so the
  source's in-degree is the number of terms the layer reads), or of its *destination* (``degree="destination"``,
  Appendix A eq. 12), or the destination's in-degree corrected for the correlation of ReLU outputs
  (``degree="mean-field"``, ``d (1 + (d - 1)/pi)``: the one rule that keeps skip-free DAGs flat, see
  :func:`ahps_core.scaling.init_plan`). In-degrees count live signal inputs (skips and pools included, zero
  edges excluded) and the input vertex counts 1 (:meth:`ArchGraph.in_degree`). The reference uses ``fan_out``
  mode for MLP/CNN hidden edges; fan_out equals fan_in for these ``width -> width`` layers.
  The reference counts every non-zero edge, even from a vertex the input never reaches (``indegree="all"``); by
  default we count only live ones (``indegree="live"``: such an edge carries no signal, and in a pruned network it
  is not built, see :mod:`ahps_core.models.dag`). NB201's re-evaluation protocol uses ``all``.
* **MLP/CNN stem**: the reference's ``fan_out`` mode with degree 1, ``Var = 2 / (width * k^2)`` (``k = 1`` for
  the MLP), *not* ``2 / fan_in``.
* **MLP/CNN readout**: the reference's ``std_power=2`` quirk, ``std = 2 / classes`` (``Var = 4 / classes^2``,
  independent of width).
* **NB201**: stem conv He fan-in (degree 1); reduction block ``conv_a`` degree 2, ``conv_b`` degree 1, shortcut
  1x1 conv degree 2, all He fan-in, for both degree rules (the reference's constants); classifier
  ``std = 2 / fan_in`` (``std_power=2`` again); every BatchNorm ``gamma = 1, beta = 0``.
* all biases 0.

``default`` is what the fixed-recipe benchmark trains: PyTorch's default initialization, i.e. the modules as
constructed (NB201's own code does not re-initialize). With a ``generator`` it is re-drawn with the same
formulas (``nn.Linear/nn.Conv*.reset_parameters``) from that generator, so results do not depend on the global
RNG.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from ahps_core.checks import check_choice
from ahps_core.errors import ConfigError
from ahps_core.models.dag import DagNet
from ahps_core.models.nb201 import InferCell, ReLUConvBN, ResNetBasicblock, TinyNetwork
from ahps_core.scaling import DEGREE_RULES, INDEGREE_MODES, init_plan

INIT_SCHEMES = ("arch-aware", "default")

#: Degrees of the NB201 reduction block's convs under ``arch-aware`` (the reference's constants).
NB201_REDUCTION_DEGREES = {"conv_a": 2, "conv_b": 1, "downsample": 2}


def initialize(
    model: nn.Module, scheme: str = "arch-aware", *, degree: str = "source", indegree: str = "live",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Initialize ``model`` (a :class:`DagNet` or :class:`TinyNetwork`) in place with ``scheme``; returns it.
    ``indegree`` (arch-aware only): ``live`` or ``all`` inputs counted (:func:`ahps_core.scaling.in_degrees`)."""
    check_choice("init scheme", scheme, INIT_SCHEMES)
    check_choice("degree rule", degree, DEGREE_RULES)
    check_choice("indegree", indegree, INDEGREE_MODES)
    if not isinstance(model, (DagNet, TinyNetwork)):
        raise ConfigError(
            f"cannot initialize a {type(model).__name__}: accepted are the models of ahps_core.models "
            "(DagNet, TinyNetwork)"
        )
    with torch.no_grad():
        if scheme == "default":
            if generator is not None:
                pytorch_default_(model, generator)
        elif isinstance(model, DagNet):
            _init_dag(model, degree, indegree, generator)
        else:
            _init_nb201(model, degree, indegree, generator)
    return model


def he_normal_(weight: torch.Tensor, degree: float = 1, *, fan: int | None = None,
               generator: torch.Generator | None = None) -> None:
    """``N(0, 2 / (fan * degree))``; ``fan`` defaults to the weight's fan-in; ``degree`` is the plan's divisor."""
    fan = fan if fan is not None else fan_in(weight)
    weight.normal_(0.0, math.sqrt(2.0 / (fan * degree)), generator=generator)


def fan_in(weight: torch.Tensor) -> int:
    """Fan-in of a Linear/Conv weight: ``in_features * prod(kernel)``."""
    return math.prod(weight.shape[1:])


def fan_out(weight: torch.Tensor) -> int:
    """Fan-out of a Linear/Conv weight: ``out_features * prod(kernel)``."""
    return weight.shape[0] * math.prod(weight.shape[2:])


def pytorch_default_(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init of every Linear/Conv (``kaiming_uniform_(a=sqrt(5))`` weight, ``U(+-1/sqrt(fan_in))``
    bias) and BatchNorm (``gamma = 1, beta = 0``), drawn from ``generator``."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(fan_in(m.weight))
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()


def _zero_bias(m: nn.Module) -> None:
    bias = getattr(m, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.zero_()


def _weight(m: nn.Module) -> torch.Tensor:
    """The weight of a Linear or Conv2d ``m`` (typed: ``nn.Module`` attributes are not)."""
    if not isinstance(m, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"expected a Linear or Conv2d, got {type(m).__name__}")
    return m.weight


def _init_dag(model: DagNet, degree: str, indegree: str, generator: torch.Generator | None) -> None:
    plan = {p.index: p for p in init_plan(model.graph, degree, indegree)}
    stem = model.stem.weight
    he_normal_(stem, 1, fan=fan_out(stem), generator=generator)  # reference: 'fan_out' mode, degree 1
    _zero_bias(model.stem)
    for layer, index in zip(model.layers, model.edge_index, strict=True):
        lin = cast(nn.Sequential, layer)[0]
        he_normal_(_weight(lin), plan[index].divisor, generator=generator)
        _zero_bias(lin)
    model.readout.weight.normal_(0.0, 2.0 / model.num_classes, generator=generator)  # std = 2 / classes
    _zero_bias(model.readout)


def _init_nb201(model: TinyNetwork, degree: str, indegree: str, generator: torch.Generator | None) -> None:
    plan = {p.index: p for p in init_plan(model.graph, degree, indegree)}
    he_normal_(_weight(model.stem[0]), 1, generator=generator)
    for cell in model.cells:
        if isinstance(cell, InferCell):
            for layer, index in zip(cell.layers, cell.edge_index, strict=True):
                if index in plan:  # conv ops; pools have no weights
                    he_normal_(cast(ReLUConvBN, layer).conv.weight, plan[index].divisor, generator=generator)
        elif isinstance(cell, ResNetBasicblock):
            he_normal_(cell.conv_a.conv.weight, NB201_REDUCTION_DEGREES["conv_a"], generator=generator)
            he_normal_(cell.conv_b.conv.weight, NB201_REDUCTION_DEGREES["conv_b"], generator=generator)
            he_normal_(_weight(cell.downsample[1]), NB201_REDUCTION_DEGREES["downsample"], generator=generator)
    fc = model.classifier
    fc.weight.normal_(0.0, 2.0 / fan_in(fc.weight), generator=generator)  # std = 2 / fan_in
    _zero_bias(fc)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

"""Transfer rules, depth conventions, and the initialization variance plan. Pure Python: no torch.

Rules
-----
``sum-cubed`` (Chen, Wu, Wang, Hanin, ICLR 2024)::

    lr_target = lr_base * sqrt(sum_base L^3 / sum_target L^3) * (q_base / q_target)

``effective-depth`` (Wu et al., 2026)::

    lr_target = lr_base * (L_eff,base / L_eff,target)^(3/2)

with ``L_eff`` the minimal over input->output paths of (weight layers + additions passed) plus the
convention's offset (:func:`ahps_core.paths.effective_depth`). No kernel factor: Wu et al. absorb fixed
local structure into constants.

Conventions (``L_p`` = depth of path *p*, ``k_p`` = weight edges on it)
-------------------------------------------------------------------------

=========  ============  =========================  ======================  ==========================
family     convention    L_p                        all-skip DAG            kernel factor q_base/q
=========  ============  =========================  ======================  ==========================
mlp        reference     k_p + 3 (base sum 27)      one path of L=3         none
mlp        paper         k_p + 1 (base sum 1)       literal sum             none
cnn        reference     k_p + 3 (base sum 27)      one path of L=3         3/k (q = kernel side)
cnn        paper         k_p + 1 (base sum 1)       literal sum             q_base/k
nb201      reference     k_p + 1, per cell (base 1) literal sum             none (1x1 and 3x3 alike)
nb201      paper         k_p + 1 (ReLUs: one per    literal sum             q_base / largest conv side
                         conv + the head's)
graph      reference     k_p + 1 + depth_offset     literal sum             q_base / largest kernel side
graph      paper         k_p - 1 + depth_offset     literal sum             q_base / largest kernel side
mlp, cnn   wu            k_p + 2 (stem and readout) literal sum             none
nb201      wu            weight layers of the whole literal sum             none
                         macro network (stem, 3N
                         cells, reductions, head)
graph      wu            k_p + depth_offset         literal sum             none
=========  ============  =========================  ======================  ==========================

``wu`` is Wu et al.'s unit (docs/conventions.md §2.7): every weight layer of the whole network, stem and readout
included (for ``nb201`` over the whole macro network, :func:`ahps_core.nb201_graph.nb201_network_graph`, the graph
:func:`unit_graph` returns), plus, under ``effective-depth``, the residual additions passed. It is the default of
``effective-depth`` (:data:`DEFAULT_CONVENTION`); ``reference`` stays the default of ``sum-cubed``.

``graph`` specs (files, and graphs extracted from PyTorch models) describe the whole network, stem and
readout included, so ``k_p`` counts every weight layer on the path: the reference unit (Linear layers plus
the input layer) is ``k_p + 1``, and the paper's (ReLUs; none after the readout) is ``k_p - 1``. With these,
the graph extracted from an ``mlp`` DAG model has the same statistics as its DAG code.

A graph with no input->output path raises :class:`~ahps_core.errors.NoPathError` under every convention
(the reference code treats it as the base network, or exits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ahps_core.checks import check_choice, check_int, check_lr
from ahps_core.errors import ConfigError
from ahps_core.graph import ArchGraph, Edge, Op
from ahps_core.nb201_graph import NB201_CELLS_PER_STAGE, nb201_network_graph
from ahps_core.specs import parse_arch
from ahps_core.paths import PathStats, effective_depth, path_stats

RULES = ("sum-cubed", "effective-depth")
CONVENTIONS = ("reference", "paper", "wu")
#: The convention each rule uses when none is named: Chen's rule in the reference code's unit, Wu's in Wu's.
DEFAULT_CONVENTION = {"sum-cubed": "reference", "effective-depth": "wu"}
DEGREE_RULES = ("source", "destination", "mean-field")
#: How the init counts a vertex's in-degree: ``all`` every non-zero input (the reference code), ``live`` only the
#: inputs the network's input reaches (docs/conventions.md §1.2).
INDEGREE_MODES = ("all", "live")


def default_convention(rule: str) -> str:
    """The depth convention of ``rule`` when none is given (:data:`DEFAULT_CONVENTION`)."""
    return DEFAULT_CONVENTION[check_choice("rule", rule, RULES)]


def resolve_convention(rule: str, convention: str | None) -> str:
    """``convention`` checked, or ``rule``'s default when it is None or empty."""
    if not convention:
        return default_convention(rule)
    return check_choice("convention", convention, CONVENTIONS)


@dataclass(frozen=True)
class DepthConvention:
    offset: int
    collapse_weightless: bool
    kernel_factor: bool


def depth_convention(graph: ArchGraph, convention: str = "reference") -> DepthConvention:
    """The path-depth convention for ``graph``'s family (see the module docstring's table)."""
    check_choice("convention", convention, CONVENTIONS)
    fam = graph.family
    ref = convention == "reference"
    if convention == "wu":
        if fam in ("mlp", "cnn"):
            return DepthConvention(2, False, False)  # the DAG's weight edges + the stem + the readout
        if fam == "graph":
            return DepthConvention(graph.depth_offset, False, False)  # the graph already holds every layer
        if fam == "nb201":
            raise ConfigError("the wu unit counts the whole NB201 network: take unit_graph(cell, 'wu') first")
    if fam == "mlp":
        return DepthConvention(3 if ref else 1, ref, False)
    if fam == "cnn":
        return DepthConvention(3 if ref else 1, ref, True)
    if fam == "nb201":
        return DepthConvention(1, False, not ref)
    if fam == "graph":
        return DepthConvention((1 if ref else -1) + graph.depth_offset, False, True)
    raise ConfigError(f"unknown family {fam!r}")


def unit_graph(graph: ArchGraph, convention: str, *, cells_per_stage: int = NB201_CELLS_PER_STAGE) -> ArchGraph:
    """The graph ``convention`` counts depths on: under ``wu`` an NB201 cell becomes the whole macro network
    (:func:`ahps_core.nb201_graph.nb201_network_graph`, ``cells_per_stage`` = NB201's N); otherwise ``graph``."""
    if convention == "wu" and graph.family == "nb201":
        return nb201_network_graph(graph, cells_per_stage)
    return graph


def depth_stats(graph: ArchGraph, convention: str = "reference", *, histogram: bool = False,
                cells_per_stage: int = NB201_CELLS_PER_STAGE) -> PathStats:
    """Exact path statistics of ``graph`` under ``convention`` (on :func:`unit_graph`)."""
    graph = unit_graph(graph, convention, cells_per_stage=cells_per_stage)
    conv = depth_convention(graph, convention)
    return path_stats(graph, offset=conv.offset, collapse_weightless=conv.collapse_weightless, histogram=histogram)


def default_base(family: str, *, base_kernel_size: int | None = None) -> ArchGraph:
    """The family's one-hidden-layer base (proxy) network as a graph."""
    if family in ("mlp", "cnn"):
        return parse_arch("1", family, kernel_size=base_kernel_size)  # stem -> one skip -> readout
    if family == "nb201":
        return parse_arch("1_01_001", "nb201")  # a chain of skips
    if family == "graph":
        k = base_kernel_size or 1
        return parse_arch({
            "name": "proxy(input->hidden->output)",
            "nodes": ["input", "hidden", "output"],
            "edges": [
                {"from": "input", "to": "hidden", "op": "weight", "kernel": k},
                {"from": "hidden", "to": "output", "op": "weight", "kernel": 1},
            ],
        })
    raise ConfigError(f"unknown family {family!r}")


def graph_kernel(graph: ArchGraph, kernel_size: int | None = None) -> int | None:
    """Kernel side length q of ``graph`` for the kernel factor: the ``cnn`` kernel, or the largest kernel side
    of the weight edges on input->output paths; None when the graph has no weight edge."""
    if graph.family == "cnn":
        return kernel_size or _uniform_kernel(graph) or 3
    if graph.family == "mlp":
        return 1
    kernels = graph.weight_kernels
    return max(kernels) if kernels else None


def _uniform_kernel(graph: ArchGraph) -> int | None:
    ks = {e.kernel for e in graph.edges if e.op is Op.WEIGHT}
    return ks.pop() if len(ks) == 1 else None


@dataclass(frozen=True)
class Transfer:
    """The result of transferring a base LR to a target architecture."""

    arch: str
    family: str
    rule: str
    convention: str
    base_arch: str
    base_lr: float
    lr: float
    ratio: float
    depth_factor: float
    kernel_factor: float
    target: PathStats
    base: PathStats
    kernel: int | None
    base_kernel: int | None
    effective_depth: int | None = None
    base_effective_depth: int | None = None

    def to_dict(self) -> dict:
        d = {
            "arch": self.arch,
            "family": self.family,
            "rule": self.rule,
            "convention": self.convention,
            "base_arch": self.base_arch,
            "base_lr": self.base_lr,
            "lr": self.lr,
            "ratio": self.ratio,
            "depth_factor": self.depth_factor,
            "kernel_factor": self.kernel_factor,
            **self.target.to_dict(),
            "base_sum_l3": self.base.sum_l3,
        }
        if self.kernel is not None:
            d["kernel"] = self.kernel
            d["base_kernel"] = self.base_kernel
        if self.effective_depth is not None:
            d["effective_depth"] = self.effective_depth
            d["base_effective_depth"] = self.base_effective_depth
        return d


def sum_cubed_ratio(base_sum_l3: int, target_sum_l3: int) -> float:
    """``sqrt(base / target)`` for exact (possibly astronomically large) integers, without overflow."""
    if target_sum_l3 <= 0 or base_sum_l3 <= 0:
        raise ConfigError(f"sums of cubed depths must be positive (base {base_sum_l3}, target {target_sum_l3})")
    try:
        q = base_sum_l3 / target_sum_l3  # int/int true division is correctly rounded for big ints
        if q > 0.0 and math.isfinite(q):
            return math.sqrt(q)
    except OverflowError:
        pass
    return math.exp(0.5 * (math.log(base_sum_l3) - math.log(target_sum_l3)))


class Transferer:
    """Transfers a base LR to many targets; the base network's statistics are computed once.

    ``convention`` None: the rule's default (:data:`DEFAULT_CONVENTION`). ``cells_per_stage``: NB201's N, for the
    ``wu`` unit, which counts the whole macro network."""

    def __init__(
        self,
        family: str,
        base_lr: float,
        *,
        rule: str = "sum-cubed",
        convention: str | None = None,
        base: ArchGraph | None = None,
        kernel_size: int | None = None,
        base_kernel_size: int | None = None,
        cells_per_stage: int = NB201_CELLS_PER_STAGE,
    ) -> None:
        check_choice("rule", rule, RULES)
        convention = resolve_convention(rule, convention)
        for name, k in (("kernel size", kernel_size), ("base kernel size", base_kernel_size)):
            if k is not None:
                check_int(name, k, 1)
        check_int("cells per stage", cells_per_stage, 1)
        self.base_lr = check_lr(base_lr, "base learning rate")
        self.rule = rule
        self.convention = convention
        self.cells_per_stage = cells_per_stage
        self.kernel_size = kernel_size
        self.base = base if base is not None else default_base(family, base_kernel_size=base_kernel_size)
        # q_base: explicit, else the base's own kernel, else the reference's KERNEL_BASE = 3 for convolutional
        # targets (decided per target for graph specs, whose default base is a linear proxy) and 1 otherwise
        self._conv_default_base_kernel = base_kernel_size is None and base is None and family == "graph"
        self.base_kernel = base_kernel_size or graph_kernel(self.base, base_kernel_size) or (
            3 if family in ("cnn", "nb201") else 1
        )
        base_unit = unit_graph(self.base, convention, cells_per_stage=cells_per_stage)
        bconv = depth_convention(base_unit, convention)
        self.base_stats = path_stats(base_unit, offset=bconv.offset, collapse_weightless=bconv.collapse_weightless)
        self.base_eff = effective_depth(base_unit, offset=bconv.offset) if rule == "effective-depth" else None
        if self.base_eff is not None and self.base_eff <= 0:
            raise ConfigError(f"base network {self.base.spec!r} has effective depth {self.base_eff} <= 0")

    def __call__(self, target: ArchGraph) -> Transfer:
        unit = unit_graph(target, self.convention, cells_per_stage=self.cells_per_stage)
        conv = depth_convention(unit, self.convention)
        stats = path_stats(unit, offset=conv.offset, collapse_weightless=conv.collapse_weightless)
        kernel = graph_kernel(target, self.kernel_size) if conv.kernel_factor else None
        base_kernel = self.base_kernel
        if self._conv_default_base_kernel and kernel and kernel > 1:
            base_kernel = 3
        eff = None
        if self.rule == "sum-cubed":
            depth_factor = sum_cubed_ratio(self.base_stats.sum_l3, stats.sum_l3)
            kernel_factor = base_kernel / kernel if kernel else 1.0
        else:
            eff = effective_depth(unit, offset=conv.offset)
            if eff <= 0:
                raise ConfigError(f"architecture {target.spec!r} has effective depth {eff} <= 0")
            assert self.base_eff is not None  # computed in __init__ for this rule
            depth_factor = (self.base_eff / eff) ** 1.5
            kernel_factor = 1.0
        ratio = depth_factor * kernel_factor
        return Transfer(
            arch=target.spec,
            family=target.family,
            rule=self.rule,
            convention=self.convention,
            base_arch=self.base.spec,
            base_lr=self.base_lr,
            lr=self.base_lr * ratio,
            ratio=ratio,
            depth_factor=depth_factor,
            kernel_factor=kernel_factor,
            target=stats,
            base=self.base_stats,
            kernel=kernel,
            base_kernel=base_kernel if kernel else None,
            effective_depth=eff,
            base_effective_depth=self.base_eff,
        )


def transfer_lr(target: ArchGraph, base_lr: float, **kwargs) -> Transfer:
    """One-shot :class:`Transferer` (see its arguments)."""
    return Transferer(target.family, base_lr, **kwargs)(target)


# --- initialization plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeInit:
    """Init of one weight edge: ``Var[W] = gain**2 / (fan_in * divisor)`` (He fan-in divided by an in-degree,
    or by the mean-field divisor ``d (1 + (d - 1) / pi)``)."""

    index: int  # position in graph.edges
    edge: Edge
    degree: int
    divisor: float

    @property
    def variance_scale(self) -> float:
        """``gain**2 / divisor`` with the ReLU gain sqrt(2); multiply by ``1 / fan_in`` for the variance."""
        return 2.0 / self.divisor


def in_degrees(graph: ArchGraph, indegree: str = "live") -> tuple[int, ...]:
    """The in-degree of every vertex as the init counts it (:data:`INDEGREE_MODES`): ``live`` the live
    signal-carrying inputs (:meth:`ArchGraph.in_degree`), ``all`` every non-zero input, also from vertices the input
    never reaches (the reference code's count); the input vertex counts 1 under both."""
    check_choice("indegree", indegree, INDEGREE_MODES)
    if indegree == "live":
        return tuple(graph.in_degree(v) for v in range(graph.num_nodes))
    deg = [0] * graph.num_nodes
    for e in graph.signal_edges:
        deg[e.dst] += 1
    deg[graph.input] = max(deg[graph.input], 1)
    return tuple(deg)


def init_plan(graph: ArchGraph, degree: str = "source", indegree: str = "live") -> tuple[EdgeInit, ...]:
    """The variance plan of every weight edge of ``graph``.

    ``source`` (default; eq. 4 of Chen et al. and the reference code): divide by the in-degree of the edge's
    source vertex. Our models sum post-activation outputs at each vertex (like the reference code), so the
    source's in-degree is the number of terms in the sum the layer reads. ``destination`` (Appendix A,
    eq. 12): divide by the destination's in-degree. In-degrees count live signal inputs (skips and pools
    included, zero edges excluded); the input vertex counts 1.

    ``mean-field``: neither rule keeps the forward second moment flat in this layout, because ReLU outputs
    have a non-zero mean, so the d terms summed at a vertex are correlated: d fresh ReLU terms of second
    moment q sum to ``d q (1 + (d - 1) / pi)``, not ``d q``. Dividing by that factor at the destination,
    ``Var = 2 / (fan_in d (1 + (d - 1) / pi))``, keeps every vertex of a skip-free DAG at the stem's second
    moment (exactly, at large width). With skip edges no weight-variance rule can: a skip passes its source's
    value unchanged, so a vertex that adds anything to it holds more.

    ``indegree`` (:func:`in_degrees`): ``live`` (default) or ``all`` (every non-zero input, the reference code's).
    Every weight edge is planned, also those off every input->output path (built by NB201's ``cell=full``).
    """
    check_choice("degree rule", degree, DEGREE_RULES)
    degrees = in_degrees(graph, indegree)
    plan = []
    for i, e in enumerate(graph.edges):
        if e.op is not Op.WEIGHT:
            continue
        d = max(degrees[e.src if degree == "source" else e.dst], 1)
        divisor = d * (1 + (d - 1) / math.pi) if degree == "mean-field" else float(d)
        plan.append(EdgeInit(i, e, d, divisor))
    return tuple(plan)

"""The base-LR finder: the paper's protocol on a network (by default the family's one-hidden-layer proxy).

Protocol (Chen et al. 2024, section 4; docs/conventions.md §1.6 and A8): train the network at every LR of a
log-spaced grid with a fixed budget (:class:`~ahps_core.presets.ProbeBudget`: plain SGD at a constant LR for a
few epochs or truncated steps), over >= 3 seeds; the criterion of a run is its mean training loss over the last
epoch (over the truncated steps when ``max_steps_per_epoch`` is set); a diverged run (non-finite loss) counts as
``+inf``, so an LR where any seed diverges has mean ``+inf``. The LR with the lowest mean criterion is the
maximal ("base") LR. When every LR diverged the search raises :class:`~ahps_core.errors.DivergedError`.

Coarse-to-fine refinement (``refine=True``): evaluate every ``coarse_stride``-th grid point (and the last),
then every grid point within ``coarse_stride - 1`` steps of the best coarse point. It evaluates the same grid
points the full search would near the optimum, so it reaches the same answer (within one grid step when the
curve is noisy) with about ``n / stride + 2 (stride - 1)`` instead of ``n`` LRs.

Resolution (``resolution=N``): after the grid search, the intervals around the best LR are subdivided until the
answer is known to 1/N decade (:func:`ahps_core.lr_refine.refine_bracket`, a bracketing search on the seed-mean
criterion); the result's ``bracket`` says where the optimum lies and ``curve`` holds the added LRs too.

The runs themselves are trained by :mod:`ahps_core.probe` (all runs of an MLP together, stacked).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ahps_core.checks import check_choice, check_int, check_lr
from ahps_core.errors import ConfigError, DivergedError
from ahps_core.jsonio import json_restore, json_safe
from ahps_core.presets import ProbeBudget, default_budget, default_width
from ahps_core.probe import ModelFactory, probe
from ahps_core.runtime import input_shape

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit
    from ahps_core.graph import ArchGraph

#: Default grid: 25 log-spaced points over [10^-2.5, 10^0.5] (8 per decade).
DEFAULT_GRID = (10 ** -2.5, 10 ** 0.5, 25)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_COARSE_STRIDE = 4


# --- grids ---------------------------------------------------------------------------------------------------


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` log-spaced LRs from ``lo`` to ``hi`` inclusive."""
    check_lr(lo, "grid minimum")
    check_lr(hi, "grid maximum")
    check_int("grid points", points, 1)
    if hi < lo:
        raise ConfigError(f"grid maximum {hi} is below the grid minimum {lo}")
    if points == 1:
        return [float(lo)]
    a, b = math.log10(lo), math.log10(hi)
    return [10 ** (a + (b - a) * i / (points - 1)) for i in range(points)]


def check_grid(grid: Iterable[float]) -> list[float]:
    """The sorted, de-duplicated grid; :class:`ConfigError` for an empty grid or an LR <= 0."""
    values = list(grid)
    if not values:
        raise ConfigError("the LR grid is empty: give at least one learning rate")
    for v in values:
        check_lr(v, "grid learning rate")
    return sorted({float(v) for v in values})


def default_grid() -> list[float]:
    return log_grid(*DEFAULT_GRID)


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class LRPoint:
    """One grid LR: the criterion per seed (``inf`` = diverged), their mean, and which seeds diverged."""

    lr: float
    losses: list[float]
    mean_loss: float
    diverged: list[bool]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(dataclasses.asdict(self))


@dataclass
class LRSearchResult:
    """The outcome of a search: ``best_lr`` (argmin of the mean criterion), the full ``grid``, the ``curve``
    of the evaluated points (ascending LR), and ``runs_used`` (trainings run = evaluated LRs x seeds).
    ``at_edge`` warns that the best LR is the grid's smallest or largest point (widen the grid). ``bracket``
    (refined searches): the best LR's evaluated neighbours and the resolution in decades
    (:class:`ahps_core.lr_refine.Bracket`); the best LR may then lie between grid points."""

    best_lr: float
    grid: list[float]
    curve: list[LRPoint]
    runs_used: int
    seeds: list[int]
    budget: dict[str, Any]
    refined: bool
    at_edge: bool
    seconds: float
    label: str = ""
    bracket: dict[str, Any] | None = None

    @property
    def best_index(self) -> int:
        """The index of the best LR in ``grid`` (of the nearest grid LR when a refinement found an off-grid one)."""
        if self.best_lr in self.grid:
            return self.grid.index(self.best_lr)
        return min(range(len(self.grid)), key=lambda i: abs(math.log(self.grid[i] / self.best_lr)))

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "label": self.label, "best_lr": self.best_lr, "best_index": self.best_index, "grid": self.grid,
            "curve": [dataclasses.asdict(p) for p in self.curve], "runs_used": self.runs_used,
            "seeds": self.seeds, "budget": self.budget, "refined": self.refined, "at_edge": self.at_edge,
            "seconds": self.seconds, "bracket": self.bracket,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LRSearchResult:
        d = json_restore(dict(data))
        return cls(
            best_lr=d["best_lr"], grid=list(d["grid"]), curve=[LRPoint(**p) for p in d["curve"]],
            runs_used=d["runs_used"], seeds=list(d["seeds"]), budget=dict(d["budget"]), refined=d["refined"],
            at_edge=d["at_edge"], seconds=d["seconds"], label=d.get("label", ""), bracket=d.get("bracket"),
        )



# --- search --------------------------------------------------------------------------------------------------

Evaluator = Callable[[list[float]], list[LRPoint]]


def _points(lrs: Sequence[float], seeds: Sequence[int], crit: Mapping[tuple[int, int], float]) -> list[LRPoint]:
    pts = []
    for li, lr in enumerate(lrs):
        losses = [float(crit[(li, si)]) for si in range(len(seeds))]
        diverged = [not math.isfinite(v) for v in losses]
        mean = math.inf if any(diverged) else sum(losses) / len(losses)
        pts.append(LRPoint(lr=lr, losses=losses, mean_loss=mean, diverged=diverged))
    return pts


def search_grid(
    grid: Sequence[float], evaluate: Evaluator, *, refine: bool = False, coarse_stride: int = DEFAULT_COARSE_STRIDE,
) -> tuple[float, list[LRPoint], bool]:
    """The search logic over an arbitrary evaluator: ``(best_lr, curve, at_edge)``.

    ``evaluate(lrs)`` returns one :class:`LRPoint` per LR. Ties go to the smaller LR. Raises
    :class:`~ahps_core.errors.DivergedError` when every evaluated LR diverged.
    """
    grid = check_grid(grid)
    check_int("coarse stride", coarse_stride, 2)
    n = len(grid)
    done: dict[int, LRPoint] = {}

    def run(indices: list[int]) -> None:
        todo = [i for i in indices if i not in done]
        if todo:
            for i, p in zip(todo, evaluate([grid[i] for i in todo]), strict=True):
                done[i] = p

    if refine and n > 2 * coarse_stride:
        coarse = list(range(0, n, coarse_stride))
        if coarse[-1] != n - 1:
            coarse.append(n - 1)
        run(coarse)
        c = _argmin(done)
        if c is not None:
            run(list(range(max(0, c - coarse_stride + 1), min(n, c + coarse_stride))))
    else:
        run(list(range(n)))
    best = _argmin(done)
    if best is None:
        raise DivergedError(
            f"every learning rate of the grid [{grid[0]:.3g}, {grid[-1]:.3g}] diverged: lower the grid"
        )
    curve = [done[i] for i in sorted(done)]
    return grid[best], curve, n > 1 and best in (0, n - 1)


def _argmin(done: Mapping[int, LRPoint]) -> int | None:
    finite = [(p.mean_loss, i) for i, p in done.items() if math.isfinite(p.mean_loss)]
    return min(finite)[1] if finite else None


def find_max_lr(
    model_factory: ModelFactory,
    data: DatasetSplit,
    grid: Sequence[float] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    budget: ProbeBudget | None = None,
    *,
    refine: bool = False,
    coarse_stride: int = DEFAULT_COARSE_STRIDE,
    batched: str = "auto",
    progress: bool | None = None,
    label: str = "",
    threads: int | None = None,
    resolution: int | None = None,
) -> LRSearchResult:
    """The maximal LR of the network ``model_factory(seed)`` builds, on ``data`` (module docstring).

    ``data``: a loaded :class:`~ahps_core.data.DatasetSplit`. ``grid``: LRs (default :func:`default_grid`).
    ``budget``: default :class:`ProbeBudget` (). ``resolution``: refine around the optimum to 1/``resolution``
    decade (None: the grid's own resolution). Returns an :class:`LRSearchResult`.
    """
    started = time.perf_counter()
    grid = check_grid(default_grid() if grid is None else grid)
    seeds = check_seeds(seeds)
    budget = budget or ProbeBudget()
    budget.config(grid[0], seeds[0])  # validates the budget
    runs = 0

    def evaluate(lrs: list[float]) -> list[LRPoint]:
        nonlocal runs
        runs += len(lrs) * len(seeds)
        crit = probe(
            model_factory, data, lrs, seeds, budget, batched=batched, progress=progress, label=label, threads=threads,
        )
        return _points(lrs, seeds, crit)

    best, curve, at_edge = search_grid(grid, evaluate, refine=refine, coarse_stride=coarse_stride)
    bracket = None
    if resolution is not None:
        from ahps_core.lr_refine import refine_bracket

        refined, found = refine_bracket(curve, evaluate, points_per_decade=resolution)
        curve = [p for p in refined if isinstance(p, LRPoint)]
        if found is not None:
            best, bracket = found.best, found.to_dict()
    if at_edge and len(grid) > 1:
        warnings.warn(
            f"{label or 'search'}: the best LR {best:.4g} is at the edge of the grid "
            f"[{grid[0]:.4g}, {grid[-1]:.4g}]; the maximal LR may lie outside it", stacklevel=2,
        )
    return LRSearchResult(
        best_lr=best, grid=grid, curve=curve, runs_used=runs, seeds=list(seeds), budget=budget.to_dict(),
        refined=refine, at_edge=at_edge, seconds=time.perf_counter() - started, label=label, bracket=bracket,
    )


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list when not empty, each an integer >= 0, without duplicates."""
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("no seeds given: the protocol needs at least one (the paper uses 3)")
    for s in seeds:
        check_int("seed", s, 0)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} contain duplicates")
    return seeds


# --- architecture-level entry points -------------------------------------------------------------------------


def arch_factory(
    graph: ArchGraph, data: DatasetSplit, *, width: int | None = None, C: int = 16, N: int = 5,
    init: str = "arch-aware", degree: str = "source", kernel_size: int | None = None,
) -> ModelFactory:
    """``seed -> model`` of ``graph`` (:func:`ahps_core.models.build_model`) for ``data``'s shapes."""
    from ahps_core.data.custom import check_data_family
    from ahps_core.models import build_model

    in_shape = input_shape(data)
    fam = graph.family
    check_data_family(data, fam)

    def factory(seed: int) -> nn.Module:
        return build_model(
            graph, num_classes=data.num_classes, in_shape=in_shape, width=width if fam != "nb201" else None,
            C=C, N=N, init=init, degree=degree, kernel_size=kernel_size if fam == "cnn" else None,
            generator=torch.Generator().manual_seed(seed),
        )

    factory(0)  # fail early (NoPathError, bad options) before any training
    return factory


def check_family(family: str) -> str:
    """``family`` when it is a model family (mlp, cnn, nb201)."""
    from ahps_core.models import MODEL_FAMILIES

    return check_choice("family", family, MODEL_FAMILIES)


def find_base_lr(
    family: str,
    dataset: str,
    *,
    data_root: str | None = None,
    data: DatasetSplit | None = None,
    grid: Sequence[float] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    budget: ProbeBudget | None = None,
    width: int | None = None,
    C: int = 16,
    N: int = 5,
    kernel_size: int | None = None,
    init: str = "arch-aware",
    refine: bool = True,
    coarse_stride: int = DEFAULT_COARSE_STRIDE,
    batched: str = "auto",
    progress: bool | None = None,
    threads: int | None = None,
    resolution: int | None = None,
) -> LRSearchResult:
    """The base LR of ``family`` on ``dataset``: :func:`find_max_lr` on the family's proxy
    (:func:`ahps_core.models.build_proxy`). Defaults: :func:`default_budget` of the family and dataset (nb201:
    its training recipe's optimizer for one epoch) and :func:`default_width` of the dataset, :func:`default_grid`,
    seeds 0, 1, 2, coarse-to-fine refinement."""
    from ahps_core.models import proxy_graph

    check_family(family)
    grid = check_grid(default_grid() if grid is None else grid)
    check_seeds(seeds)
    if data is None:
        from ahps_core.data import load_dataset

        data = load_dataset(dataset, data_root)
    budget = budget or default_budget(dataset, family)
    width = width if width is not None else default_width(family, dataset)
    graph = proxy_graph(family, kernel_size=kernel_size)
    factory = arch_factory(graph, data, width=width, C=C, N=N, init=init, kernel_size=kernel_size)
    return find_max_lr(
        factory, data, grid, seeds, budget, refine=refine, coarse_stride=coarse_stride, batched=batched,
        progress=progress, label=f"{family}:{graph.spec}", threads=threads, resolution=resolution,
    )

"""Refining a maximal-LR search around its optimum: the bracket of the seed-averaged criterion.

The grid search (:func:`ahps_core.lr_search.search_grid`) knows the argmin of the seed-mean criterion to one grid
step (1/8 decade on the default grid). :func:`refine_bracket` then subdivides the intervals between the best
evaluated LR and its evaluated neighbours, log-evenly, until both neighbours lie within ``1 / points_per_decade``
decade of the best point, and repeats whenever the argmin moves to a point whose neighbours are farther apart
(a bracketing search on the seed-averaged criterion). The answer is then the argmin over evaluated LRs spaced at
most ``1 / points_per_decade`` decade apart around it, and ``bracket`` (the best point's evaluated neighbours)
is where the optimum of the seed-mean curve lies when the curve is unimodal there.

Subdividing a 1/8-decade step into 3 lands exactly on the 24-per-decade grid through the same origin, so refined
searches of different networks share their LR values (their measured maxima can be compared, and counted as
distinct values, exactly).

Pure Python: the evaluator does the training (:func:`ahps_core.lr_search.find_max_lr` passes the probe).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ahps_core.checks import check_int

#: Default resolution of a refined search: 24 points per decade (three per step of the default 8/decade grid).
DEFAULT_POINTS_PER_DECADE = 24
#: At most this many refinement rounds (each round evaluates at most 2 * (k - 1) new LRs).
MAX_ROUNDS = 8


class CurvePoint(Protocol):
    """What the refinement reads of an evaluated LR (:class:`ahps_core.lr_search.LRPoint`)."""

    lr: float
    mean_loss: float


@dataclass(frozen=True)
class Bracket:
    """Where the refined optimum is known to lie: ``best`` and its evaluated neighbours ``lower``/``upper`` (None
    at the end of what was evaluated), ``resolution`` the largest of the two gaps in decades, ``rounds`` and
    ``added`` (LRs evaluated by the refinement)."""

    best: float
    lower: float | None
    upper: float | None
    resolution: float | None
    rounds: int
    added: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"best": self.best, "lower": self.lower, "upper": self.upper, "resolution": self.resolution,
                "rounds": self.rounds, "added": self.added}


def argmin_lr(points: Sequence[CurvePoint]) -> CurvePoint | None:
    """The point with the lowest finite mean criterion (ties: the smaller LR), or None when all diverged."""
    finite = [p for p in points if math.isfinite(p.mean_loss)]
    return min(finite, key=lambda p: (p.mean_loss, p.lr)) if finite else None


def neighbours(points: Sequence[CurvePoint], lr: float) -> tuple[float | None, float | None]:
    """The largest evaluated LR below ``lr`` and the smallest above it (None where there is none)."""
    below = [p.lr for p in points if p.lr < lr]
    above = [p.lr for p in points if p.lr > lr]
    return (max(below) if below else None), (min(above) if above else None)


def subdivide(lr: float, neighbour: float, step: float) -> list[float]:
    """The LRs strictly between ``lr`` and ``neighbour`` that cut the log interval into the fewest equal parts of
    at most ``step`` decades (empty when it already is that small)."""
    gap = math.log10(neighbour) - math.log10(lr)
    parts = math.ceil(abs(gap) / step - 1e-9)
    return [lr * 10 ** (gap * j / parts) for j in range(1, parts)]


def refine_bracket(
    curve: Sequence[CurvePoint], evaluate: Callable[[list[float]], Sequence[CurvePoint]], *,
    points_per_decade: int = DEFAULT_POINTS_PER_DECADE, max_rounds: int = MAX_ROUNDS,
) -> tuple[list[CurvePoint], Bracket | None]:
    """Refine ``curve`` (evaluated points) around its argmin (module docstring): ``(curve, bracket)``.

    ``evaluate(lrs)`` returns one point per LR. The returned curve holds every evaluated point in ascending LR;
    the bracket is None when every LR diverged.
    """
    check_int("points per decade", points_per_decade, 1)
    step = 1.0 / points_per_decade
    points = list(curve)
    rounds = added = 0
    best = argmin_lr(points)
    while best is not None and rounds < max_rounds:
        lower, upper = neighbours(points, best.lr)
        todo = [lr for n in (lower, upper) if n is not None for lr in subdivide(best.lr, n, step)]
        if not todo:
            break
        rounds += 1
        added += len(todo)
        points.extend(evaluate(sorted(todo)))
        best = argmin_lr(points)
    points.sort(key=lambda p: p.lr)
    if best is None:
        return points, None
    lower, upper = neighbours(points, best.lr)
    gaps = [abs(math.log10(n) - math.log10(best.lr)) for n in (lower, upper) if n is not None]
    return points, Bracket(best.lr, lower, upper, max(gaps) if gaps else None, rounds, added)


__all__ = ["DEFAULT_POINTS_PER_DECADE", "MAX_ROUNDS", "Bracket", "CurvePoint", "argmin_lr", "neighbours",
           "refine_bracket", "subdivide"]

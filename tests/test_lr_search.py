"""The base-LR finder: stacked == separate runs, coarse-to-fine == full grid, divergence, input validation."""

from __future__ import annotations

import math
import random

import pytest

from ahps_core.data import load_dataset
from ahps_core.errors import ConfigError, DataError, DivergedError
from ahps_core.lr_search import (
    LRPoint,
    LRSearchResult,
    arch_factory,
    check_grid,
    find_base_lr,
    find_max_lr,
    log_grid,
    search_grid,
)
from ahps_core.presets import ProbeBudget, default_budget
from ahps_core.probe import probe_sequential, probe_stacked
from ahps_core.specs import parse_arch


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def factory(digits):
    return arch_factory(parse_arch("2_02", "mlp"), digits, width=32)


TINY = ProbeBudget(epochs=2, batch_size=32, max_steps_per_epoch=8, device="cpu")


@pytest.mark.parametrize("budget", [
    TINY,
    ProbeBudget(epochs=2, batch_size=32, max_steps_per_epoch=8, momentum=0.9, nesterov=True, weight_decay=5e-4,
                device="cpu"),
], ids=["plain-sgd", "nesterov-wd"])
def test_stacked_trainer_equals_separate_runs(digits, factory, budget):
    lrs = [0.01, 0.2, 1.5, 1e8]  # the last one diverges
    seeds = [0, 5]
    stacked = probe_stacked(factory, digits, lrs, seeds, budget)
    separate = probe_sequential(factory, digits, lrs, seeds, budget)
    assert stacked.keys() == separate.keys() == {(i, j) for i in range(4) for j in range(2)}
    for key, want in separate.items():
        got = stacked[key]
        if math.isinf(want):
            assert math.isinf(got), key
        else:
            assert got == pytest.approx(want, rel=1e-5), key
    assert all(math.isinf(stacked[(3, j)]) for j in range(2))
    assert all(math.isfinite(stacked[(0, j)]) for j in range(2))


def test_stacked_trainer_masking_without_per_step_reads(digits, factory, monkeypatch):
    """The CUDA path (dead runs masked on the device, dropped at the epoch's end), exercised on CPU."""
    import ahps_core.probe

    lrs, seeds = [0.05, 1e8], [0, 1]
    want = probe_stacked(factory, digits, lrs, seeds, TINY)
    monkeypatch.setattr(ahps_core.probe, "STEP_CHECK_DEVICES", ())
    got = probe_stacked(factory, digits, lrs, seeds, TINY)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == want[key] or (math.isinf(got[key]) and math.isinf(want[key])), key
    assert math.isinf(got[(1, 0)]) and math.isfinite(got[(0, 0)])


def _fake_curve(seed: int):
    """A noisy U-shaped loss in log LR with a divergence cliff, like the real probe."""
    rng = random.Random(seed)
    opt = rng.uniform(-1.8, -0.2)
    noise = {}

    def evaluate(lrs):
        out = []
        for lr in lrs:
            x = math.log10(lr)
            if x > opt + 0.45:
                out.append(LRPoint(lr, [math.inf], math.inf, [True]))
                continue
            n = noise.setdefault(lr, rng.uniform(-0.01, 0.01))
            loss = (x - opt) ** 2 + 0.05 + n
            out.append(LRPoint(lr, [loss], loss, [False]))
        return out

    return evaluate


@pytest.mark.parametrize("seed", range(20))
def test_refinement_logic_matches_full_grid(seed):
    grid = log_grid(10 ** -2.5, 10 ** 0.5, 25)
    calls = {"full": 0, "fine": 0}

    def counted(name, evaluate):
        def inner(lrs):
            calls[name] += len(lrs)
            return evaluate(lrs)
        return inner

    full = search_grid(grid, counted("full", _fake_curve(seed)))
    fine = search_grid(grid, counted("fine", _fake_curve(seed)), refine=True)
    assert abs(grid.index(full[0]) - grid.index(fine[0])) <= 1
    assert calls["fine"] < calls["full"] == 25
    assert [p.lr for p in fine[1]] == sorted(p.lr for p in fine[1])


def test_coarse_to_fine_agrees_with_full_grid_with_fewer_runs(digits, factory):
    grid = log_grid(10 ** -2, 10 ** 0.5, 13)
    budget = ProbeBudget(epochs=2, batch_size=32, max_steps_per_epoch=15, device="cpu")
    full = find_max_lr(factory, digits, grid, [0, 1], budget)
    fine = find_max_lr(factory, digits, grid, [0, 1], budget, refine=True, coarse_stride=3)
    assert abs(full.best_index - fine.best_index) <= 1
    assert fine.runs_used < full.runs_used == 26
    assert len(full.curve) == 13 and full.grid == fine.grid == grid
    best = min(full.curve, key=lambda p: p.mean_loss)
    assert best.lr == full.best_lr


def test_divergent_runs_count_as_infinity():
    def evaluate(lrs):
        return [LRPoint(lr, [1.0 / lr, math.inf if lr > 1 else 1.0 / lr], math.inf if lr > 1 else 1.0 / lr,
                        [False, lr > 1]) for lr in lrs]

    best, curve, at_edge = search_grid([0.1, 1.0, 10.0], evaluate)
    assert best == 1.0 and not at_edge and curve[-1].mean_loss == math.inf
    with pytest.raises(DivergedError, match=r"every learning rate of the grid \[2, 3\] diverged") as info:
        search_grid([2.0, 3.0], evaluate)
    assert isinstance(info.value, ConfigError)  # the user can fix it: exit code 2, one line


def test_find_base_lr_on_digits_proxy(digits):
    res = find_base_lr("mlp", "digits", data=digits, grid=log_grid(0.01, 3, 7), seeds=[0, 1], budget=TINY,
                       width=32, refine=False)
    assert res.best_lr in res.grid and res.runs_used == 14 and len(res.curve) == 7
    assert all(len(p.losses) == 2 for p in res.curve)
    d = res.to_dict()
    assert d["best_lr"] == res.best_lr and LRSearchResult.from_dict(d).best_lr == res.best_lr


def test_default_budget_for_digits():
    b = default_budget("digits")
    assert (b.epochs, b.batch_size, b.momentum) == (6, 32, 0.0)
    assert default_budget("cifar10").epochs == 1
    assert default_budget("digits", epochs=2).epochs == 2


@pytest.mark.parametrize("call,err,message", [
    (lambda d: check_grid([]), ConfigError, "grid is empty"),
    (lambda d: check_grid([0.1, -1.0]), ConfigError, "-1.0 must be a finite number > 0"),
    (lambda d: check_grid([0.0]), ConfigError, "0.0 must be a finite number > 0"),
    (lambda d: log_grid(0.0, 1.0, 5), ConfigError, "grid minimum 0.0"),
    (lambda d: log_grid(1.0, 0.1, 5), ConfigError, "below the grid minimum"),
    (lambda d: find_base_lr("rnn", "digits", data=d), ConfigError, "unknown family 'rnn'"),
    (lambda d: find_base_lr("mlp", "mnist"), ConfigError, "unknown dataset 'mnist'"),
    (lambda d: find_base_lr("mlp", "cifar10", data_root="/does/not/exist"), DataError, "/does/not/exist"),
    (lambda d: find_base_lr("mlp", "digits", data=d, seeds=[]), ConfigError, "no seeds"),
])
def test_bad_inputs(digits, call, err, message):
    with pytest.raises(err, match=message):
        call(digits)

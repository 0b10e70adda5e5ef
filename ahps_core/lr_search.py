"""The base-LR finder: the paper's protocol on a network (by default the family's one-hidden-layer proxy).

Protocol (Chen et al. 2024, section 4; papers.md 1.6 and A8): train the network at every LR of a log-spaced
grid with a fixed budget (:class:`ProbeBudget`: plain SGD at a constant LR for a few epochs or truncated steps),
over >= 3 seeds; the criterion of a run is its mean training loss over the last epoch (over the truncated steps
when ``max_steps_per_epoch`` is set); a diverged run (non-finite loss) counts as ``+inf``, so an LR where any
seed diverges has mean ``+inf``. The LR with the lowest mean criterion is the maximal ("base") LR.

Coarse-to-fine refinement (``refine=True``): evaluate every ``coarse_stride``-th grid point (and the last),
then every grid point within ``coarse_stride - 1`` steps of the best coarse point. It evaluates the same grid
points the full search would near the optimum, so it reaches the same answer (within one grid step when the
curve is noisy) with about ``n / stride + 2 (stride - 1)`` instead of ``n`` LRs.

Speed: runs of the same architecture (every seed x LR) are trained *together* by default when the network has
no BatchNorm or convolution (MLPs): the models' parameters are stacked along a leading dimension and trained with
``torch.func.vmap`` over ``functional_call`` (batched matmuls), each with its own LR, its own data order (the
seed's :class:`~ahps_core.data.DeviceLoader` stream) and its own divergence detection; diverged models are
dropped from the stack. This reproduces separate :func:`ahps_core.train.train` runs up to floating-point
summation order (tested). Convolutional networks are trained one run at a time (vmapped convs become grouped
convs, no faster on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.errors import ConfigError
from ahps_core.train import (
    TrainConfig,
    _autocast,
    _json_safe,
    _want_progress,
    check_lr,
    make_train_loader,
    resolve_amp,
    resolve_device,
    train,
)

#: Default grid: 25 log-spaced points over [10^-2.5, 10^0.5] (8 per decade).
DEFAULT_GRID = (10 ** -2.5, 10 ** 0.5, 25)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_COARSE_STRIDE = 4
BATCHED_MODES = ("auto", "on", "off")
#: Device types on which the stacked probe reads the divergence flags every step (module docstring).
STEP_CHECK_DEVICES = ("cpu",)


@dataclass(frozen=True)
class ProbeBudget:
    """The fixed training budget of one LR probe run (plain SGD at a constant LR, no evaluation)."""

    epochs: int = 1
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    augment: bool = False
    device: str = "auto"
    amp: str = "auto"

    def config(self, lr: float, seed: int, **identity: Any) -> TrainConfig:
        """The :class:`TrainConfig` of one probe run (``identity``: family/arch/dataset/... for bookkeeping)."""
        return TrainConfig(
            lr=lr, seed=seed, epochs=self.epochs, batch_size=self.batch_size,
            max_steps_per_epoch=self.max_steps_per_epoch, momentum=self.momentum, nesterov=self.nesterov,
            weight_decay=self.weight_decay, schedule="constant", warmup_epochs=0.0, augment=self.augment,
            device=self.device, amp=self.amp, eval_every=0, **identity,
        ).validated()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Per-dataset probe budgets. digits (1437 training images) needs several epochs: one epoch is only 45 steps
#: at batch 32. 6 epochs at batch 32 gives a stable maximal-LR estimate (validate's acceptance: r >= 0.85 on the
#: MLP depth sweep; measured r ~ 0.95-0.99). Other datasets: the paper's one epoch at the reference's batch 128.
DEFAULT_BUDGETS: dict[str, ProbeBudget] = {"digits": ProbeBudget(epochs=6, batch_size=32)}
#: Per-dataset default hidden width of mlp/cnn probe networks (None: the model's own default).
DEFAULT_WIDTHS: dict[str, int] = {"digits": 128}


def default_budget(dataset: str, **overrides: Any) -> ProbeBudget:
    """The probe budget of ``dataset`` with ``overrides`` (None values ignored) applied."""
    budget = DEFAULT_BUDGETS.get(dataset, ProbeBudget())
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        budget = dataclasses.replace(budget, **changes)
    except TypeError as exc:
        raise ConfigError(f"bad probe budget option: {exc}") from None
    budget.config(1.0, 0)  # validates
    return budget


def default_width(family: str, dataset: str) -> int | None:
    return DEFAULT_WIDTHS.get(dataset) if family in ("mlp", "cnn") else None


# --- grids ---------------------------------------------------------------------------------------------------


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` log-spaced LRs from ``lo`` to ``hi`` inclusive."""
    check_lr(lo, "grid minimum")
    check_lr(hi, "grid maximum")
    if not isinstance(points, int) or isinstance(points, bool) or points < 1:
        raise ConfigError(f"grid points {points!r} must be an integer >= 1")
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
        return _json_safe(dataclasses.asdict(self))


@dataclass
class LRSearchResult:
    """The outcome of a search: ``best_lr`` (argmin of the mean criterion), the full ``grid``, the ``curve``
    of the evaluated points (ascending LR), and ``runs_used`` (trainings run = evaluated LRs x seeds).
    ``at_edge`` warns that the best LR is the grid's smallest or largest point (widen the grid)."""

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

    @property
    def best_index(self) -> int:
        return self.grid.index(self.best_lr)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe({
            "label": self.label, "best_lr": self.best_lr, "best_index": self.best_index, "grid": self.grid,
            "curve": [dataclasses.asdict(p) for p in self.curve], "runs_used": self.runs_used,
            "seeds": self.seeds, "budget": self.budget, "refined": self.refined, "at_edge": self.at_edge,
            "seconds": self.seconds,
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LRSearchResult:
        from ahps_core.train import _json_restore

        d = _json_restore(dict(data))
        return cls(
            best_lr=d["best_lr"], grid=list(d["grid"]), curve=[LRPoint(**p) for p in d["curve"]],
            runs_used=d["runs_used"], seeds=list(d["seeds"]), budget=dict(d["budget"]), refined=d["refined"],
            at_edge=d["at_edge"], seconds=d["seconds"], label=d.get("label", ""),
        )


# --- running probes ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"threads {n!r} must be an integer >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

ModelFactory = Callable[[int], nn.Module]


def _has_batchnorm_or_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvNd)) for m in model.modules())


def probe_sequential(
    model_factory: ModelFactory, data, lrs: Sequence[float], seeds: Sequence[int], budget: ProbeBudget,
    *, progress: bool | None = None,
) -> dict[tuple[int, int], float]:
    """One :func:`ahps_core.train.train` run per (LR, seed): ``{(lr index, seed index): criterion}``."""
    out = {}
    for si, seed in enumerate(seeds):
        for li, lr in enumerate(lrs):
            result = train(budget.config(lr, seed), model=model_factory(seed), data=data, progress=False)
            out[(li, si)] = result.final_train_loss
    return out


def probe_stacked(
    model_factory: ModelFactory, data, lrs: Sequence[float], seeds: Sequence[int], budget: ProbeBudget,
    *, progress: bool | None = None, label: str = "", threads: int | None = None,
) -> dict[tuple[int, int], float]:
    """All (LR, seed) runs of one architecture trained together (module docstring): ``{(lr index, seed
    index): criterion}``, equal to :func:`probe_sequential` up to floating-point summation order.

    ``threads``: torch intra-op threads during the probe on CPU. Default 1: the stacked ops are small, and on a
    shared 2-core machine two OpenMP threads wait on each other's descheduled thread (measured: the acceptance
    ``ahps validate --depths 1,2,3,4,6,8`` took 22 s with 1 thread vs 107 s with 2; same results).
    """
    device = resolve_device(budget.device)
    if device.type == "cpu":
        with intra_op_threads(1 if threads is None else threads):
            return _probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label)
    return _probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label)


def _probe_stacked(
    model_factory: ModelFactory, data, lrs: Sequence[float], seeds: Sequence[int], budget: ProbeBudget,
    *, progress: bool | None, label: str,
) -> dict[tuple[int, int], float]:
    from torch.func import functional_call, stack_module_state, vmap

    configs = [budget.config(lrs[0], s) for s in seeds]
    device = resolve_device(budget.device)
    amp_dtype = resolve_amp(budget.amp, device)
    models = [model_factory(s).to(device).train() for s in seeds]
    S, G = len(seeds), len(lrs)
    params_s, buffers_s = stack_module_state(models)
    seed_of = torch.arange(S, device=device).repeat_interleave(G)  # model k = (seed k // G, lr k % G)
    ids = list(range(S * G))
    params = {n: p.detach()[seed_of].clone() for n, p in params_s.items()}
    buffers = {n: b[seed_of].clone() for n, b in buffers_s.items()}
    lr_vec = torch.tensor([lrs[k % G] for k in ids], dtype=torch.float32, device=device)
    momentum_bufs: dict[str, torch.Tensor] | None = None
    skeleton = copy.deepcopy(models[0]).to("meta")
    del models, params_s, buffers_s

    def loss_fn(p, b, x, y):
        with _autocast(device, amp_dtype):
            out = functional_call(skeleton, (p, b), (x,))
        return F.cross_entropy(out.float(), y)

    batched_loss = vmap(loss_fn)
    loaders = [make_train_loader(c, data, device, channels_last=False) for c in configs]
    steps = len(loaders[0])
    if budget.max_steps_per_epoch is not None:
        steps = min(steps, budget.max_steps_per_epoch)
    result: dict[tuple[int, int], float] = {}
    bar = None
    if _want_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=budget.epochs * steps, desc=f"probe {label}".strip(), unit="step", leave=False)
    names = list(params)
    state = {"ids": ids, "params": params, "buffers": buffers, "momentum": momentum_bufs, "lr": lr_vec,
             "seed_of": seed_of}
    # CPU: diverged runs leave the stack at once; CUDA: no host read inside the epoch (dead runs are masked by
    # `alive` on the device and dropped at the epoch's end).
    check_each_step = device.type in STEP_CHECK_DEVICES

    def drop(dead: list[int]) -> None:
        """Record the runs at positions ``dead`` of the stack as diverged and remove them from it."""
        for i in dead:
            k = state["ids"][i]
            result[(k % G, k // G)] = math.inf
        keep_list = [i for i in range(len(state["ids"])) if i not in set(dead)]
        keep = torch.tensor(keep_list, dtype=torch.long, device=device)
        state["ids"] = [state["ids"][i] for i in keep_list]
        state["params"] = {n: p.detach()[keep].clone() for n, p in state["params"].items()}
        state["buffers"] = {n: t[keep].clone() for n, t in state["buffers"].items()}
        if state["momentum"] is not None:
            state["momentum"] = {n: t[keep].clone() for n, t in state["momentum"].items()}
        state["lr"], state["seed_of"] = state["lr"][keep], state["seed_of"][keep]

    try:
        for epoch in range(budget.epochs):
            if not state["ids"]:
                break
            alive = torch.ones(len(state["ids"]), dtype=torch.bool, device=device)
            loss_acc = torch.zeros(len(state["ids"]), device=device, dtype=torch.float32)
            seen = 0
            streams = [itertools.islice(ld.epoch(epoch), steps) for ld in loaders]
            for batches in zip(*streams):
                if not state["ids"]:
                    break
                seed_index = state["seed_of"]
                xs = torch.stack([b[0] for b in batches]).index_select(0, seed_index)
                ys = torch.stack([b[1] for b in batches]).index_select(0, seed_index)
                plist = [state["params"][n].requires_grad_(True) for n in names]
                losses = batched_loss(state["params"], state["buffers"], xs, ys)
                alive = alive & torch.isfinite(losses.detach())
                zeros = torch.zeros_like(losses)
                grads = torch.autograd.grad(torch.where(alive, losses, zeros).sum(), plist)
                with torch.no_grad():
                    new_params, new_bufs = _sgd_stacked(plist, list(grads), state["momentum"], state["lr"], budget)
                    state["params"] = dict(zip(names, new_params))
                    state["momentum"] = dict(zip(names, new_bufs)) if new_bufs is not None else None
                    b = ys.shape[1]
                    loss_acc += torch.where(alive, losses.detach(), zeros.detach()) * b
                    seen += b
                if bar is not None:
                    bar.update(1)
                if check_each_step and not bool(alive.all()):  # a diverged run stops here, like train() on CPU
                    dead = (~alive).nonzero().flatten().tolist()
                    keep = alive.nonzero().flatten()
                    alive, loss_acc = alive[keep], loss_acc[keep]
                    drop(dead)
            if not state["ids"]:
                break
            epoch_loss = (loss_acc.double() / max(seen, 1)).tolist()  # the epoch's one host read
            dead = [i for i, (ok, v) in enumerate(zip(alive.tolist(), epoch_loss)) if not ok or not math.isfinite(v)]
            if epoch + 1 == budget.epochs:
                for i, k in enumerate(state["ids"]):
                    if i not in dead:
                        result[(k % G, k // G)] = epoch_loss[i]
            if dead:
                drop(dead)
    finally:
        if bar is not None:
            bar.close()
    return result


def _sgd_stacked(
    params: list[torch.Tensor], grads: list[torch.Tensor], bufs: Mapping[str, torch.Tensor] | None,
    lr_vec: torch.Tensor, budget: ProbeBudget,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """torch.optim.SGD's update (weight decay, momentum, Nesterov; no dampening) with a per-model LR."""
    params = [p.detach() for p in params]
    if budget.weight_decay:
        grads = torch._foreach_add(grads, params, alpha=budget.weight_decay)
    new_bufs = None
    if budget.momentum:
        if bufs is None:
            new_bufs = [g.clone() for g in grads]
        else:
            new_bufs = list(bufs.values())
            torch._foreach_mul_(new_bufs, budget.momentum)
            torch._foreach_add_(new_bufs, grads)
        grads = torch._foreach_add(grads, new_bufs, alpha=budget.momentum) if budget.nesterov else new_bufs
    neg_lr = -lr_vec
    out = []
    for p, g in zip(params, grads):
        out.append(p.addcmul(g, neg_lr.view(-1, *([1] * (p.dim() - 1)))))
    return out, new_bufs


def probe(
    model_factory: ModelFactory, data, lrs: Sequence[float], seeds: Sequence[int], budget: ProbeBudget,
    *, batched: str = "auto", progress: bool | None = None, label: str = "", threads: int | None = None,
) -> dict[tuple[int, int], float]:
    """Criterion of every (LR, seed) run: stacked (``batched`` on, or auto for MLPs) or one at a time
    (``threads``: see :func:`probe_stacked`; sequential runs use it only when given)."""
    if batched not in BATCHED_MODES:
        raise ConfigError(f"unknown batched mode {batched!r}: accepted are {', '.join(BATCHED_MODES)}")
    use = batched == "on"
    if batched == "auto":
        use = not _has_batchnorm_or_conv(model_factory(seeds[0]))
    if use:
        return probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label, threads=threads)
    with intra_op_threads(threads):
        return probe_sequential(model_factory, data, lrs, seeds, budget, progress=progress)


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
    :class:`ConfigError` when every evaluated LR diverged.
    """
    grid = check_grid(grid)
    if not isinstance(coarse_stride, int) or coarse_stride < 2:
        raise ConfigError(f"coarse stride {coarse_stride!r} must be an integer >= 2")
    n = len(grid)
    done: dict[int, LRPoint] = {}

    def run(indices: list[int]) -> None:
        todo = [i for i in indices if i not in done]
        if todo:
            for i, p in zip(todo, evaluate([grid[i] for i in todo])):
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
        raise ConfigError(
            f"every learning rate of the grid [{grid[0]:.3g}, {grid[-1]:.3g}] diverged: lower the grid"
        )
    curve = [done[i] for i in sorted(done)]
    return grid[best], curve, n > 1 and best in (0, n - 1)


def _argmin(done: Mapping[int, LRPoint]) -> int | None:
    finite = [(p.mean_loss, i) for i, p in done.items() if math.isfinite(p.mean_loss)]
    return min(finite)[1] if finite else None


def find_max_lr(
    model_factory: ModelFactory,
    data,
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
) -> LRSearchResult:
    """The maximal LR of the network ``model_factory(seed)`` builds, on ``data`` (module docstring).

    ``data``: a loaded :class:`~ahps_core.data.DatasetSplit`. ``grid``: LRs (default :func:`default_grid`).
    ``budget``: default :class:`ProbeBudget` (). Returns an :class:`LRSearchResult`.
    """
    started = time.perf_counter()
    grid = check_grid(default_grid() if grid is None else grid)
    seeds = _check_seeds(seeds)
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
    if at_edge and len(grid) > 1:
        warnings.warn(
            f"{label or 'search'}: the best LR {best:.4g} is at the edge of the grid "
            f"[{grid[0]:.4g}, {grid[-1]:.4g}]; the maximal LR may lie outside it", stacklevel=2,
        )
    return LRSearchResult(
        best_lr=best, grid=grid, curve=curve, runs_used=runs, seeds=list(seeds), budget=budget.to_dict(),
        refined=refine, at_edge=at_edge, seconds=time.perf_counter() - started, label=label,
    )


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("no seeds given: the protocol needs at least one (the paper uses 3)")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ConfigError(f"seed {s!r} must be an integer >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} contain duplicates")
    return seeds


# --- architecture-level entry points -------------------------------------------------------------------------


def arch_factory(
    graph, data, *, width: int | None = None, C: int = 16, N: int = 5, init: str = "arch-aware",
    degree: str = "source", kernel_size: int | None = None,
) -> ModelFactory:
    """``seed -> model`` of ``graph`` (:func:`ahps_core.models.build_model`) for ``data``'s shapes."""
    from ahps_core.models import build_model

    in_shape = tuple(int(d) for d in data.train.images.shape[1:])
    fam = graph.family

    def factory(seed: int) -> nn.Module:
        return build_model(
            graph, num_classes=data.num_classes, in_shape=in_shape, width=width if fam != "nb201" else None,
            C=C, N=N, init=init, degree=degree, kernel_size=kernel_size if fam == "cnn" else None,
            generator=torch.Generator().manual_seed(seed),
        )

    factory(0)  # fail early (NoPathError, bad options) before any training
    return factory


def check_family(family: str) -> str:
    from ahps_core.models import MODEL_FAMILIES

    if family not in MODEL_FAMILIES:
        raise ConfigError(f"unknown family {family!r}: accepted families are {', '.join(MODEL_FAMILIES)}")
    return family


def find_base_lr(
    family: str,
    dataset: str,
    *,
    data_root: str | None = None,
    data=None,
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
) -> LRSearchResult:
    """The base LR of ``family`` on ``dataset``: :func:`find_max_lr` on the family's proxy
    (:func:`ahps_core.models.build_proxy`). Defaults: :func:`default_budget` and :func:`default_width` of the
    dataset, :func:`default_grid`, seeds 0, 1, 2, coarse-to-fine refinement."""
    from ahps_core.models import proxy_graph

    check_family(family)
    grid = check_grid(default_grid() if grid is None else grid)
    _check_seeds(seeds)
    if data is None:
        from ahps_core.data import load_dataset

        data = load_dataset(dataset, data_root)
    budget = budget or default_budget(dataset)
    width = width if width is not None else default_width(family, dataset)
    graph = proxy_graph(family, kernel_size=kernel_size)
    factory = arch_factory(graph, data, width=width, C=C, N=N, init=init, kernel_size=kernel_size)
    return find_max_lr(
        factory, data, grid, seeds, budget, refine=refine, coarse_stride=coarse_stride, batched=batched,
        progress=progress, label=f"{family}:{graph.spec}", threads=threads,
    )

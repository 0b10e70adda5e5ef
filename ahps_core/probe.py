"""Running LR probes: every (LR, seed) run of one network, trained one at a time or all together.

:func:`probe` returns the criterion of every run of a grid (the mean training loss over the last epoch, ``+inf``
when the run diverged), for :func:`ahps_core.lr_search.find_max_lr`.

Stacked probing (:func:`probe_stacked`, the default for networks without BatchNorm or convolution, i.e. MLPs):
the models' parameters are stacked along a leading dimension and trained with ``torch.func.vmap`` over
``functional_call`` (batched matmuls), each with its own LR, its own data order (the seed's
:class:`~ahps_core.data.DeviceLoader` stream) and its own divergence detection; diverged models are dropped from
the stack. This reproduces separate :func:`ahps_core.train.train` runs up to floating-point summation order
(tested). On CPU a diverged run leaves the stack at the step it diverged, like ``train()`` there; on CUDA no host
read happens inside an epoch (dead runs are masked on the device and dropped at the epoch's end).
Convolutional networks are trained one run at a time (:func:`probe_sequential`; vmapped convs become grouped
convs, no faster on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.checks import check_choice, check_int
from ahps_core.presets import ProbeBudget
from ahps_core.runtime import autocast, make_train_loader, resolve_amp, resolve_device, want_progress
from ahps_core.train import train

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit

BATCHED_MODES = ("auto", "on", "off")
#: Device types on which the stacked probe reads the divergence flags every step (module docstring).
STEP_CHECK_DEVICES = ("cpu",)

#: ``seed -> model``: builds the (initialized) network of one probe run.
ModelFactory = Callable[[int], nn.Module]
#: ``{(lr index, seed index): criterion}``; ``inf`` for a diverged run.
Criteria = dict[tuple[int, int], float]


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged), restoring the previous count."""
    if n is None:
        yield
        return
    check_int("threads", n, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def has_batchnorm_or_conv(model: nn.Module) -> bool:
    return any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.conv._ConvNd)) for m in model.modules())


def probe(
    model_factory: ModelFactory, data: DatasetSplit, lrs: Sequence[float], seeds: Sequence[int],
    budget: ProbeBudget, *, batched: str = "auto", progress: bool | None = None, label: str = "",
    threads: int | None = None,
) -> Criteria:
    """Criterion of every (LR, seed) run: stacked (``batched`` on, or auto for MLPs) or one at a time
    (``threads``: see :func:`probe_stacked`; sequential runs use it only when given)."""
    check_choice("batched mode", batched, BATCHED_MODES)
    use = batched == "on"
    if batched == "auto":
        use = not has_batchnorm_or_conv(model_factory(seeds[0]))
    if use:
        return probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label, threads=threads)
    with intra_op_threads(threads):
        return probe_sequential(model_factory, data, lrs, seeds, budget, progress=progress)


def probe_sequential(
    model_factory: ModelFactory, data: DatasetSplit, lrs: Sequence[float], seeds: Sequence[int],
    budget: ProbeBudget, *, progress: bool | None = None,
) -> Criteria:
    """One :func:`ahps_core.train.train` run per (LR, seed)."""
    out = {}
    for si, seed in enumerate(seeds):
        for li, lr in enumerate(lrs):
            result = train(budget.config(lr, seed), model=model_factory(seed), data=data, progress=False)
            out[(li, si)] = result.final_train_loss
    return out


def probe_stacked(
    model_factory: ModelFactory, data: DatasetSplit, lrs: Sequence[float], seeds: Sequence[int],
    budget: ProbeBudget, *, progress: bool | None = None, label: str = "", threads: int | None = None,
) -> Criteria:
    """All (LR, seed) runs of one architecture trained together (module docstring), equal to
    :func:`probe_sequential` up to floating-point summation order.

    ``threads``: torch intra-op threads during the probe on CPU. Default 1: the stacked ops are small, and on a
    shared 2-core machine two OpenMP threads wait on each other's descheduled thread (measured: the acceptance
    ``ahps validate --depths 1,2,3,4,6,8`` took 22 s with 1 thread vs 107 s with 2; same results).
    """
    device = resolve_device(budget.device)
    if device.type == "cpu":
        with intra_op_threads(1 if threads is None else threads):
            return _probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label)
    return _probe_stacked(model_factory, data, lrs, seeds, budget, progress=progress, label=label)


@dataclass
class _Stack:
    """The live runs of a stacked probe. Position ``i`` of every tensor is run ``ids[i]``, where run ``k`` is
    (seed ``k // G``, LR ``k % G``) of ``G`` LRs."""

    ids: list[int]
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor] | None
    lr: torch.Tensor
    seed_of: torch.Tensor

    def drop(self, dead: Sequence[int]) -> list[int]:
        """Remove the runs at positions ``dead``; returns their ids."""
        gone = set(dead)
        removed = [self.ids[i] for i in dead]
        keep_list = [i for i in range(len(self.ids)) if i not in gone]
        keep = torch.tensor(keep_list, dtype=torch.long, device=self.lr.device)
        self.ids = [self.ids[i] for i in keep_list]
        self.params = {n: p.detach()[keep].clone() for n, p in self.params.items()}
        self.buffers = {n: t[keep].clone() for n, t in self.buffers.items()}
        if self.momentum is not None:
            self.momentum = {n: t[keep].clone() for n, t in self.momentum.items()}
        self.lr, self.seed_of = self.lr[keep], self.seed_of[keep]
        return removed


def _probe_stacked(
    model_factory: ModelFactory, data: DatasetSplit, lrs: Sequence[float], seeds: Sequence[int],
    budget: ProbeBudget, *, progress: bool | None, label: str,
) -> Criteria:
    from torch.func import functional_call, stack_module_state, vmap

    configs = [budget.config(lrs[0], s) for s in seeds]
    device = resolve_device(budget.device)
    amp_dtype = resolve_amp(budget.amp, device)
    models = [model_factory(s).to(device).train() for s in seeds]
    S, G = len(seeds), len(lrs)
    params_s, buffers_s = stack_module_state(models)
    seed_of = torch.arange(S, device=device).repeat_interleave(G)  # model k = (seed k // G, lr k % G)
    ids = list(range(S * G))
    stack = _Stack(
        ids=ids,
        params={n: p.detach()[seed_of].clone() for n, p in params_s.items()},
        buffers={n: b[seed_of].clone() for n, b in buffers_s.items()},
        momentum=None,
        lr=torch.tensor([lrs[k % G] for k in ids], dtype=torch.float32, device=device),
        seed_of=seed_of,
    )
    skeleton = copy.deepcopy(models[0]).to("meta")
    del models, params_s, buffers_s

    def loss_fn(p, b, x, y):
        with autocast(device, amp_dtype):
            out = functional_call(skeleton, (p, b), (x,))
        return F.cross_entropy(out.float(), y)

    batched_loss = vmap(loss_fn)
    loaders = [make_train_loader(c, data, device, channels_last=False) for c in configs]
    steps = len(loaders[0])
    if budget.max_steps_per_epoch is not None:
        steps = min(steps, budget.max_steps_per_epoch)
    result: Criteria = {}
    bar = None
    if want_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=budget.epochs * steps, desc=f"probe {label}".strip(), unit="step", leave=False)
    names = list(stack.params)
    check_each_step = device.type in STEP_CHECK_DEVICES

    def drop(dead: list[int]) -> None:
        """Record the runs at positions ``dead`` of the stack as diverged and remove them from it."""
        for k in stack.drop(dead):
            result[(k % G, k // G)] = math.inf

    try:
        for epoch in range(budget.epochs):
            if not stack.ids:
                break
            alive = torch.ones(len(stack.ids), dtype=torch.bool, device=device)
            loss_acc = torch.zeros(len(stack.ids), device=device, dtype=torch.float32)
            seen = 0
            streams = [itertools.islice(ld.epoch(epoch), steps) for ld in loaders]
            for batches in zip(*streams, strict=True):
                if not stack.ids:
                    break
                seed_index = stack.seed_of
                xs = torch.stack([b[0] for b in batches]).index_select(0, seed_index)
                ys = torch.stack([b[1] for b in batches]).index_select(0, seed_index)
                plist = [stack.params[n].requires_grad_(True) for n in names]
                losses = batched_loss(stack.params, stack.buffers, xs, ys)
                alive = alive & torch.isfinite(losses.detach())
                zeros = torch.zeros_like(losses)
                grads = torch.autograd.grad(torch.where(alive, losses, zeros).sum(), plist)
                with torch.no_grad():
                    new_params, new_bufs = sgd_stacked(plist, list(grads), stack.momentum, stack.lr, budget)
                    stack.params = dict(zip(names, new_params, strict=True))
                    stack.momentum = dict(zip(names, new_bufs, strict=True)) if new_bufs is not None else None
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
            if not stack.ids:
                break
            epoch_loss = (loss_acc.double() / max(seen, 1)).tolist()  # the epoch's one host read
            dead = [i for i, (ok, v) in enumerate(zip(alive.tolist(), epoch_loss, strict=True))
                    if not ok or not math.isfinite(v)]
            if epoch + 1 == budget.epochs:
                for i, k in enumerate(stack.ids):
                    if i not in dead:
                        result[(k % G, k // G)] = epoch_loss[i]
            if dead:
                drop(dead)
    finally:
        if bar is not None:
            bar.close()
    return result


def sgd_stacked(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], bufs: Mapping[str, torch.Tensor] | None,
    lr_vec: torch.Tensor, budget: ProbeBudget,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """torch.optim.SGD's update (weight decay, momentum, Nesterov; no dampening) of stacked parameters, with a
    per-model LR ``lr_vec``: ``(new parameters, new momentum buffers or None)``."""
    params = [p.detach() for p in params]
    steps: list[torch.Tensor] = list(grads)
    if budget.weight_decay:
        steps = list(torch._foreach_add(steps, params, alpha=budget.weight_decay))
    new_bufs = None
    if budget.momentum:
        if bufs is None:
            new_bufs = [g.clone() for g in steps]
        else:
            new_bufs = list(bufs.values())
            torch._foreach_mul_(new_bufs, budget.momentum)
            torch._foreach_add_(new_bufs, steps)
        steps = list(torch._foreach_add(steps, new_bufs, alpha=budget.momentum)) if budget.nesterov else new_bufs
    neg_lr = -lr_vec
    out = []
    for p, g in zip(params, steps, strict=True):
        out.append(p.addcmul(g, neg_lr.view(-1, *([1] * (p.dim() - 1)))))
    return out, new_bufs


__all__ = ["BATCHED_MODES", "STEP_CHECK_DEVICES", "Criteria", "ModelFactory", "has_batchnorm_or_conv",
           "intra_op_threads", "probe", "probe_sequential", "probe_stacked", "sgd_stacked"]

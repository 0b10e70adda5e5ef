"""Packed training: several runs of one architecture (its arms x seeds) trained in one process, stacked.

``train_pack(configs)`` trains every :class:`~ahps_core.train.TrainConfig` of ``configs`` and returns one
:class:`~ahps_core.train.TrainResult` per config, exactly what :func:`ahps_core.train.train` would return for it:
the same history, status, divergence, checkpoint and result files (``checkpoint.pt`` after every epoch,
``result.json`` at the end, the same configuration hash), so a run started in a pack resumes alone and the
reverse, and a finished run is returned from its ``result.json`` without training.

The runs of a pack may differ only in :data:`PER_RUN_FIELDS` (LR, init, seed, checkpoint directory). With
``stack`` on (``auto``: every network without convolutions, i.e. MLPs, and every network on CUDA) they train
**stacked** (:class:`ahps_core.stacking.ModelStack`): one network holding all runs' parameters (batched matmuls,
grouped convolutions), one forward/backward/update per step, each run with its own LR (and schedule), its own
init, its own data order (the :class:`~ahps_core.data.DeviceLoader` stream of its seed) and its own divergence
detection, as in ``train()``: on CPU every run's loss is read each step, and a run whose loss is not finite stops
there, before the update (it is masked out of the step and dropped from the stack at the end of the epoch); on
CUDA nothing is read inside the step (:class:`PackWatch`). On CPU stacked MLP runs equal their own ``train()`` run
to float rounding (tested: losses within 1e-5 relative, accuracies equal): bit for bit where MKL runs the batched
and the single matmuls with the same kernels (an Intel CPU with AVX-512, at ``make run``'s width), about 1e-7
relative where it does not (small widths; an AVX2-only AMD EPYC at every width); stacked convolutional
networks agree within the tolerances ``tests/test_packed.py`` states. Runs resumed at different epochs train
together, each at its own epoch. Otherwise (``stack`` off, or convolutional networks on CPU, where grouped
convolutions gain nothing) the runs train one after another with ``train()`` in this process.

Per-run timings: ``seconds`` and ``images_per_s`` of a stacked run are those of the stack it trained in (the
runs shared the same wall time).

Speed on CUDA (``step_mode``, :data:`ahps_core.train_config.STEP_MODES`): ``graphs`` captures the whole stacked
step (forward, backward, update) in a CUDA graph after a few eager warm-up steps and replays it
(:mod:`ahps_core.packed_gpu`); ``compile`` runs it through ``torch.compile``; cuDNN autotuning
(``cudnn.benchmark``) is on for every stacked CUDA training. On CPU every step runs eagerly.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.checkpoint import get_rng_state, read_checkpoint, read_result, write_checkpoint, write_result
from ahps_core.checks import check_choice, check_writable_dir
from ahps_core.errors import ConfigError, DataError
from ahps_core.optim import SGD
from ahps_core.runtime import (
    autocast,
    is_convolutional,
    make_eval_loader,
    make_train_loader,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    want_progress,
)
from ahps_core.stacking import ModelStack, per_run_loss, stackable
from ahps_core.train import (
    TrainConfig,
    TrainResult,
    build_config_model,
    load_data,
    lr_at,
    run_hash,
    schedule_steps,
    train,
)

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit

STACK_MODES = ("auto", "on", "off")
#: The TrainConfig fields the runs of one pack may differ in.
PER_RUN_FIELDS = frozenset({"lr", "init", "seed", "checkpoint_dir"})

Callback = Callable[[dict[str, Any]], None]


def check_pack(configs: Sequence[TrainConfig]) -> list[TrainConfig]:
    """The validated ``configs`` of one pack; a ConfigError names a field that differs outside
    :data:`PER_RUN_FIELDS`, or a checkpoint directory two runs share."""
    checked = [c.validated() for c in configs]
    if not checked:
        raise ConfigError("a pack needs at least one training configuration")
    first = checked[0].to_dict()
    for c in checked[1:]:
        other = c.to_dict()
        for key in first:
            if key not in PER_RUN_FIELDS and first[key] != other[key]:
                raise ConfigError(f"the runs of a pack differ in {key} ({first[key]!r} vs {other[key]!r}); they may "
                                  f"differ only in {', '.join(sorted(PER_RUN_FIELDS))}")
    dirs = [str(Path(c.checkpoint_dir).resolve()) for c in checked if c.checkpoint_dir]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("two runs of a pack share a checkpoint_dir; every run needs its own")
    return checked


def use_stack(mode: str, device: torch.device, model: nn.Module) -> bool:
    """Whether a pack of ``model``'s architecture trains stacked (``mode``: :data:`STACK_MODES`, module
    docstring); ``on`` with a network that cannot be stacked is a ConfigError saying why."""
    check_choice("stack", mode, STACK_MODES)
    if mode == "off":
        return False
    why = stackable(model)
    if mode == "on":
        if why:
            raise ConfigError(f"stack 'on': {why}")
        return True
    return not why and (device.type == "cuda" or not is_convolutional(model))


@dataclass
class PackRun:
    """One run of a pack while it trains (its configuration, files and progress)."""

    index: int
    config: TrainConfig
    config_hash: str
    model: nn.Module
    ckpt_dir: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    train_seconds: float = 0.0
    train_images: int = 0
    resumed_from: int = 0
    momentum: dict[str, torch.Tensor] | None = None
    status: str = "completed"
    diverged_at: dict[str, int] | None = None


class PackWatch:
    """Per-run finiteness of a ``[K]`` device vector on CUDA without blocking the step (the pack's form of
    :class:`ahps_core.runtime.GpuDivergenceWatch`): flags copied to pinned memory behind an event, read at the
    next poll only once the event has completed."""

    def __init__(self, runs: int) -> None:
        self.flags = torch.zeros(runs, dtype=torch.bool, pin_memory=True)
        self.event: torch.cuda.Event | None = None

    def poll(self, values: torch.Tensor) -> list[int]:
        """Positions found non-finite by a completed earlier check (then a new check is issued)."""
        bad: list[int] = []
        if self.event is not None and self.event.query():
            bad = [i for i, v in enumerate(self.flags.tolist()) if v]
            self.event = None
        if self.event is None:
            self.flags.copy_(~torch.isfinite(values), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        return bad


def train_pack(
    configs: Sequence[TrainConfig], *, data: DatasetSplit | None = None,
    callbacks: Sequence[Callback | None] | None = None, progress: bool | None = None, stack: str = "auto",
) -> list[TrainResult]:
    """Train every run of ``configs`` (module docstring); one result per config, in order. ``callbacks[i]``
    (optional) gets run ``i``'s epoch records, as ``train()``'s ``callback``; ``data``: the loaded dataset
    (default: loaded from the first config)."""
    configs = check_pack(configs)
    hooks = list(callbacks) if callbacks is not None else [None] * len(configs)
    if len(hooks) != len(configs):
        raise ConfigError(f"{len(hooks)} callbacks for {len(configs)} runs")
    device = resolve_device(configs[0].device)
    if data is None:
        data = load_data(configs[0])
    results: list[TrainResult | None] = [None] * len(configs)
    pending: list[PackRun] = []
    for i, c in enumerate(configs):
        model = build_config_model(c, data)
        run = PackRun(i, c, run_hash(c, data), model, Path(c.checkpoint_dir) if c.checkpoint_dir else None)
        finished = None
        if run.ckpt_dir is not None:
            check_writable_dir(run.ckpt_dir, "checkpoint dir")  # before anything is computed, as train() does
            finished = read_result(run.ckpt_dir, run.config_hash)
        if finished is not None:
            try:
                results[i] = TrainResult.from_dict(finished)
            except (TypeError, ValueError):
                raise DataError(f"{run.ckpt_dir}/result.json is not a training result; delete it to train "
                                "again") from None
        else:
            pending.append(run)
    alone = len(pending) == 1 and stack != "on"  # one run: train() itself, unless the stack is asked for
    if pending and (alone or not use_stack(stack, device, pending[0].model)):
        for run in pending:
            results[run.index] = train(run.config, data=data, callback=hooks[run.index], progress=progress)
    elif pending:
        for run in pending:
            _resume(run, device)
        with torch.backends.cudnn.flags(enabled=True, benchmark=device.type == "cuda"):
            for result_index, result in _train_stacked(pending, data, device, hooks, progress):
                results[result_index] = result
    missing = [configs[i].seed for i, r in enumerate(results) if r is None]
    if missing:  # pragma: no cover - every run is returned, read back or trained above
        raise RuntimeError(f"packed training returned no result for the runs of seeds {missing}")
    return [r for r in results if r is not None]


def _resume(run: PackRun, device: torch.device) -> None:
    """Load ``run``'s checkpoint (model, momentum, history, counters) when there is one."""
    run.model.to(device)
    if run.ckpt_dir is None:
        return
    state = read_checkpoint(run.ckpt_dir, run.config_hash, device)
    if state is None:
        return
    run.model.load_state_dict(state["model"])
    names = [n for n, _ in run.model.named_parameters()]
    buffers = state["optimizer"].get("state", {})
    momentum = {names[i]: entry["momentum_buffer"] for i, entry in buffers.items()
                if entry.get("momentum_buffer") is not None}
    run.momentum = momentum or None
    run.history = list(state["history"])
    run.epoch = run.resumed_from = int(state["epoch"])
    run.train_seconds = float(state["train_seconds"])
    run.train_images = int(state["train_images"])


class _Stacked:
    """The live runs of a pack as one stacked network with its optimizer and LR schedule (rebuilt when runs
    leave)."""

    def __init__(self, runs: list[PackRun], device: torch.device, channels_last: bool, steps_per_epoch: int,
                 total_steps: int, warmup_steps: int) -> None:
        c = runs[0].config
        self.runs = runs
        self.stack = ModelStack([r.model for r in runs])
        self.module = self.stack.module.to(device).train()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        names = self.stack.param_names()
        params = list(self.module.parameters())
        self.optimizer = SGD(params, lr=torch.zeros(len(runs), device=device), momentum=c.momentum,
                             nesterov=c.nesterov, weight_decay=c.weight_decay)
        if any(r.momentum for r in runs):
            own = [dict(r.model.named_parameters()) for r in runs]
            self.optimizer.momentum_buffers = [
                self.stack.stack_tensors(n, [(r.momentum or {}).get(n, torch.zeros_like(o[n])).to(p)
                                             for r, o in zip(runs, own, strict=True)])
                .to(memory_format=torch.channels_last if channels_last and p.dim() == 4 else torch.contiguous_format)
                for n, p in zip(names, params, strict=True)]
        remaining = max(c.epochs * steps_per_epoch - r.epoch * steps_per_epoch for r in runs)
        rows = [[lr_at(r.epoch * steps_per_epoch + t, base_lr=r.config.lr, total_steps=total_steps,
                       warmup_steps=warmup_steps, schedule=c.schedule) for r in runs] for t in range(remaining)]
        #: ``schedule[t]``: every run's LR at its ``t``-th step from now (on the device: no copy inside a step)
        self.schedule = torch.tensor(rows, dtype=torch.float32, device=device)
        self.used = 0
        #: per-stack state of the step function (captured CUDA graphs, a compiled module)
        self.cache: dict[Any, Any] = {}

    def run_state(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Run ``k``'s model state and momentum buffers (by parameter name)."""
        names = self.stack.param_names()
        bufs = self.optimizer.momentum_buffers
        momentum = {n: self.stack.part(n, b, k) for n, b in zip(names, bufs, strict=True) if b is not None}
        return self.stack.state_of(k), momentum or None

    def optimizer_state(self, k: int, lr: float, momentum: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        """Run ``k``'s optimizer state (``momentum``: its buffers, from :meth:`run_state`) in ``torch.optim.SGD``'s
        format, as ``train()`` checkpoints it."""
        c = self.runs[k].config
        single = SGD(self.runs[k].model.parameters(), lr=lr, momentum=c.momentum, nesterov=c.nesterov,
                     weight_decay=c.weight_decay)
        if momentum is not None:
            single.momentum_buffers = [momentum[n] for n, _ in self.runs[k].model.named_parameters()]
        return single.state_dict()


def _train_stacked(runs: list[PackRun], data: DatasetSplit, device: torch.device,
                   hooks: Sequence[Callback | None], progress: bool | None):
    """Yield ``(index, TrainResult)`` of every run as it finishes (module docstring)."""
    c = runs[0].config
    channels_last = resolve_channels_last(c.channels_last, runs[0].model)
    amp_dtype = resolve_amp(c.amp, device)
    loaders = {r.config.seed: make_train_loader(r.config, data, device, channels_last) for r in runs}
    eval_loader = make_eval_loader(data, device, channels_last) if c.eval_every else None
    steps_per_epoch = len(next(iter(loaders.values())))
    if c.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, c.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise DataError(f"dataset {c.dataset}: no training batch (0 images?)")
    total_steps, warmup_steps = schedule_steps(c, steps_per_epoch)
    step_fn = _step_function(c, device)
    bar = None
    if want_progress(progress):
        from tqdm.auto import tqdm

        done = sum(r.epoch for r in runs) * steps_per_epoch
        bar = tqdm(total=len(runs) * total_steps, initial=done, desc=f"pack {c.arch} x{len(runs)}", unit="step",
                   file=sys.stderr, leave=False, dynamic_ncols=True)
    started = time.perf_counter()
    for run in runs:  # resumed from its last epoch's checkpoint (stopped before its result was written)
        if run.epoch >= run.config.epochs:
            yield run.index, _result(run, started, device, amp_dtype, channels_last)
    live = [r for r in runs if r.epoch < r.config.epochs]
    try:
        while live:
            st = _Stacked(live, device, channels_last, steps_per_epoch, total_steps, warmup_steps)
            ended = False
            while not ended:
                ended = _epoch(st, loaders, eval_loader, steps_per_epoch, amp_dtype, channels_last, device, step_fn,
                               hooks, bar, total_steps, warmup_steps)
                for run in st.runs:
                    if run.status == "diverged" or run.epoch >= run.config.epochs:
                        yield run.index, _result(run, started, device, amp_dtype, channels_last)
                leaving = [r for r in st.runs if r.status == "diverged" or r.epoch >= r.config.epochs]
                if leaving:
                    for k, run in enumerate(st.runs):
                        state, run.momentum = st.run_state(k)
                        run.model.load_state_dict(state)
                    live = [r for r in st.runs if r not in leaving]
                    break
    finally:
        if bar is not None:
            bar.close()


def _step_function(c: TrainConfig, device: torch.device):
    """The stacked training step of ``c.step_mode`` on ``device`` (eager unless CUDA graphs/compile apply)."""
    from ahps_core.packed_gpu import resolve_step_mode, step_runner

    return step_runner(resolve_step_mode(c.step_mode, device))


def _epoch(st: _Stacked, loaders, eval_loader, steps_per_epoch: int, amp_dtype, channels_last: bool,
           device: torch.device, step_fn, hooks, bar, total_steps: int, warmup_steps: int) -> bool:
    """One epoch of every run of ``st`` (each at its own epoch); True when a run left (finished or diverged)."""
    runs, k_runs = st.runs, len(st.runs)
    keys = [(r.config.seed, r.epoch) for r in runs]
    streams = {key: itertools.islice(loaders[key[0]].epoch(key[1]), steps_per_epoch) for key in dict.fromkeys(keys)}
    t0 = time.perf_counter()
    loss_sum = torch.zeros(k_runs, device=device, dtype=torch.float32)
    correct = torch.zeros(k_runs, device=device, dtype=torch.int64)
    dead: set[int] = set()
    watch = PackWatch(k_runs) if device.type == "cuda" else None
    check_every = runs[0].config.divergence_check_every
    offset = st.used  # steps of st.schedule already taken
    seen = steps = step = 0
    for step in range(steps_per_epoch):
        batch = {key: next(stream) for key, stream in streams.items()}
        x = st.stack.stack_input([batch[key][0] for key in keys], channels_last)
        y = torch.stack([batch[key][1] for key in keys])
        lr_vec = st.schedule[offset + step]
        losses = step_fn(st, x, y, lr_vec, amp_dtype, device, dead, step, runs)
        if losses is None:  # every run diverged at this step (CPU)
            break
        loss_vec, hits = losses
        b = y.shape[1]
        loss_sum += loss_vec * b
        correct += hits
        seen += b
        steps += 1
        if bar is not None:
            bar.update(k_runs - len(dead))
        if watch is not None and (step + 1) % check_every == 0:
            for k in watch.poll(loss_sum):
                if k not in dead:
                    dead.add(k)
                    runs[k].diverged_at = {"epoch": runs[k].epoch + 1, "step": step}
    st.used = offset + steps_per_epoch
    epoch_seconds = time.perf_counter() - t0
    losses_host = loss_sum.tolist()  # the one host read of the epoch
    hits_host = correct.tolist()
    evals: dict[int, tuple[float, float]] = {}
    due = [k for k, r in enumerate(runs) if k not in dead and math.isfinite(losses_host[k] / max(seen, 1))
           and ((r.epoch + 1) % r.config.eval_every == 0 or r.epoch + 1 == r.config.epochs)] if eval_loader else []
    if due:
        every = _evaluate(st, eval_loader, amp_dtype, channels_last)
        evals = {k: every[k] for k in due}
    left = False
    records: list[tuple[int, dict[str, Any]]] = []
    for k, run in enumerate(runs):
        train_loss = losses_host[k] / max(seen, 1)
        if k not in dead and not math.isfinite(train_loss):
            run.diverged_at = {"epoch": run.epoch + 1, "step": step}
            dead.add(k)
        if k in dead:
            run.status = "diverged"
            left = True
            continue
        lr = lr_at(run.epoch * steps_per_epoch + steps_per_epoch - 1, base_lr=run.config.lr,
                   total_steps=total_steps, warmup_steps=warmup_steps, schedule=run.config.schedule)
        record: dict[str, Any] = {
            "epoch": run.epoch + 1, "train_loss": train_loss, "train_acc": hits_host[k] / max(seen, 1),
            "eval_loss": None, "eval_acc": None, "lr": lr, "seconds": epoch_seconds, "steps": steps, "images": seen,
        }
        if k in evals:
            record["eval_loss"], record["eval_acc"] = evals[k]
        run.history.append(record)
        run.epoch += 1
        run.train_seconds += epoch_seconds
        run.train_images += seen
        left = left or run.epoch >= run.config.epochs
        records.append((k, record))
        if run.ckpt_dir is not None:
            state, momentum = st.run_state(k)
            write_checkpoint(run.ckpt_dir, {
                "config_hash": run.config_hash, "config": run.config.to_dict(), "epoch": run.epoch,
                "model": state, "optimizer": st.optimizer_state(k, lr, momentum), "rng": get_rng_state(),
                "history": run.history, "train_seconds": run.train_seconds, "train_images": run.train_images,
            })
    for k, record in records:
        hook = hooks[runs[k].index]
        if hook is not None:
            hook(dict(record))
    return left


@torch.no_grad()
def _evaluate(st: _Stacked, loader, amp_dtype, channels_last: bool) -> list[tuple[float, float]]:
    """Every run's ``(mean cross-entropy, accuracy)`` on ``loader`` (as :func:`ahps_core.runtime.evaluate`)."""
    module, k_runs = st.module, len(st.runs)
    module.eval()
    device = loader.device
    loss_sums = [torch.zeros((), device=device, dtype=torch.float64) for _ in range(k_runs)]
    correct = torch.zeros(k_runs, device=device, dtype=torch.int64)
    n = 0
    for x, y in loader.epoch(0):
        with autocast(device, amp_dtype):
            out = module(st.stack.shared_input(x, channels_last))
        out = out.float()
        for k in range(k_runs):
            loss_sums[k] += F.cross_entropy(out[k], y, reduction="sum").double()
        correct += (out.argmax(-1) == y).sum(-1)
        n += y.shape[0]
    module.train()
    if n == 0:
        return [(math.nan, math.nan)] * k_runs
    hits = correct.tolist()
    return [(float(loss_sums[k]) / n, hits[k] / n) for k in range(k_runs)]


def _result(run: PackRun, started: float, device: torch.device, amp_dtype, channels_last: bool) -> TrainResult:
    """``run``'s TrainResult (as ``train()`` builds it), written to its ``result.json``."""
    final = dict(run.history[-1]) if run.history else {}
    if run.status == "diverged":
        final = {"train_loss": math.inf, "train_acc": None, "eval_loss": None, "eval_acc": None,
                 "epoch": run.diverged_at["epoch"] if run.diverged_at else None}
    result = TrainResult(
        status=run.status, history=run.history, final=final,
        images_per_s=run.train_images / run.train_seconds if run.train_seconds > 0 else 0.0,
        num_params=sum(p.numel() for p in run.model.parameters()), config=run.config.to_dict(),
        config_hash=run.config_hash, seconds=time.perf_counter() - started, device=str(device),
        amp="bf16" if amp_dtype is not None else "off", channels_last=channels_last,
        resumed_from=run.resumed_from, diverged_at=run.diverged_at,
    )
    if run.ckpt_dir is not None:
        write_result(run.ckpt_dir, run.config_hash, result.to_dict())
    return result


def eager_step(st: _Stacked, x: torch.Tensor, y: torch.Tensor, lr_vec: torch.Tensor, amp_dtype,
               device: torch.device, dead: set[int], step: int, runs: list[PackRun]):
    """One eager stacked step: ``(per-run loss [K], per-run correct [K])``, or None when every run has diverged.
    On CPU the losses are read before the update and a non-finite run is masked out of it (``dead``)."""
    with autocast(device, amp_dtype):
        logits = st.module(x)
    losses = per_run_loss(logits, y)
    loss_vec = torch.stack([loss.detach() for loss in losses])
    if device.type == "cpu":
        for k, value in enumerate(loss_vec.tolist()):
            if k not in dead and not math.isfinite(value):
                dead.add(k)
                runs[k].diverged_at = {"epoch": runs[k].epoch + 1, "step": step}
        if len(dead) == len(losses):
            return None
    alive = [loss for k, loss in enumerate(losses) if k not in dead]
    st.optimizer.param_groups[0]["lr"] = lr_vec
    st.optimizer.zero_grad(set_to_none=True)
    torch.stack(alive).sum().backward() if len(alive) > 1 else alive[0].backward()
    st.optimizer.step()
    return loss_vec, (logits.detach().argmax(-1) == y).sum(-1)


__all__ = ["PER_RUN_FIELDS", "STACK_MODES", "PackRun", "PackWatch", "check_pack", "eager_step", "train_pack",
           "use_stack"]

"""The training engine: one architecture x one preset x one seed.

``train(TrainConfig(...))`` trains with SGD (momentum, Nesterov, weight decay; one global learning rate for all
parameters, as the reference experiments) under a constant or cosine schedule with optional linear warmup, and
returns a :class:`TrainResult` with the per-epoch history (train loss/accuracy, eval loss/accuracy, LR, seconds).
Named presets of :class:`TrainConfig` (NAS-Bench-201's recipe, the LR probe, the reference experiments' plain
SGD) are in :mod:`ahps_core.presets`.

Schedule: the LR is set before every step from the global step ``s`` (``S`` steps in all, ``W`` warmup steps):
``lr * (s + 1) / W`` while ``s < W``, then ``lr`` (``constant``) or ``lr * (1 + cos(pi * (s - W) / (S - W))) / 2``
(``cosine``, reaching 0 at the end of training). See :func:`lr_at`.

Divergence: a non-finite training loss stops the run with status ``diverged`` (never an exception); the history
of the completed epochs is kept and the criterion :attr:`TrainResult.final_train_loss` is ``+inf``. On CPU the
loss is checked at every step, before the update (a host read costs nothing there). On CUDA nothing is read
inside the step: every ``divergence_check_every`` steps a finiteness flag of the accumulated loss is copied to
pinned host memory with ``non_blocking=True`` behind a CUDA event, and read at the next check only if the event
has completed (so a divergence stops the run at most ~2K steps late); at the end of every epoch the accumulated
metrics are read once anyway, which is the definitive check.

Checkpoints (:mod:`ahps_core.checkpoint`): with ``checkpoint_dir``, ``checkpoint.pt`` is written atomically
after every epoch with the model, optimizer and RNG states, the history and a hash of the configuration. A run
started on a directory holding a checkpoint of the same configuration resumes from it and ends with the same
metrics and weights as an uninterrupted run (bit for bit on CPU: the data order of epoch ``e`` depends only on
``(seed, e)``, see :class:`ahps_core.data.DeviceLoader`). A finished run writes ``result.json``; starting it
again returns that result without training. A checkpoint of a *different* configuration is an error.

Speed (:mod:`ahps_core.runtime`; CUDA): bf16 autocast, channels_last for convolutional models, device-resident
data, metrics accumulated on the device and read once per epoch; with ``step_mode`` ``graphs`` or ``compile`` the
run goes to the packed engine (:mod:`ahps_core.packed_gpu`: the step replayed from a CUDA graph, or compiled).
CPU: fp32, channels_last for convolutional models (``ahps bench train`` measures what it gains on the machine at
hand: README "Benchmarks"); bf16 autocast only when asked (``amp="bf16"``), as it changes numerics.

This module never imports mlflow: ``callback(epoch_record)`` is the hook the tracking adapter uses.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.checkpoint import (
    get_rng_state,
    read_checkpoint,
    read_result,
    set_rng_state,
    write_checkpoint,
    write_result,
)
from ahps_core.checks import check_writable_dir
from ahps_core.errors import ConfigError, DataError
from ahps_core.jsonio import json_restore, json_safe, stable_hash
from ahps_core.optim import SGD
from ahps_core.runtime import (
    GpuDivergenceWatch,
    autocast,
    evaluate,
    input_shape,
    make_eval_loader,
    make_train_loader,
    resolve_amp,
    resolve_channels_last,
    resolve_device,
    want_progress,
)
from ahps_core.train_config import (  # noqa: F401  (re-exported: the engine's configuration lives there)
    AMP_MODES,
    CHANNELS_LAST_MODES,
    DEGREES,
    DEVICES,
    FAMILIES,
    INITS,
    SCHEDULES,
    STEP_MODES,
    TrainConfig,
)

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    ``history``: one dict per completed epoch ``{epoch, train_loss, train_acc, eval_loss, eval_acc, lr,
    seconds, steps, images}`` (``epoch`` counts from 1; eval fields are None on epochs without evaluation;
    ``lr`` is the LR of the epoch's last step). ``final``: the last record's metrics (``train_loss`` +inf
    when diverged). ``diverged_at``: ``{epoch, step}`` of the first non-finite loss seen.
    """

    status: str
    history: list[dict[str, Any]]
    final: dict[str, Any]
    images_per_s: float
    num_params: int
    config: dict[str, Any]
    config_hash: str
    seconds: float
    device: str
    amp: str
    channels_last: bool
    resumed_from: int = 0
    diverged_at: dict[str, int] | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    @property
    def final_train_loss(self) -> float:
        """The LR-probe criterion: the mean training loss over the last epoch (+inf when diverged)."""
        if self.diverged or not self.history:
            return math.inf
        return float(self.history[-1]["train_loss"])

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON dict: non-finite floats become the strings ``"inf"``/``"-inf"``/``"nan"``."""
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        return cls(**json_restore(dict(data)))


# --- schedule ------------------------------------------------------------------------------------------------


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "constant") -> float:
    """The learning rate of global step ``step`` (0-based) out of ``total_steps`` (module docstring)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """``(total_steps, warmup_steps)`` of ``config`` with ``steps_per_epoch``."""
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return total, min(warmup, total)


# --- model and optimizer -------------------------------------------------------------------------------------


def load_data(config: TrainConfig) -> DatasetSplit:
    """The :class:`ahps_core.data.DatasetSplit` of ``config`` (its dataset and data root)."""
    from ahps_core.data import load_dataset

    return load_dataset(config.dataset, config.data_root)


def build_config_model(config: TrainConfig, data: DatasetSplit) -> nn.Module:
    """The model ``config`` describes (architecture, width, init), initialized from ``config.seed``."""
    from ahps_core.data.custom import check_data_family
    from ahps_core.models import build_model
    from ahps_core.specs import parse_arch

    check_data_family(data, config.family)
    graph = parse_arch(config.arch, config.family, kernel_size=config.kernel_size)
    if graph.family != config.family:
        raise ConfigError(f"architecture {config.arch!r} is a {graph.family} spec, but family is {config.family!r}")
    generator = torch.Generator().manual_seed(config.seed)
    return build_model(
        graph, num_classes=data.num_classes, in_shape=input_shape(data),
        width=config.width if config.family != "nb201" else None, C=config.C, N=config.N, init=config.init,
        degree=config.degree, kernel_size=config.kernel_size if config.family == "cnn" else None,
        generator=generator, cell=config.cell, indegree=config.indegree,
    )


def make_optimizer(model: nn.Module, config: TrainConfig) -> SGD:
    """One SGD parameter group holding every parameter (one global LR, like the reference code):
    :class:`ahps_core.optim.SGD`, ``torch.optim.SGD``'s update and state format without importing torch._dynamo."""
    return SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
               weight_decay=config.weight_decay)


def model_signature(model: nn.Module) -> dict[str, Any]:
    """Class and parameter/buffer shapes of ``model`` (part of the checkpoint hash of a caller-given model)."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"class": type(model).__name__, "state": stable_hash(shapes)}


def run_hash(config: TrainConfig, data: DatasetSplit, model: nn.Module | None = None) -> str:
    """The hash a run's checkpoint and result files carry: the configuration, the data (name and training size)
    and, for a caller-given ``model``, its :func:`model_signature`."""
    extra: dict[str, Any] = {"data": data.name, "train_images": len(data.train)}
    if data.metadata.get("split_md5"):  # an NB201 split file: another file is another run
        extra["split_md5"] = data.metadata["split_md5"]
    if model is not None:
        extra["model"] = model_signature(model)
    return config.hash(extra)


# --- the loop ------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    data: DatasetSplit | None = None,
    progress: bool | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one run of ``config`` (module docstring); returns a :class:`TrainResult`.

    ``model``: a prebuilt model to train instead of building ``config``'s (its init is the caller's; it is moved
    to the device). ``data``: a loaded :class:`~ahps_core.data.DatasetSplit` (default: loaded from
    ``config.dataset``/``config.data_root``). ``progress``: a tqdm bar on stderr (default: when stderr is a TTY
    or ``AHPS_PROGRESS=1``). ``callback(epoch_record)`` runs after each epoch's checkpoint is written; an
    exception it raises propagates (the checkpoint of that epoch is already on disk).
    """
    config = config.validated()
    device = resolve_device(config.device)
    if model is None and device.type == "cuda" and config.step_mode != "eager":
        from ahps_core.packed import train_pack
        from ahps_core.packed_gpu import resolve_step_mode

        if resolve_step_mode(config.step_mode, device) != "eager":  # CUDA graphs / torch.compile: the packed engine
            return train_pack([config], data=data, callbacks=[callback], progress=progress, stack="on")[0]
    if data is None:
        data = load_data(config)
    custom_model = model is not None
    if model is None:
        model = build_config_model(config, data)
    model = model.to(device)
    channels_last = resolve_channels_last(config.channels_last, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    amp_dtype = resolve_amp(config.amp, device)
    model.train()

    loader = make_train_loader(config, data, device, channels_last)
    eval_loader = make_eval_loader(data, device, channels_last) if config.eval_every else None
    steps_per_epoch = len(loader)
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise DataError(f"dataset {config.dataset}: no training batch (0 images?)")
    total_steps, warmup_steps = schedule_steps(config, steps_per_epoch)
    optimizer = make_optimizer(model, config)
    num_params = sum(p.numel() for p in model.parameters())

    config_hash = run_hash(config, data, model if custom_model else None)
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None

    history: list[dict[str, Any]] = []
    start_epoch = 0
    train_seconds = 0.0
    train_images = 0
    if ckpt_dir is not None:
        check_writable_dir(ckpt_dir, "checkpoint dir")  # before anything is computed
        finished = read_result(ckpt_dir, config_hash)
        if finished is not None:
            try:
                return TrainResult.from_dict(finished)
            except (TypeError, ValueError):
                raise DataError(f"{ckpt_dir / 'result.json'} is not a training result; delete it to train "
                                "again") from None
        state = read_checkpoint(ckpt_dir, config_hash, device)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            train_seconds = float(state["train_seconds"])
            train_images = int(state["train_images"])
    resumed_from = start_epoch

    if start_epoch == 0:
        torch.manual_seed(config.seed)  # only matters for stochastic layers; data order is the loader's
    watch = GpuDivergenceWatch(device) if device.type == "cuda" else None
    check_every = config.divergence_check_every
    bar = None
    if want_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=f"train {config.arch}",
                   unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    status = "completed"
    diverged_at: dict[str, int] | None = None
    started = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device, dtype=torch.float32)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            lr = config.lr
            step = steps = 0
            for step, (x, y) in enumerate(itertools.islice(loader.epoch(epoch), steps_per_epoch)):
                lr = lr_at(epoch * steps_per_epoch + step, base_lr=config.lr, total_steps=total_steps,
                           warmup_steps=warmup_steps, schedule=config.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(device, amp_dtype):
                    out = model(x)
                loss = F.cross_entropy(out.float(), y)
                if watch is None and not math.isfinite(loss.item()):  # CPU: checked every step, before the update
                    diverged_at = {"epoch": epoch + 1, "step": step}
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                b = y.shape[0]
                loss_sum += loss.detach() * b
                correct += (out.detach().argmax(1) == y).sum()
                seen += b
                steps += 1
                if bar is not None:
                    bar.update(1)
                if watch is not None and (step + 1) % check_every == 0 and watch.poll(loss_sum):
                    diverged_at = {"epoch": epoch + 1, "step": step}
                    break
            train_loss = float(loss_sum) / max(seen, 1)  # the one host read of the epoch
            if diverged_at is None and not math.isfinite(train_loss):
                diverged_at = {"epoch": epoch + 1, "step": step}
            if diverged_at is not None:
                status = "diverged"
                break
            train_acc = float(correct) / max(seen, 1)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            train_images += seen
            record: dict[str, Any] = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                "eval_loss": None, "eval_acc": None, "lr": lr, "seconds": epoch_seconds, "steps": steps,
                "images": seen,
            }
            last = epoch + 1 == config.epochs
            if eval_loader is not None and ((epoch + 1) % config.eval_every == 0 or last):
                record["eval_loss"], record["eval_acc"] = evaluate(model, eval_loader, amp_dtype)
            history.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{train_loss:.4f}", acc=f"{train_acc:.3f}", refresh=False)
            if ckpt_dir is not None:
                write_checkpoint(ckpt_dir, {
                    "config_hash": config_hash, "config": config.to_dict(), "epoch": epoch + 1,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": get_rng_state(),
                    "history": history, "train_seconds": train_seconds, "train_images": train_images,
                })
            if callback is not None:
                callback(dict(record))
    finally:
        if bar is not None:
            bar.close()

    final = dict(history[-1]) if history else {}
    if status == "diverged":
        final = {"train_loss": math.inf, "train_acc": None, "eval_loss": None, "eval_acc": None,
                 "epoch": diverged_at["epoch"] if diverged_at else None}
    result = TrainResult(
        status=status, history=history, final=final,
        images_per_s=train_images / train_seconds if train_seconds > 0 else 0.0,
        num_params=num_params, config=config.to_dict(), config_hash=config_hash,
        seconds=time.perf_counter() - started, device=str(device),
        amp="bf16" if amp_dtype is not None else "off", channels_last=channels_last,
        resumed_from=resumed_from, diverged_at=diverged_at,
    )
    if ckpt_dir is not None:
        write_result(ckpt_dir, config_hash, result.to_dict())
    return result

"""The training engine: one architecture x one recipe x one seed.

``train(TrainConfig(...))`` trains with SGD (momentum, Nesterov, weight decay; one global learning rate for all
parameters, as the reference experiments) under a constant or cosine schedule with optional linear warmup, and
returns a :class:`TrainResult` with the per-epoch history (train loss/accuracy, eval loss/accuracy, LR, seconds).

Recipes (:data:`RECIPES`): ``nb201`` is NAS-Bench-201's (batch 256, LR 0.1, momentum 0.9, Nesterov, weight
decay 5e-4, cosine to 0, 200 epochs, the dataset's crop+flip augmentation); ``probe`` is the LR probe of the
base-LR search (plain SGD, constant LR, no augmentation, no evaluation, the paper's one epoch).

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

Checkpoints: with ``checkpoint_dir``, ``checkpoint.pt`` is written atomically (``*.tmp`` then ``os.replace``)
after every epoch with the model, optimizer and RNG states, the history and a hash of the configuration. A run
started on a directory holding a checkpoint of the same configuration resumes from it and ends with the same
metrics and weights as an uninterrupted run (bit for bit on CPU: the data order of epoch ``e`` depends only on
``(seed, e)``, see :class:`ahps_core.data.DeviceLoader`). A finished run writes ``result.json``; starting it
again returns that result without training. A checkpoint of a *different* configuration is an error.

Speed (CUDA): bf16 autocast, channels_last for convolutional models, device-resident data, metrics accumulated
on the device and read once per epoch. CPU: channels_last for convolutional models (about 3x NCHW); bf16
autocast only when asked (``amp="bf16"``), as it changes numerics.

This module never imports mlflow: ``callback(epoch_record)`` is the hook the tracking adapter uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.errors import ConfigError, DataError
from ahps_core.scaling import DEGREE_RULES

SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
INITS = ("arch-aware", "default")
DEGREES = DEGREE_RULES
FAMILIES = ("mlp", "cnn", "nb201")

CHECKPOINT_NAME = "checkpoint.pt"
RESULT_NAME = "result.json"
EVAL_BATCH = 1024

#: Fields that do not change what a run computes (excluded from the configuration hash).
_HASH_EXCLUDED = frozenset({"checkpoint_dir", "data_root", "divergence_check_every"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (see the module docstring for the semantics).

    ``arch`` is any spec :func:`ahps_core.graph.parse_arch` accepts for ``family``. ``width`` applies to
    mlp/cnn (None: the model's default), ``C``/``N`` to nb201. ``augment`` None: the dataset's augmentation
    (crop+flip for CIFAR/ImageNet16, none for digits). ``max_steps_per_epoch`` truncates every epoch (the
    paper's truncated LR probe). ``eval_every`` 0 never evaluates; otherwise every that many epochs and at the
    last epoch.
    """

    family: str = "mlp"
    arch: str = "1"
    dataset: str = "digits"
    data_root: str | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    init: str = "arch-aware"
    degree: str = "source"
    seed: int = 0
    width: int | None = None
    C: int = 16
    N: int = 5
    kernel_size: int | None = None
    augment: bool | None = None
    drop_last: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    max_steps_per_epoch: int | None = None
    eval_every: int = 1
    checkpoint_dir: str | None = None
    divergence_check_every: int = 50

    def validated(self) -> TrainConfig:
        """Return ``self`` after checking every field; raises :class:`ConfigError` naming the bad value."""
        _choice("family", self.family, FAMILIES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("channels_last", self.channels_last, CHANNELS_LAST_MODES)
        _choice("init", self.init, INITS)
        _choice("degree", self.degree, DEGREES)
        check_lr(self.lr)
        _int("epochs", self.epochs, 1)
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)
        _int("C", self.C, 1)
        _int("N", self.N, 1)
        _int("eval_every", self.eval_every, 0)
        _int("divergence_check_every", self.divergence_check_every, 1)
        if self.width is not None:
            _int("width", self.width, 1)
        if self.kernel_size is not None:
            _int("kernel_size", self.kernel_size, 1)
        if self.max_steps_per_epoch is not None:
            _int("max_steps_per_epoch", self.max_steps_per_epoch, 1)
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} {value!r} must be a finite number >= 0")
        if self.momentum >= 1:
            raise ConfigError(f"momentum {self.momentum!r} must be < 1")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov needs momentum > 0 (got momentum 0)")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ConfigError(f"arch {self.arch!r} must be a non-empty architecture spec")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}; accepted: {', '.join(sorted(names))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def hash(self, extra: Mapping[str, Any] | None = None) -> str:
        """A short hash of the fields that change what the run computes (plus ``extra``)."""
        payload = {k: v for k, v in self.to_dict().items() if k not in _HASH_EXCLUDED}
        if extra:
            payload["_extra"] = dict(extra)
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: Preset overrides of :class:`TrainConfig`; apply with :func:`recipe_config`.
RECIPES: dict[str, dict[str, Any]] = {
    # NAS-Bench-201's recipe (Dong & Yang 2020; papers.md 1.7): the dataset's crop+flip augmentation.
    "nb201": dict(
        epochs=200, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", warmup_epochs=0.0, augment=None, eval_every=1,
    ),
    # The LR probe (papers.md 1.6 / A8): plain SGD at a constant LR, the paper's one epoch, the reference
    # code's batch 128, no augmentation, no evaluation. lr_search.default_budget adapts epochs/batch per dataset.
    "probe": dict(
        epochs=1, batch_size=128, momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant",
        warmup_epochs=0.0, augment=False, eval_every=0,
    ),
}


def recipe_config(recipe: str, **overrides: Any) -> TrainConfig:
    """``TrainConfig`` with ``RECIPES[recipe]`` applied, then ``overrides`` (``None`` overrides are ignored)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}: accepted are {', '.join(RECIPES)}")
    values = dict(RECIPES[recipe])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


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
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        return cls(**_json_restore(dict(data)))


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


# --- device, precision, layout -------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    _choice("device", device, DEVICES)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available; accepted here: auto, cpu")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old or unusual builds
        return False


def cpu_has_amx() -> bool:
    """Whether this CPU exposes AMX tiles (where bf16 autocast is a large win, performance.md 6: 1.8x).
    Without AMX (AVX512-BF16 only) bf16 convs measured *slower* than fp32 here (52 vs 75 img/s)."""
    try:
        if torch._C._cpu._init_amx():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (``torch.bfloat16``) or None for fp32. ``auto``: bf16 on CUDA, fp32 on CPU."""
    _choice("amp", amp, AMP_MODES)
    if amp == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if amp == "auto":
        return None
    if not cpu_supports_bf16():
        warnings.warn("bf16 autocast requested but this CPU has no native bf16: training in fp32", stacklevel=3)
        return None
    return torch.bfloat16


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_channels_last(mode: str, model: nn.Module) -> bool:
    """``auto``: channels_last for convolutional models (on CPU and GPU), NCHW otherwise."""
    _choice("channels_last", mode, CHANNELS_LAST_MODES)
    if mode == "auto":
        return is_convolutional(model)
    return mode == "on"


# --- model and data ------------------------------------------------------------------------------------------


def load_data(config: TrainConfig):
    """The :class:`ahps_core.data.DatasetSplit` of ``config`` (its dataset and data root)."""
    from ahps_core.data import load_dataset

    return load_dataset(config.dataset, config.data_root)


def input_shape(data) -> tuple[int, int, int]:
    return tuple(int(d) for d in data.train.images.shape[1:])  # type: ignore[return-value]


def build_config_model(config: TrainConfig, data) -> nn.Module:
    """The model ``config`` describes (architecture, width, init), initialized from ``config.seed``."""
    from ahps_core.graph import parse_arch
    from ahps_core.models import build_model

    graph = parse_arch(config.arch, config.family, kernel_size=config.kernel_size)
    if graph.family != config.family:
        raise ConfigError(f"architecture {config.arch!r} is a {graph.family} spec, but family is {config.family!r}")
    generator = torch.Generator().manual_seed(config.seed)
    return build_model(
        graph, num_classes=data.num_classes, in_shape=input_shape(data),
        width=config.width if config.family != "nb201" else None, C=config.C, N=config.N, init=config.init,
        degree=config.degree, kernel_size=config.kernel_size if config.family == "cnn" else None,
        generator=generator,
    )


def make_train_loader(config: TrainConfig, data, device: torch.device, channels_last: bool):
    from ahps_core.data import DeviceLoader

    augment = data.augment if config.augment is None else (config.augment and data.augment)
    part = data.train
    if config.drop_last and len(part) < config.batch_size:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(part)} training images with drop_last")
    return DeviceLoader(
        part.images, part.labels, min(config.batch_size, len(part)), device, mean=data.mean, std=data.std,
        augment=augment, pad=data.pad, flip=data.flip, shuffle=True, drop_last=config.drop_last, seed=config.seed,
        channels_last=channels_last,
    )


def make_eval_loader(data, device: torch.device, channels_last: bool):
    from ahps_core.data import DeviceLoader

    part = data.eval
    return DeviceLoader(
        part.images, part.labels, min(EVAL_BATCH, max(len(part), 1)), device, mean=data.mean, std=data.std,
        augment=False, shuffle=False, channels_last=channels_last,
    )


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """One SGD parameter group holding every parameter (one global LR, like the reference code)."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def model_signature(model: nn.Module) -> dict[str, Any]:
    """Class and parameter/buffer shapes of ``model`` (part of the checkpoint hash of a caller-given model)."""
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    text = json.dumps(shapes, sort_keys=True)
    return {"class": type(model).__name__, "state": hashlib.sha256(text.encode()).hexdigest()[:16]}


@torch.no_grad()
def evaluate(model: nn.Module, loader, amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` over ``loader``; one host read at the end."""
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y in loader.epoch(0):
        with _autocast(device, amp_dtype):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += y.shape[0]
    model.train(was_training)
    if n == 0:
        return math.nan, math.nan
    return float(loss_sum) / n, float(correct) / n


# --- the loop ------------------------------------------------------------------------------------------------


class _GpuDivergenceWatch:
    """Non-blocking finiteness check of a device scalar on CUDA (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, pin_memory=True)
        self.event: torch.cuda.Event | None = None
        self.device = device

    def poll(self, value: torch.Tensor) -> bool:
        """True when a previously issued check has completed and found a non-finite value; then issue anew."""
        bad = False
        if self.event is not None and self.event.query():
            bad = bool(self.flag)
            self.event = None
        if self.event is None and not bad:
            self.flag.copy_(~torch.isfinite(value), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        return bad


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    if os.environ.get("AHPS_PROGRESS", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def train(
    config: TrainConfig,
    *,
    model: nn.Module | None = None,
    data=None,
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
    if data is None:
        data = load_data(config)
    custom_model = model is not None
    if model is None:
        model = build_config_model(config, data)
    model = model.to(device)
    channels_last = resolve_channels_last(config.channels_last, model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
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

    extra = {"data": data.name, "train_images": len(data.train)}
    if custom_model:
        extra["model"] = model_signature(model)
    config_hash = config.hash(extra)
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None

    history: list[dict[str, Any]] = []
    start_epoch = 0
    train_seconds = 0.0
    train_images = 0
    if ckpt_dir is not None:
        finished = _read_result(ckpt_dir, config_hash)
        if finished is not None:
            return finished
        state = _read_checkpoint(ckpt_dir, config_hash, device)
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            train_seconds = float(state["train_seconds"])
            train_images = int(state["train_images"])
    resumed_from = start_epoch

    if start_epoch == 0:
        torch.manual_seed(config.seed)  # only matters for stochastic layers; data order is the loader's
    watch = _GpuDivergenceWatch(device) if device.type == "cuda" else None
    check_every = config.divergence_check_every
    bar = None
    if _want_progress(progress):
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
                with _autocast(device, amp_dtype):
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
                _write_checkpoint(ckpt_dir, {
                    "config_hash": config_hash, "config": config.to_dict(), "epoch": epoch + 1,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": _get_rng_state(),
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
        _write_json_atomic(ckpt_dir / RESULT_NAME, {"config_hash": config_hash, "result": result.to_dict()})
    return result


# --- checkpoints ---------------------------------------------------------------------------------------------


def _write_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_checkpoint(directory: Path, config_hash: str, device: torch.device) -> dict[str, Any] | None:
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a torn or foreign file
        raise DataError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if state.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint dir {directory} holds a run of a different configuration (hash "
            f"{state.get('config_hash')}, this run {config_hash}); use another checkpoint dir or delete it"
        )
    return state


def _read_result(directory: Path, config_hash: str) -> TrainResult | None:
    path = directory / RESULT_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if payload.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint dir {directory} holds a finished run of a different configuration (hash "
            f"{payload.get('config_hash')}, this run {config_hash}); use another checkpoint dir or delete it"
        )
    return TrainResult.from_dict(payload["result"])


def _write_json_atomic(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(tmp, path)


def _get_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- small helpers -------------------------------------------------------------------------------------------


def check_lr(lr: object, what: str = "learning rate") -> float:
    if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:  # type: ignore[arg-type]
        raise ConfigError(f"{what} {lr!r} must be a finite number > 0")
    return float(lr)  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} {value!r} must be an integer >= {minimum}")


def _choice(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}: accepted are {', '.join(accepted)}")


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``"inf"``/``"-inf"``/``"nan"`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json_restore(value: Any) -> Any:
    """Inverse of :func:`_json_safe` for the metric fields."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: _json_restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_restore(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")

"""Where and how a training runs: device, precision, memory layout, data loaders, evaluation, progress bars.

* :func:`resolve_device`: ``auto`` is CUDA when available, else CPU.
* :func:`resolve_amp`: bf16 autocast on CUDA by default; on CPU only when asked (``amp="bf16"``), as it changes
  numerics, and only where oneDNN has native bf16 kernels (:func:`cpu_supports_bf16`). On CPUs with AMX tiles
  (:func:`cpu_has_amx`) bf16 is a large win (``ahps bench train`` on a 2-core AMX Xeon: 1.85x fp32 for the
  largest NB201 cell, 1.37x for a mean one); with AVX512-BF16 alone bf16 convolutions measured slower than fp32.
* :func:`resolve_channels_last`: channels_last for convolutional models (``ahps bench train`` on that CPU, fp32:
  1.31x NCHW for the largest NB201 cell, 2.06x for a mean one), NCHW otherwise.
* :func:`make_train_loader` / :func:`make_eval_loader`: device-resident :class:`~ahps_core.data.DeviceLoader`\\ s
  (the data order of epoch ``e`` depends only on ``(seed, e)``).
* :func:`evaluate`: mean cross-entropy and accuracy, metrics accumulated on the device and read once.
* :class:`GpuDivergenceWatch`: a finiteness check of a CUDA scalar that never blocks the step (see
  :mod:`ahps_core.train`).
* :func:`want_progress`: whether to draw a progress bar (stderr is a terminal, or ``AHPS_PROGRESS=1``).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.checks import check_choice
from ahps_core.errors import ConfigError
from ahps_core.train_config import AMP_MODES, CHANNELS_LAST_MODES, DEVICES

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit, DeviceLoader
    from ahps_core.train_config import TrainConfig

EVAL_BATCH = 1024


# --- device, precision, layout -------------------------------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    check_choice("device", device, DEVICES)
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
    """Whether this CPU exposes AMX tiles (where bf16 autocast is a large win, module docstring)."""
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
    check_choice("amp", amp, AMP_MODES)
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


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``dtype`` on ``device``'s type; a disabled context for ``dtype`` None (fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def is_convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_channels_last(mode: str, model: nn.Module) -> bool:
    """``auto``: channels_last for convolutional models (on CPU and GPU), NCHW otherwise."""
    check_choice("channels_last", mode, CHANNELS_LAST_MODES)
    if mode == "auto":
        return is_convolutional(model)
    return mode == "on"


def want_progress(progress: bool | None) -> bool:
    """``progress`` when given; else True when ``AHPS_PROGRESS`` is 1/true/yes/on or stderr is a terminal."""
    if progress is not None:
        return progress
    if os.environ.get("AHPS_PROGRESS", "").lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# --- data ----------------------------------------------------------------------------------------------------


def input_shape(data: DatasetSplit) -> tuple[int, ...]:
    """One training image's shape, ``(channels, height, width)``."""
    return tuple(int(d) for d in data.train.images.shape[1:])


def make_train_loader(config: TrainConfig, data: DatasetSplit, device: torch.device,
                      channels_last: bool) -> DeviceLoader:
    """The shuffled training loader of ``config`` (its batch size, seed, augmentation and drop_last)."""
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


def make_eval_loader(data: DatasetSplit, device: torch.device, channels_last: bool) -> DeviceLoader:
    """The evaluation loader of ``data``'s eval part: stored order, no augmentation, batches of ``EVAL_BATCH``."""
    from ahps_core.data import DeviceLoader

    part = data.eval
    return DeviceLoader(
        part.images, part.labels, min(EVAL_BATCH, max(len(part), 1)), device, mean=data.mean, std=data.std,
        augment=False, shuffle=False, channels_last=channels_last,
    )


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` over ``loader``; one host read at the end."""
    was_training = model.training
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y in loader.epoch(0):
        with autocast(device, amp_dtype):
            out = model(x)
        out = out.float()
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
        n += y.shape[0]
    model.train(was_training)
    if n == 0:
        return math.nan, math.nan
    return float(loss_sum) / n, float(correct) / n


# --- divergence on CUDA --------------------------------------------------------------------------------------


class GpuDivergenceWatch:
    """Non-blocking finiteness check of a device scalar on CUDA: the flag is copied to pinned host memory with
    ``non_blocking=True`` behind a CUDA event and read at the next poll only if the event has completed."""

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


__all__ = [
    "AMP_MODES", "CHANNELS_LAST_MODES", "DEVICES", "EVAL_BATCH", "GpuDivergenceWatch", "autocast",
    "cpu_has_amx", "cpu_supports_bf16", "evaluate", "input_shape", "is_convolutional", "make_eval_loader",
    "make_train_loader", "resolve_amp", "resolve_channels_last", "resolve_device", "want_progress",
]

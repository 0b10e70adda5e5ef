"""``ahps bench train``: images/s of our training loop against a naive reference loop, in the same process.

Both loops train the same NAS-Bench-201 network (C=16, N=5, 10 classes; same initial weights) with the NB201
recipe's optimizer (SGD, LR 0.1, momentum 0.9, Nesterov, weight decay 5e-4) on the same synthetic CIFAR-sized
data (uint8 32x32x3, NB201's CIFAR-10 normalization, pad-4 crop + flip augmentation):

* **naive** (a textbook loop, without torchvision): fp32, NCHW, a ``torch.utils.data.DataLoader`` over a
  ``Dataset`` whose ``__getitem__`` pads, crops, flips and normalizes one image with torch ops on the CPU
  (``num_workers=0`` on CPU), and ``loss.item()`` after every step;
* **ours**: :func:`ahps_core.train.train` itself: the device-resident :class:`~ahps_core.data.DeviceLoader`
  (one gather per batch for crop+flip), channels_last, metrics accumulated on the device and read once per epoch,
  measured twice: in **fp32** and with **bf16** autocast (where the device has native bf16: CUDA, or a CPU with
  AVX512-BF16/AMX). ``train()`` itself uses bf16 by default only on CUDA (``amp="auto"``); on CPU it trains in
  fp32 unless asked (``amp="bf16"``), because bf16 changes the numerics. The table says which precision
  ``train()`` uses here, and whether this CPU has AMX (:func:`ahps_core.runtime.cpu_has_amx`): machines differ,
  and on a CPU with AVX512-BF16 but no AMX bf16 convolutions measured slower than fp32.

For each architecture (default: the largest cell, every edge ``nor_conv_3x3``, and a mean cell with the space's
expected op mix), each loop runs ``warmup`` untimed steps then ``repeats`` timed windows of ``steps`` steps,
naive and ours (fp32, bf16) alternating so a load change on a shared machine hits all of them; the best window of
each is reported, with the ratios ours / naive. ``ours_images_per_s``/``ratio`` are those of the precision
``train()`` uses on this machine. Our loop runs as epochs of ``steps`` steps (``max_steps_per_epoch``), its
per-epoch timing being the window.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F

from ahps_core.errors import ConfigError

#: The largest NB201 cell (every edge a 3x3 conv) and a mean one: the space's expected mix per cell is 6/5 of
#: each op; this cell has one conv3x3, one conv1x1, one avg-pool, two skips and one none.
CELLS = {
    "largest": "3_33_333",
    "mean": "3_12_041",
}
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)


def synthetic_cifar(num_images: int, *, seed: int = 0, size: int = 32):
    """A :class:`~ahps_core.data.DatasetSplit` of random uint8 CIFAR-sized images (NB201's CIFAR-10 setup)."""
    from ahps_core.data import DatasetSplit, Part

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (num_images,), dtype=torch.int64, generator=g)
    part = Part(images, labels)
    return DatasetSplit("synthetic-cifar", {"train": part, "test": part}, "test", 10, size, 3, CIFAR10_MEAN,
                        CIFAR10_STD, 4, True, {"source": "synthetic"})


class NaiveAugmentDataset(torch.utils.data.Dataset):
    """Per-sample CPU transforms, written by hand (no torchvision): pad 4, random 32x32 crop, random horizontal
    flip, to float in [0, 1], normalize; one image at a time, like torchvision's transform pipeline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, pad: int = 4) -> None:
        self.images, self.labels, self.pad = images, labels, pad
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int):
        img = self.images[i]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        p = self.pad
        padded = F.pad(img, (p, p, p, p))
        h, w = img.shape[-2:]
        top = int(torch.randint(0, 2 * p + 1, ()))
        left = int(torch.randint(0, 2 * p + 1, ()))
        crop = padded[:, top:top + h, left:left + w]
        x = crop.to(torch.float32).div(255)
        return (x - self.mean) / self.std, self.labels[i]


def _nb201_model(spec: str, seed: int, C: int = 16, N: int = 5):
    from ahps_core.models import build_model
    from ahps_core.specs import parse_arch

    return build_model(parse_arch(spec, "nb201"), num_classes=10, in_shape=(3, 32, 32), C=C, N=N,
                       generator=torch.Generator().manual_seed(seed))


class _NaiveLoop:
    """The reference loop, resumable across timed windows (the iterator restarts when exhausted)."""

    def __init__(self, model, data, batch_size: int, device: torch.device) -> None:
        self.model = model.to(device).train()
        self.device = device
        ds = NaiveAugmentDataset(data.train.images, data.train.labels, data.mean, data.std, data.pad)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0,
                                                  drop_last=True)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        self.it = iter(self.loader)
        self.losses: list[float] = []

    def run(self, steps: int) -> tuple[float, int]:
        images = 0
        t0 = time.perf_counter()
        for _ in range(steps):
            try:
                x, y = next(self.it)
            except StopIteration:
                self.it = iter(self.loader)
                x, y = next(self.it)
            x, y = x.to(self.device), y.to(self.device)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.losses.append(loss.item())  # the per-step host sync of a naive loop
            images += y.shape[0]
        return time.perf_counter() - t0, images


def bench_arch(
    spec: str, *, batch_size: int, steps: int, warmup: int, repeats: int, device: str, precisions: tuple[str, ...],
    channels_last: str, seed: int = 0, C: int = 16, N: int = 5,
) -> dict[str, Any]:
    """Best-of-``repeats`` images/s of the naive loop and of ours in each of ``precisions`` (``fp32``, ``bf16``)
    on NB201 cell ``spec`` in the macro network ``C``/``N`` (module docstring)."""
    from ahps_core.runtime import resolve_amp, resolve_channels_last, resolve_device
    from ahps_core.train import TrainConfig, train

    dev = resolve_device(device)
    num_images = batch_size * max(steps, warmup, 1) + batch_size
    data = synthetic_cifar(num_images, seed=seed)
    model = _nb201_model(spec, seed, C, N)
    naive = _NaiveLoop(copy.deepcopy(model), data, batch_size, dev)
    cl = resolve_channels_last(channels_last, model)
    ours_models = {p: copy.deepcopy(model) for p in precisions}

    def ours_window(precision: str, n_steps: int) -> float:
        config = TrainConfig(
            family="nb201", arch=spec, dataset="synthetic-cifar", C=C, N=N, epochs=1, batch_size=batch_size, lr=0.1,
            momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="constant", augment=True, drop_last=True,
            device=str(dev.type), amp="bf16" if precision == "bf16" else "off", channels_last=channels_last,
            max_steps_per_epoch=n_steps, eval_every=0, seed=seed,
        )
        rec = train(config, model=ours_models[precision], data=data, progress=False).history[-1]
        return rec["images"] / rec["seconds"]

    if warmup:
        naive.run(warmup)
        for p in precisions:
            ours_window(p, warmup)
    naive_best = 0.0
    ours_best = dict.fromkeys(precisions, 0.0)
    for _ in range(repeats):
        t, n = naive.run(steps)
        naive_best = max(naive_best, n / t)
        for p in precisions:
            ours_best[p] = max(ours_best[p], ours_window(p, steps))
    used = "bf16" if resolve_amp("auto", dev) is not None else "fp32"
    row: dict[str, Any] = {
        "arch": spec,
        "params": sum(p.numel() for p in model.parameters()),
        "naive_images_per_s": naive_best,
        "ours": {"channels_last": cl, "data": "DeviceLoader", "train_uses": used},
        "naive": {"amp": "off", "channels_last": False, "data": "DataLoader(num_workers=0), per-sample transforms",
                  "sync": "loss.item() every step"},
    }
    for p in ("fp32", "bf16"):
        value = ours_best.get(p)
        row[f"ours_{p}_images_per_s"] = value
        row[f"ratio_{p}"] = value / naive_best if value and naive_best > 0 else None
    chosen = ours_best.get(used) or next(iter(ours_best.values()))
    row["ours_images_per_s"] = chosen
    row["ratio"] = chosen / naive_best if naive_best > 0 else math.nan
    return row


def run_bench(
    archs: list[str], *, batch_size: int = 64, steps: int = 5, warmup: int = 2, repeats: int = 2,
    device: str = "auto", precision: str = "both", channels_last: str = "on", seed: int = 0,
) -> dict[str, Any]:
    """The whole benchmark: one row per architecture (``archs``: names of :data:`CELLS` or NB201 specs);
    ``precision``: ``both`` (bf16 only where the device has native bf16), ``fp32`` or ``bf16``."""
    from ahps_core.runtime import cpu_has_amx, cpu_supports_bf16, resolve_amp, resolve_device

    dev = resolve_device(device)
    bf16_native = dev.type == "cuda" or cpu_supports_bf16()
    if precision == "both":
        precisions: tuple[str, ...] = ("fp32", "bf16") if bf16_native else ("fp32",)
    else:
        precisions = (precision,)
    rows = []
    for name in archs:
        spec = CELLS.get(name, name)
        row = bench_arch(spec, batch_size=batch_size, steps=steps, warmup=warmup, repeats=repeats, device=device,
                         precisions=precisions, channels_last=channels_last, seed=seed)
        row["name"] = name
        rows.append(row)
    return {
        "benchmark": "train-loop",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_bf16": cpu_supports_bf16(),
        "cpu_amx": cpu_has_amx(),
        "train_uses": "bf16" if resolve_amp("auto", dev) is not None else "fp32",
        "precisions": list(precisions),
        "batch_size": batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
        "torch": torch.__version__,
        "rows": rows,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@click.command("train")
@click.option("--arch", "archs", multiple=True, default=("largest", "mean"), show_default=True,
              help="'largest' (all conv3x3), 'mean', or an NB201 spec; repeatable.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=5, show_default=True, help="Timed steps per window.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed steps first.")
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True, help="Best of N windows.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["both", "fp32", "bf16"]), default="both", show_default=True,
              help="Our loop's precision: both (bf16 where the device has native bf16), fp32 or bf16.")
@click.option("--channels-last", type=click.Choice(["on", "off", "auto"]), default="on", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch intra-op threads for both loops (default: torch's).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON result here too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def command(archs, batch_size, steps, warmup, repeats, device, precision, channels_last, threads, out_path,
            as_json) -> None:
    """Our training loop vs a naive reference loop (images/s, same process, same model and data)."""
    if threads is not None:
        torch.set_num_threads(threads)
    for a in archs:
        if a not in CELLS and not any(ch in a for ch in "_|"):
            raise ConfigError(f"--arch {a!r}: accepted are {', '.join(CELLS)} or an NB201 spec like 3_33_333")
    result = run_bench(list(archs), batch_size=batch_size, steps=steps, warmup=warmup, repeats=repeats,
                       device=device, precision=precision, channels_last=channels_last)
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=2))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"device {result['device']} ({result['device_name']}), {result['threads']} threads, "
               f"batch {batch_size}, best of {repeats} x {steps} steps")
    amx = "yes" if result["cpu_amx"] else "no"
    click.echo(f"AMX: {amx}; native bf16: {'yes' if result['cpu_bf16'] or result['device'] != 'cpu' else 'no'}; "
               f"train() uses {result['train_uses']} on this machine (amp=auto)")
    fmt = "{:<10} {:<10} {:>12} {:>12} {:>12} {:>8} {:>8}  {}"
    click.echo(fmt.format("arch", "spec", "naive img/s", "fp32 img/s", "bf16 img/s", "fp32 x", "bf16 x", "layout"))
    for r in result["rows"]:
        def num(v, spec=".1f"):
            return "-" if v is None else format(v, spec)
        click.echo(fmt.format(r["name"], r["arch"], num(r["naive_images_per_s"]), num(r["ours_fp32_images_per_s"]),
                              num(r["ours_bf16_images_per_s"]), num(r["ratio_fp32"], ".2f"),
                              num(r["ratio_bf16"], ".2f"),
                              "channels_last" if r["ours"]["channels_last"] else "NCHW"))
    click.echo("ratio: ours / naive (same process, same model and data); train() uses "
               f"{result['train_uses']}")
    if out_path:
        click.echo(f"wrote {out_path}")

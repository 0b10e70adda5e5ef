"""``ahps bench gpu`` (``make gpu-check``): ONE script that checks and measures the GPU paths and writes ONE JSON
report; under 8 minutes on one GPU. ``--smoke`` runs the same script on CPU with tiny sizes (the test suite runs
it, so the script never rots); the GPU-only parts are then recorded as skipped, with the reason.

Measured (synthetic CIFAR-sized data, NB201's recipe: SGD 0.9 Nesterov, wd 5e-4, batch 256; the largest cell
``3_33_333`` and a mean cell ``3_12_041``, C=16, N=5; images/s of training, the best of the timed windows):

* ``naive``: a textbook loop (``ahps bench train``'s: DataLoader with per-sample CPU transforms, fp32, NCHW,
  ``loss.item()`` every step);
* ``train``: :func:`ahps_core.train.train` in fp32 and bf16, channels_last on and off;
* ``step_modes``: one run through the packed engine eagerly, with CUDA graphs and with ``torch.compile`` (the
  mean cell only by default: compiling takes minutes);
* ``stacked``: K = 1, 2, 4, 8 seeds of one cell stacked in one network (one process);
* ``concurrent``: K = 1, 2, 4, 8 worker processes, each training its own model, sharing the GPU (with the MPS
  daemon running, their kernels overlap; without it they are time-sliced: the report says which);
* ``projection``: architectures per GPU-hour under the NB201 protocol (200 epochs of 50,000 training images,
  10,000 evaluation images per epoch counted at a third of a training image's cost) for each cell, from the
  best single-model, stacked and concurrent throughputs.

Checked (``checks``, each ``{"ok": bool, ...}``): no host synchronisation inside a training step
(``torch.cuda.set_sync_debug_mode("error")`` around the packed engine's steps, and ``train()``'s sync count
independent of the number of steps), divergence detection without host reads (a run at LR 1e12 ends
``diverged``; its pack-mates are unaffected), the device loader (reproducible per ``(seed, epoch)``, resumable by
step, every augmented image a padded crop or flipped crop of its source), and CUDA graphs against eager (losses
agree within 1e-2 relative over two short epochs; bf16 autocast).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import click
import torch

from ahps_core.bench.train_bench import CELLS, bench_arch, synthetic_cifar

#: The NB201 protocol of the projection: epochs, training images, evaluation images per epoch, batch.
NB201_PROTOCOL = {"epochs": 200, "train_images": 50_000, "eval_images": 10_000, "batch_size": 256}
SIZES: dict[str, dict[str, Any]] = {
    "full": {"C": 16, "N": 5, "batch": 256, "steps": 20, "warmup": 5, "repeats": 2, "ks": (1, 2, 4, 8),
             "concurrent_cells": ("largest", "mean")},
    "smoke": {"C": 4, "N": 1, "batch": 8, "steps": 2, "warmup": 1, "repeats": 1, "ks": (1, 2),
              "concurrent_cells": ("mean",)},
}


def _config(spec: str, size: dict[str, Any], *, seed: int = 0, lr: float = 0.1, **kw: Any):
    from ahps_core.train import TrainConfig

    base = dict(family="nb201", arch=spec, dataset="synthetic-cifar", C=size["C"], N=size["N"], epochs=2,
                batch_size=size["batch"], lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
                schedule="constant", augment=True, drop_last=True, max_steps_per_epoch=size["steps"], eval_every=0,
                seed=seed, device="auto")
    base.update(kw)
    return TrainConfig(**base)


def _data(size: dict[str, Any]):
    return synthetic_cifar(size["batch"] * (size["steps"] + 1), seed=0)


def _pack_ips(results) -> float:
    """Aggregate training images/s of the last (timed) epoch of every run of a pack."""
    last = [r.history[-1] for r in results]
    return sum(h["images"] for h in last) / max(h["seconds"] for h in last)


def step_modes(spec: str, size: dict[str, Any], data, device: torch.device, *, compile_: bool) -> dict[str, Any]:
    """One run through the packed engine per step mode (epoch 1 warms up: autotuning, capture, compilation)."""
    from ahps_core.packed import train_pack

    out: dict[str, Any] = {}
    for mode in ("eager", "graphs", "compile"):
        if device.type != "cuda" and mode != "eager":
            out[mode] = {"skipped": "CPU: CUDA graphs and torch.compile apply on CUDA only"}
            continue
        if mode == "compile" and not compile_:
            out[mode] = {"skipped": "not for this cell (compilation takes minutes; --compile-all to include it)"}
            continue
        t0 = time.perf_counter()
        try:
            res = train_pack([_config(spec, size, step_mode=mode)], data=data, stack="on")
        except Exception as exc:  # a failing mode is a finding of the check, not the end of it
            out[mode] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        out[mode] = {"images_per_s": _pack_ips(res), "wall_s": time.perf_counter() - t0}
    return out


def stacked(spec: str, size: dict[str, Any], data, mode: str) -> dict[str, Any]:
    """K seeds of one cell stacked in one network, K in ``size["ks"]``."""
    from ahps_core.packed import train_pack

    out = {}
    for k in size["ks"]:
        configs = [_config(spec, size, seed=s, lr=0.1 * (1 + s / 10), step_mode=mode) for s in range(k)]
        out[str(k)] = {"images_per_s": _pack_ips(train_pack(configs, data=data, stack="on"))}
    return out


def _worker(spec: str, size: dict[str, Any], commands, reports) -> None:
    """One concurrent model (a spawned process, started once per cell): build and warm up, then for every
    command (a start time) wait for it, train one timed epoch and report its window; None ends it."""
    from ahps_core.train import build_config_model, train

    data = _data(size)
    config = _config(spec, size, epochs=1)
    model = build_config_model(config, data)
    train(config, model=model, data=data, progress=False)  # warm-up: CUDA context, cuDNN autotuning
    reports.put({"ready": True})
    while True:
        start = commands.get()
        if start is None:
            return
        time.sleep(max(0.0, start - time.time()))
        t0 = time.time()
        res = train(config, model=model, data=data, progress=False)
        reports.put({"start": t0, "end": time.time(), "images": res.history[-1]["images"]})


def concurrent(spec: str, size: dict[str, Any]) -> dict[str, Any]:
    """K worker processes sharing the device, K in ``size["ks"]``: aggregate images/s over their common window
    (the workers start once, and the first K of them train together in each round)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out: dict[str, Any] = {"mps": _mps_active()}
    n = max(size["ks"])
    reports = ctx.Queue()
    commands = [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=_worker, args=(spec, size, commands[i], reports), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            reports.get(timeout=600)
        for k in size["ks"]:
            start = time.time() + 0.5
            for q in commands[:k]:
                q.put(start)
            got = [reports.get(timeout=600) for _ in range(k)]
            window = max(r["end"] for r in got) - min(r["start"] for r in got)
            out[str(k)] = {"images_per_s": sum(r["images"] for r in got) / window, "window_s": window}
    finally:
        for q in commands:
            q.put(None)
        for p in procs:
            p.join(timeout=60)
    return out


def _mps_active() -> bool:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return Path(pipe, "control").exists()


def projection(images_per_s: float) -> float:
    """Architectures per GPU-hour at ``images_per_s`` of training under :data:`NB201_PROTOCOL`."""
    p = NB201_PROTOCOL
    per_arch_images = p["epochs"] * (p["train_images"] + p["eval_images"] / 3)
    return 3600 * images_per_s / per_arch_images if images_per_s > 0 else 0.0


def check_no_sync_in_step(spec: str, size: dict[str, Any], data, device: torch.device) -> dict[str, Any]:
    """The packed engine's steps under ``set_sync_debug_mode("error")``; ``train()``'s sync count per epoch
    does not grow with the number of steps."""
    if device.type != "cuda":
        return {"skipped": "CPU: host reads are free there (the CPU step reads the loss on purpose)"}
    import warnings

    from ahps_core import packed

    steps_run: list[int] = []
    original = packed.eager_step

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            steps_run.append(1)

    packed.eager_step = strict
    try:
        packed.train_pack([_config(spec, size, seed=s) for s in range(2)], data=data, stack="on")
        pack_ok, pack_error = True, ""
    except RuntimeError as exc:
        pack_ok, pack_error = False, str(exc)[:300]
    finally:
        packed.eager_step = original
    counts = []
    from ahps_core.train import train

    for steps in (size["steps"], 2 * size["steps"]):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(_config(spec, size, epochs=1, max_steps_per_epoch=steps), data=data, progress=False)
        torch.cuda.set_sync_debug_mode("default")
        counts.append(sum(1 for w in caught if "synchroniz" in str(w.message)))
    return {"ok": pack_ok and counts[0] == counts[1], "pack_steps_checked": len(steps_run), "pack_error": pack_error,
            "train_syncs_per_epoch": counts}


def check_divergence(spec: str, size: dict[str, Any], data) -> dict[str, Any]:
    """A run at LR 1e12 ends ``diverged`` (alone and in a pack); its pack-mate is unaffected."""
    from ahps_core.packed import train_pack
    from ahps_core.train import train

    bad, good = _config(spec, size, lr=1e12, epochs=3), _config(spec, size, seed=1, epochs=3)
    alone = train(bad, data=data, progress=False)
    pair = train_pack([bad, good], data=data, stack="on")
    ref = train(good, data=data, progress=False)
    mate = [h["train_loss"] for h in pair[1].history]
    own = [h["train_loss"] for h in ref.history]
    # unaffected: finite all along, and its first epoch where its own run's is (later epochs drift apart by
    # rounding: grouped vs plain convolutions, bf16)
    close = all(math.isfinite(v) for v in mate) and len(mate) == len(own) and math.isclose(mate[0], own[0],
                                                                                          rel_tol=5e-2)
    return {"ok": alone.status == pair[0].status == "diverged" and pair[1].status == "completed" and close,
            "alone": alone.diverged_at, "in_pack": pair[0].diverged_at, "mate_losses": mate, "own_losses": own}


def check_loader(device: torch.device) -> dict[str, Any]:
    """The device loader: same batches for the same (seed, epoch), resumable by step, every augmented image a
    (flipped) padded crop of its source."""
    import torch.nn.functional as F

    from ahps_core.data import DeviceLoader

    data = synthetic_cifar(64, seed=3)
    images, labels = data.train.images, data.train.labels
    loader = DeviceLoader(images, labels, 16, device, mean=(0, 0, 0), std=(1 / 255,) * 3, augment=True, pad=4,
                          flip=True, seed=5)
    a = [(x.clone(), y.clone()) for x, y in loader.epoch(2)]
    b = [(x.clone(), y.clone()) for x, y in loader.epoch(2)]
    tail = [(x.clone(), y.clone()) for x, y in loader.epoch(2, start_step=2)]
    same = all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    resumable = all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a[2:], tail, strict=True))
    padded = F.pad(images, (4, 4, 4, 4)).float()
    crops_ok = True
    x0 = torch.cat([x for x, _ in a]).round().cpu()  # pixel values (mean 0, std 1/255): uint8 values as floats
    y0 = torch.cat([y for _, y in a]).cpu()
    for i in range(8):  # a few images: find each among all crops/flips of the images with its label
        found = False
        for j in (labels == y0[i]).nonzero().flatten().tolist():
            for flip in (False, True):
                src = padded[j].flip(-1) if flip else padded[j]
                for top in range(9):
                    for left in range(9):
                        if torch.equal(src[:, top:top + 32, left:left + 32], x0[i]):
                            found = True
                            break
                    if found:
                        break
                if found:
                    break
            if found:
                break
        crops_ok = crops_ok and found
    return {"ok": same and resumable and crops_ok, "reproducible": same, "resumable": resumable,
            "crops": crops_ok, "device": str(device)}


def check_graphs_match_eager(spec: str, size: dict[str, Any], data, device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {"skipped": "CPU: no CUDA graphs"}
    from ahps_core.packed import train_pack

    configs = [_config(spec, size, seed=s) for s in range(2)]
    eager = train_pack([c.replace(step_mode="eager") for c in configs], data=data, stack="on")
    graphs = train_pack([c.replace(step_mode="graphs") for c in configs], data=data, stack="on")
    pairs = [(e.history[-1]["train_loss"], g.history[-1]["train_loss"]) for e, g in zip(eager, graphs, strict=True)]
    return {"ok": all(math.isclose(e, g, rel_tol=1e-2) for e, g in pairs), "final_losses_eager_graphs": pairs}


def run_check(*, smoke: bool = False, skip_concurrent: bool = False, compile_all: bool = False) -> dict[str, Any]:
    """The whole check (module docstring); ``smoke``: on CPU, tiny sizes; ``torch.compile`` is measured on the
    mean cell only unless ``compile_all``."""
    from ahps_core.runtime import resolve_device

    started = time.perf_counter()
    size = SIZES["smoke" if smoke else "full"]
    device = resolve_device("cpu" if smoke else "auto")
    report: dict[str, Any] = {
        "check": "gpu", "smoke": smoke, "device": str(device), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cuda": torch.version.cuda, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()},
        "nb201_protocol": NB201_PROTOCOL, "cells": CELLS,
    }
    if device.type != "cuda" and not smoke:
        report["error"] = "no CUDA GPU here: run on a GPU node, or --smoke for the CPU run of the script"
        return report
    data = _data(size)
    with torch.backends.cudnn.flags(enabled=True, benchmark=device.type == "cuda"):
        report["checks"] = {
            "loader": check_loader(device),
            "no_sync_in_step": check_no_sync_in_step(CELLS["mean"], size, data, device),
            "divergence": check_divergence(CELLS["mean"], size, data),
            "graphs_vs_eager": check_graphs_match_eager(CELLS["mean"], size, data, device),
        }
        cells: dict[str, Any] = {}
        for name, spec in CELLS.items():
            row: dict[str, Any] = {"spec": spec}
            for cl in ("on", "off"):
                row[f"train_channels_last_{cl}"] = bench_arch(
                    spec, batch_size=size["batch"], steps=size["steps"], warmup=size["warmup"],
                    repeats=size["repeats"], device=str(device.type), precisions=("fp32", "bf16"),
                    channels_last=cl, C=size["C"], N=size["N"])
            row["step_modes"] = step_modes(spec, size, data, device, compile_=compile_all or name == "mean")
            best_mode = max(("eager", "graphs"), key=lambda m: row["step_modes"].get(m, {}).get("images_per_s", 0))
            row["stacked"] = stacked(spec, size, data, best_mode)
            row["stacked_mode"] = best_mode
            if not skip_concurrent and name in size["concurrent_cells"]:
                row["concurrent"] = concurrent(spec, size)
            cells[name] = row
        report["cells"] = cells
    report["projection_arch_per_gpu_hour"] = _projections(report["cells"])
    report["ok"] = all(c.get("ok", True) for c in report["checks"].values())
    report["seconds"] = time.perf_counter() - started
    return report


def _projections(cells: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, row in cells.items():
        single = max(v.get("images_per_s", 0.0) for v in row["step_modes"].values())
        stack = max(v["images_per_s"] for v in row["stacked"].values())
        conc = max((v["images_per_s"] for k, v in row.get("concurrent", {}).items() if k != "mps"), default=0.0)
        naive = row["train_channels_last_off"]["naive_images_per_s"]
        out[name] = {"naive": projection(naive), "one_model": projection(single), "stacked": projection(stack),
                     "concurrent": projection(conc)}
    return out


@click.command("gpu")
@click.option("--smoke", is_flag=True, help="Run the script on CPU with tiny sizes (seconds; what the tests run).")
@click.option("--skip-concurrent", is_flag=True, help="Leave out the concurrent-process measurement.")
@click.option("--compile-all", is_flag=True, help="Measure torch.compile on every cell (default: the mean cell).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="gpu-check.json", show_default=True,
              help="Where the JSON report goes.")
def command(smoke: bool, skip_concurrent: bool, compile_all: bool, out_path: str) -> None:
    """The GPU check: GPU paths checked and measured, one JSON report (module docstring)."""
    report = run_check(smoke=smoke, skip_concurrent=skip_concurrent, compile_all=compile_all)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(report, indent=2, default=str))
    if "error" in report:
        from ahps_core.errors import ConfigError

        raise ConfigError(report["error"])
    click.echo(f"{report['device']} ({report['device_name']}): checks "
               f"{'passed' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s; wrote {out_path}")
    for name, check in report["checks"].items():
        state = "skipped" if "skipped" in check else ("ok" if check.get("ok") else "FAILED")
        click.echo(f"  {name}: {state}")
    for name, p in report["projection_arch_per_gpu_hour"].items():
        click.echo(f"  {name} cell, architectures per GPU-hour (NB201 protocol): naive {p['naive']:.1f}, one model "
                   f"{p['one_model']:.1f}, stacked {p['stacked']:.1f}, concurrent {p['concurrent']:.1f}")

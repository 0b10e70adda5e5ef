"""``ahps bench pipeline``: where the main job's time goes, measured in one run of the benchmark.

1. **main job vs the same steps in one process.** ``ahps run`` (the ``transfer`` pipeline on kfp's local runner,
   one process per task, a fresh MLflow SQLite store) is timed from the outside, from its start to its exit.
   Then one fresh process runs the same steps with the same parameters and the same tracking (a fresh store):
   find the base LR, plan, every pack (one after another, with the intra-op threads a task gets on the local
   runner), compare; also timed from its start to its exit. The ratio is the orchestration's cost (process
   starts, imports, exits per task).
2. **packed vs one run per task.** In one process, after a warm-up: every arm x seed of one architecture (default
   2 arms x 3 seeds of ``2_22_222_2222``) trained as one pack (:func:`ahps_core.steps.pack.train_pack_step`)
   and as one :func:`ahps_core.steps.training.train_step` per run, both with MLflow tracking, alternating order
   over ``repeats``; the best time of each. Imports are paid before either, so the figure is the packing's own
   gain, not the saved process starts.

Wall and CPU seconds are both reported (CPU seconds of the processes: the measure that other load on a shared
machine disturbs least), with the load average before and after, because on a shared machine wall times vary.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ahps_core.errors import OrchestrationError

DEFAULT_ARCH = "2_22_222_2222"
DEFAULT_SEEDS = (0, 1, 2)
#: The acceptance figures of issue #14 (2 CPU cores).
MAIN_JOB_MAX_RATIO = 1.5
PACKED_MIN_SPEEDUP = 1.8


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_child(command: list[str], log: Path) -> dict[str, Any]:
    """Run ``command`` (output to ``log``), timed from the outside: wall and CPU seconds (children's rusage)."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise OrchestrationError(f"{' '.join(command[:4])} ... exited with {rc}: {' | '.join(tail)} (log: {log})")
    return {"wall_s": wall, "cpu_s": cpu, "log": str(log)}


def main_job(params: list[str], work: Path, parallelism: int | None) -> dict[str, Any]:
    """``ahps run`` with ``params`` on a fresh output directory and MLflow store, timed from the outside."""
    out, store = work / "main-job", work / "main-job-mlruns"
    command = [sys.executable, "-m", "ahps.cli", "run", "--output-dir", str(out), "--tracking-uri",
               f"sqlite:///{store}/mlflow.db"]
    if parallelism:
        command += ["--parallelism", str(parallelism)]
    for p in params:
        command += ["-p", p]
    return _timed_child(command, work / "main-job.log")


def in_process(params: list[str], work: Path, parallelism: int | None) -> dict[str, Any]:
    """The same steps in one fresh process (module docstring), timed from the outside."""
    spec = {"params": params, "work": str(work / "in-process"), "parallelism": parallelism}
    command = [sys.executable, "-m", "ahps.orchestration.pipeline_bench", json.dumps(spec)]
    return _timed_child(command, work / "in-process.log")


def run_steps_in_process(params: list[str], work: Path, parallelism: int | None) -> dict[str, Any]:
    """The transfer pipeline's steps in this process, sequentially (what :func:`in_process` runs)."""
    from ahps.orchestration.local import default_parallelism, local_params
    from ahps.orchestration.params import pipeline_and_params
    from ahps_core.jsonio import read_json
    from ahps_core.steps.common import PLAN_FILE, prepare_env
    from ahps_core.steps.pack import make_packs, train_pack_step
    from ahps_core.steps.transfer import compare_step, find_base_lr_step, plan_step
    from ahps_core.tracking import local_store_uri

    pipe, given = pipeline_and_params("transfer", tuple(params), None)
    uri = local_store_uri(str(work / "mlruns"))
    slots = parallelism or default_parallelism()
    a = local_params(pipe, given, output_dir=work, tracking_uri=uri, run_group=None, parallelism=slots)
    threads = max(1, (os.cpu_count() or 1) // slots)
    import torch

    torch.set_num_threads(threads)  # what a training task gets on the local runner
    prepare_env(a["s3_endpoint"])
    exp = a["mlflow_experiment"]
    search = find_base_lr_step(
        family=a["family"], dataset=a["dataset"], data_source=a["data_source"], targets=a["targets"],
        seeds=a["seeds"], epochs=a["epochs"], rule=a["rule"], convention=a["convention"], base_lr=a["base_lr"],
        fixed_lr=a["fixed_lr"], lr_grid=a["lr_grid"], lr_seeds=a["lr_seeds"], train_recipe=a["train_recipe"],
        batch_size=a["batch_size"], width=a["width"], tracking_uri=uri, experiment=exp, run_group=a["run_group"],
        s3_endpoint=a["s3_endpoint"], out_dir=str(work / "search"))
    group = search["run_group"]
    items = plan_step(family=a["family"], targets=[str(t) for t in a["targets"]], seeds=a["seeds"],
                      base_lr=search["base_lr"], fixed_lr=a["fixed_lr"], rule=a["rule"], convention=a["convention"],
                      tracking_uri=uri, experiment=exp, run_group=group, out_dir=str(work / "plan"))
    results = []
    for i, pack in enumerate(make_packs(items, a["pack"])):
        results += train_pack_step(
            pack=pack, family=a["family"], dataset=a["dataset"], data_source=a["data_source"], epochs=a["epochs"],
            train_recipe=a["train_recipe"], batch_size=a["batch_size"], width=a["width"],
            max_steps_per_epoch=a["max_steps_per_epoch"], device=a["device"], rule=a["rule"],
            convention=a["convention"], tracking_uri=uri, experiment=exp, checkpoint_root=a["checkpoint_root"],
            s3_endpoint=a["s3_endpoint"], model_dir=str(work / f"pack-{i}"))
    summary = compare_step(results=results, plan=read_json(work / "plan", PLAN_FILE), family=a["family"],
                           dataset=a["dataset"], tracking_uri=uri, experiment=exp, run_group=group,
                           out_dir=str(work / "compare"))
    return {"trainings": len(results), "rows": summary["rows"], "threads": threads}


def packed_vs_single(arch: str, seeds: tuple[int, ...], work: Path, repeats: int = 1,
                     base_lr: float = 0.5623413251903491) -> dict[str, Any]:
    """Every arm x seed of ``arch`` as one pack and as one train_step per run, in this process (module docstring);
    ``base_lr``: the transfer pipeline's default search result on digits."""
    import torch

    from ahps_core.steps.common import tracker
    from ahps_core.steps.pack import make_packs, train_pack_step
    from ahps_core.steps.training import train_step
    from ahps_core.steps.transfer import plan_step
    from ahps_core.tracking import local_store_uri

    torch.set_num_threads(1)
    uri = local_store_uri(str(work / "mlruns"))
    common: dict[str, Any] = dict(
        family="mlp", dataset="digits", data_source="", epochs=20, train_recipe="", batch_size=0, width=0,
        max_steps_per_epoch=0, device="cpu", rule="sum-cubed", convention="reference", tracking_uri=uri,
        experiment="ahps-bench", checkpoint_root="", s3_endpoint="")

    def plan(group: str) -> list[dict[str, Any]]:
        tracker(uri, "ahps-bench", group).ensure_parent(name=group)
        return plan_step(family="mlp", targets=[arch], seeds=list(seeds), base_lr=base_lr, fixed_lr=0.0,
                         rule="sum-cubed", convention="reference", tracking_uri=uri, experiment="ahps-bench",
                         run_group=group, out_dir=str(work / group))

    def single(tag: str) -> float:
        items = plan(f"single-{tag}")
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            train_step(item=item, run_group=item["run_group"], model_dir=str(work / f"single-{tag}" / str(i)),
                       **common)
        return time.perf_counter() - t0

    def packed(tag: str) -> float:
        items = plan(f"packed-{tag}")
        t0 = time.perf_counter()
        train_pack_step(pack=make_packs(items, 1)[0], model_dir=str(work / f"packed-{tag}"), **common)
        return time.perf_counter() - t0

    warm = plan("warmup")[:2]  # imports, MKL, the dataset, the store: paid before either is timed
    for i, item in enumerate(warm):
        train_step(item=item, run_group="warmup", model_dir=str(work / "warmup" / str(i)),
                   **{**common, "epochs": 1})
    times: dict[str, list[float]] = {"single": [], "packed": []}
    for r in range(repeats):
        order = (("packed", packed), ("single", single)) if r % 2 else (("single", single), ("packed", packed))
        for name, fn in order:
            times[name].append(fn(str(r)))
    best = {k: min(v) for k, v in times.items()}
    return {"arch": arch, "seeds": list(seeds), "arms": 2, "runs": 2 * len(seeds), "threads": 1, "times_s": times,
            "single_s": best["single"], "packed_s": best["packed"], "speedup": best["single"] / best["packed"]}


def run_bench(*, params: list[str], arch: str = DEFAULT_ARCH, seeds: tuple[int, ...] = DEFAULT_SEEDS,
              repeats: int = 1, parallelism: int | None = None, parts: tuple[str, ...] = ("main", "pack"),
              work_dir: str | None = None) -> dict[str, Any]:
    """The whole benchmark (module docstring); ``parts``: ``main`` (1.) and/or ``pack`` (2.)."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="ahps-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"benchmark": "pipeline", "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                           "work_dir": str(work), "params": params}
    if "main" in parts:
        job = main_job(params, work, parallelism)
        steps = in_process(params, work, parallelism)
        out["main_job"] = {"local_runner": job, "in_process": steps, "ratio_wall": job["wall_s"] / steps["wall_s"],
                           "ratio_cpu": job["cpu_s"] / steps["cpu_s"] if steps["cpu_s"] else None,
                           "acceptance_max_ratio": MAIN_JOB_MAX_RATIO}
    if "pack" in parts:
        pack = packed_vs_single(arch, seeds, work / "pack", repeats=repeats)
        pack["acceptance_min_speedup"] = PACKED_MIN_SPEEDUP
        out["packing"] = pack
    out["load_after"] = os.getloadavg()
    return out


def format_report(result: dict[str, Any]) -> str:
    """The benchmark's table (``ahps bench pipeline``)."""
    lines = [f"{result['cpus']} CPUs; load average before {_load(result['load_before'])}, after "
             f"{_load(result['load_after'])}"]
    job = result.get("main_job")
    row = "{:44} {:>8} {:>8}"
    if job:
        lr, ip = job["local_runner"], job["in_process"]
        ratio_cpu = job["ratio_cpu"] or float("nan")
        lines += [
            row.format("", "wall s", "CPU s"),
            row.format("main job (ahps run, kfp local runner)", f"{lr['wall_s']:.1f}", f"{lr['cpu_s']:.1f}"),
            row.format("the same steps in one process", f"{ip['wall_s']:.1f}", f"{ip['cpu_s']:.1f}"),
            row.format(f"ratio (acceptance <= {job['acceptance_max_ratio']:.1f}x)", f"{job['ratio_wall']:.2f}x",
                       f"{ratio_cpu:.2f}x"),
        ]
    pack = result.get("packing")
    if pack:
        lines += [
            f"{pack['arch']}: 2 arms x {len(pack['seeds'])} seeds, same process, 1 thread, with MLflow tracking",
            row.format(f"one run per task ({pack['runs']} x train_step)", f"{pack['single_s']:.1f}", ""),
            row.format("packed (1 x train_pack_step)", f"{pack['packed_s']:.1f}", ""),
            row.format(f"speedup (acceptance >= {pack['acceptance_min_speedup']:.1f}x)", f"{pack['speedup']:.2f}x", ""),
        ]
    return "\n".join(lines)


def _load(values) -> str:
    return " ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":  # the in-process part, in its own fresh process (see in_process)
    _spec = json.loads(sys.argv[1])
    _result = run_steps_in_process(_spec["params"], Path(_spec["work"]), _spec["parallelism"])
    print(json.dumps({"trainings": _result["trainings"], "threads": _result["threads"]}))

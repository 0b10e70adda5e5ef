"""``ahps bench``: benchmarks reported as ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ahps.cli import LazyGroup

BENCHES = {
    "paths": "ahps_core.bench.paths_bench:command",
    "train": "ahps_core.bench.train_bench:command",
    "pipeline": "ahps.cli.bench_cmds:pipeline_cmd",
    "gpu": "ahps_core.bench.gpu_check:command",
}
BENCH_HELP = {
    "paths": "Path DP vs brute-force enumeration on growing DAGs; the 10,000-vertex DAG.",
    "train": "Our training loop (fp32 and bf16) vs a naive reference loop (images/s), NB201 cells.",
    "pipeline": "The main job on kfp's local runner vs the same steps in one process; packed vs one run per task.",
    "gpu": "The GPU check: one JSON report of the GPU paths and their speed (--smoke: a CPU run of the script).",
}


@click.command("pipeline")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Parameter of the transfer pipeline for the main-job part (repeatable).")
@click.option("--arch", default="2_22_222_2222", show_default=True, help="Architecture of the packing part.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of the packing part (x 2 arms).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Packing part: best of N, alternating the order.")
@click.option("--parallelism", type=click.IntRange(min=1), default=None,
              help="Concurrent training tasks of the local run (default: ahps run's).")
@click.option("--only", type=click.Choice(["main", "pack"]), default=None, help="Run only one of the two parts.")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None,
              help="Where the runs write (default: a new temporary directory).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON here too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def pipeline_cmd(params, arch, seeds, repeats, parallelism, only, work_dir, out_path, as_json) -> None:
    """The main job's wall time on kfp's local runner against the same steps in one process, and one packed
    training task against one task per run (ahps.orchestration.pipeline_bench)."""
    from ahps.orchestration.params import parse_value
    from ahps.orchestration.pipeline_bench import format_report, run_bench
    from ahps_core.errors import ConfigError

    try:
        seed_list = tuple(int(parse_value(s)) for s in seeds.split(",") if s.strip())
    except (TypeError, ValueError):
        raise ConfigError(f"--seeds {seeds!r}: expected a comma list of integers, e.g. 0,1,2") from None
    result = run_bench(params=list(params), arch=arch, seeds=seed_list, repeats=repeats, parallelism=parallelism,
                       parts=(only,) if only else ("main", "pack"), work_dir=work_dir)
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(result, indent=2))
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))


class _BenchGroup(LazyGroup):
    registry = BENCHES
    help_rows = BENCH_HELP


bench_group = _BenchGroup(name="bench", help="Benchmarks: ratios against a baseline run in the same process.")

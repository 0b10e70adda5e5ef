"""``ahps bench``: benchmarks reported as ratios against a baseline measured in the same process."""

from __future__ import annotations

from ahps.cli import LazyGroup

BENCHES = {
    "paths": "ahps_core.bench.paths_bench:command",
    "train": "ahps_core.bench.train_bench:command",
}
BENCH_HELP = {
    "paths": "Path DP vs brute-force enumeration on growing DAGs; the 10,000-vertex DAG.",
    "train": "Our training loop vs a naive reference loop (images/s), NB201 cells.",
}


class _BenchGroup(LazyGroup):
    registry = BENCHES
    help_rows = BENCH_HELP


bench_group = _BenchGroup(name="bench", help="Benchmarks: ratios against a baseline run in the same process.")

"""Where benchmark records come from: a local path, ``s3://bucket/key``, or :data:`FIXTURE` (the real
NATS-Bench records of 3 architectures shipped with ahps, MIT).

From S3 a file (``.pth``, ``.pickle.pbz2``) is mirrored whole into the dataset cache
(``<cache>/benchmarks/<bucket>/<key>``); of a NATS-Bench ``-simple`` prefix only the meta file and the files of
the sampled architectures are fetched (every file when the sample is stratified: it ranks the whole pool by
accuracy). Fetching goes through :mod:`ahps_core.data.s3` (verified, atomic, resumable).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ahps_core.benchmarks.records import BenchmarkRecords, open_benchmark
from ahps_core.errors import AhpsError, BenchmarkError, ConfigError

FIXTURE = "fixture"


def benchmark_path(benchmark: str) -> str:
    """The benchmark records to open: ``benchmark``, or the shipped fixture for ``"fixture"``."""
    benchmark = (benchmark or "").strip()
    if not benchmark:
        raise ConfigError("benchmark is empty: give the benchmark records (a NATS-Bench topology '*-simple' "
                          "directory or a NAS-Bench-201 .pth file, a path or s3://bucket/key), or 'fixture' for the "
                          "3 architectures shipped with ahps")
    if benchmark != FIXTURE:
        return benchmark
    from ahps_core.resources import NATS_TSS_FIXTURE

    return str(NATS_TSS_FIXTURE)


class _Listing:
    """What unstratified sampling needs of benchmark records (their architectures), from an S3 listing."""

    def __init__(self, arch_strs: list[str]) -> None:
        self._archs = arch_strs

    def arch_strs(self) -> list[str]:
        return list(self._archs)

    def accuracies(self, dataset: str, archs: Iterable[str] | None = None) -> dict[str, float]:
        raise ConfigError("stratified sampling needs every record: it cannot run on a listing")


def _fetch(client: Any, bucket: str, key: str, dest: Path) -> None:
    from ahps_core.data.s3 import fetch_object
    from ahps_core.errors import DataError

    try:
        fetch_object(client, bucket, key, dest, None)
    except DataError as exc:
        raise BenchmarkError(f"benchmark {f's3://{bucket}/{key}'!r} cannot be fetched: {exc}") from None


def open_benchmark_records(benchmark: str, *, s3_endpoint: str = "", cache_dir: str | os.PathLike[str] | None = None,
                           sample: Mapping[str, Any] | None = None):
    """``(records, sample, candidates)`` for a re-evaluation: the benchmark records (a local path, ``s3://``, or
    :data:`FIXTURE`), when ``sample`` holds the :func:`ahps_core.sampling.sample_cells` arguments (``k``,
    ``seed``, ``dataset``, ``stratify``, ``dedup``, ``iso``) the sample drawn from them (else None), and what it
    was drawn from (``arch_strs()``: every recorded architecture, also when only the sampled records were
    fetched). A missing or unreadable benchmark is a :class:`BenchmarkError`, a sample larger than the pool a
    :class:`ConfigError`."""
    from ahps_core.sampling import sample_cells

    def draw(records: Any):
        return None if sample is None else sample_cells(int(sample["k"]), int(sample["seed"]), records=records,
                                                        dataset=sample["dataset"], stratify=bool(sample["stratify"]),
                                                        dedup=bool(sample["dedup"]), iso=str(sample["iso"]))

    path = benchmark_path(benchmark)
    if not path.startswith("s3://"):
        records = open_benchmark(path)
        return records, draw(records), records
    from ahps_core.data import default_cache_dir
    from ahps_core.data.s3 import list_names, make_client, parse_s3_uri

    bucket, key = parse_s3_uri(path)
    local = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "benchmarks" / bucket / key
    client = make_client(s3_endpoint or None)
    if key.endswith((".pth", ".pickle.pbz2")):  # one file
        _fetch(client, bucket, key, local)
        records = open_benchmark(local)
        return records, draw(records), records
    try:
        names = list_names(client, bucket, key)
    except AhpsError as exc:
        raise BenchmarkError(f"benchmark {path!r} cannot be listed: {exc}") from None
    if "meta.pickle.pbz2" not in names:
        raise BenchmarkError(f"benchmark {path!r} has no meta.pickle.pbz2: it is not a NATS-Bench topology "
                             "'-simple' directory (or a .pth / .pickle.pbz2 file)")
    arch_files = {int(n.split(".")[0]): n for n in names if "/" not in n and n.endswith(".pickle.pbz2")
                  and n.split(".")[0].isdigit()}
    _fetch(client, bucket, f"{key}/meta.pickle.pbz2", local / "meta.pickle.pbz2")
    meta: BenchmarkRecords = open_benchmark(local)
    listing = _Listing([meta.meta_archs[i] for i in sorted(arch_files) if i < meta.space_size])
    stratified = sample is not None and bool(sample.get("stratify"))
    drawn = None if stratified else draw(listing)
    wanted = sorted(arch_files) if stratified else sorted(meta.index_of(c) for c in (drawn.cells if drawn else []))
    for index in wanted:
        _fetch(client, bucket, f"{key}/{arch_files[index]}", local / arch_files[index])
    records = open_benchmark(local)
    return records, (draw(records) if stratified else drawn), listing


__all__ = ["FIXTURE", "benchmark_path", "open_benchmark_records"]

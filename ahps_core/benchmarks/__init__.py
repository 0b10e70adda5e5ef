"""Benchmark records (NAS-Bench-201 / NATS-Bench topology space) behind one interface.

* :mod:`~ahps_core.benchmarks.records`: opening every accepted format and querying per-seed 200-epoch accuracies;
* :mod:`~ahps_core.benchmarks.fetch`: where the records come from (a path, ``s3://``, or the fixture shipped
  with ahps) and, from S3, fetching only what a sample needs.
"""

from ahps_core.benchmarks.fetch import FIXTURE, benchmark_path, open_benchmark_records
from ahps_core.benchmarks.records import (
    ACCEPTED_FORMATS,
    DATASETS,
    EPOCHS,
    EXPECTED_SEEDS,
    BenchmarkRecords,
    DatasetSpec,
    Record,
    check_dataset,
    nb201_arch_string,
    open_benchmark,
)

__all__ = ["ACCEPTED_FORMATS", "DATASETS", "EPOCHS", "EXPECTED_SEEDS", "FIXTURE", "BenchmarkRecords", "DatasetSpec",
           "Record", "benchmark_path", "check_dataset", "nb201_arch_string", "open_benchmark",
           "open_benchmark_records"]

"""NAS-Bench-201 / NATS-Bench (topology space) records: every accepted format, one query interface.

Formats accepted by :func:`open_benchmark`:

* a NATS-Bench topology ``*-simple`` **directory** (``NATS-tss-v1_0-3ffb9-simple``): ``meta.pickle.pbz2`` plus
  one ``{index:06d}.pickle.pbz2`` per architecture, read lazily (only the queried architectures are
  decompressed; a partial copy with a few files works offline);
* a NATS-Bench topology **file** ``*.pickle.pbz2`` (``NATS-tss-v1_0-3ffb9.pickle.pbz2``, every architecture);
* a NAS-Bench-201 **file** ``*.pth`` (``NAS-Bench-201-v1_0-e61699.pth``, ``NAS-Bench-201-v1_1-096897.pth``);
* a **dict** already loaded from either file, or an official API object (``nas_201_api.NASBench201API``,
  ``nats_bench`` topology API).

Query semantics (Dong & Yang, "NAS-Bench-201", ICLR 2020, §2.3 and Table 5; Dong et al., "NATS-Bench", TPAMI
2021; the metric keys are documented in ``ArchResults.get_metrics`` of both ``nas_201_api/api_utils.py`` and
``nats_bench/api_utils.py``):

* the **200-epoch** runs (``hp='200'``; NB201 files store them under ``'full'``), final epoch;
* one headline accuracy per dataset, the one the papers report and Chen et al. (ICLR 2024, §4.3) compare
  against, see :data:`DATASETS`:

  ==================  =========================  =============  ============  ===========
  dataset             trained on                 headline set   test set      valid set
  ==================  =========================  =============  ============  ===========
  ``cifar10``         CIFAR-10 train + valid     ``ori-test``   ``ori-test``  (none)
  ``cifar10-valid``   CIFAR-10 train             ``x-valid``    ``ori-test``  ``x-valid``
  ``cifar100``        CIFAR-100 train            ``x-test``     ``x-test``    ``x-valid``
  ``ImageNet16-120``  ImageNet16-120 train       ``x-test``     ``x-test``    ``x-valid``
  ==================  =========================  =============  ============  ===========

  (``ori-test`` of ``cifar100``/``ImageNet16-120`` is valid+test together and is not used.)
* **per-seed values and their plain mean**, never one randomly chosen trial: the official APIs default to
  ``is_random=True`` in ``get_more_info``; here every trial is read by its seed
  (``ArchResults.query(dataset)`` -> ``ResultsCount.get_eval(set)``). The 200-epoch runs use seeds
  777, 888 and 999 (:data:`EXPECTED_SEEDS`); NB201 v1_1 trained some architectures once or twice, and a
  :class:`Record` then names the seeds it lacks.

Loading: NB201 ``.pth`` files are loaded by ahps with ``torch.load(..., weights_only=True)`` passed explicitly
(never through the official API's own ``torch.load``, whose default an environment variable can turn off), numpy's
scalar reconstruction admitted on top, as records may hold numpy floats (NATS-Bench's do), and handed to
``NASBench201API`` as data. NATS-Bench
``.pickle.pbz2`` files are unpickled with an allow-list (:mod:`ahps_core.benchmarks.nats_pickle`):
the official ``pickle_load`` runs an unrestricted ``pickle.load``. The decoded records are handed to the
official ``ArchResults.create_from_state_dict``, so metric lookup stays the official code.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ahps_core.benchmarks.nats_pickle import NP_SCALAR, load_pbz2
from ahps_core.errors import BenchmarkError, ConfigError
from ahps_core.graph import ArchGraph, nb201_arch_string

EPOCHS = 200
HP = "200"
EXPECTED_SEEDS = (777, 888, 999)

_EXT = ".pickle.pbz2"
_META = "meta" + _EXT
_ARCH_FILE = re.compile(r"^(\d+)\.pickle\.pbz2$")


@dataclass(frozen=True)
class DatasetSpec:
    """Which evaluation sets of a benchmark dataset are read: ``headline`` is the accuracy the papers report."""

    test_set: str
    valid_set: str | None
    headline: str


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("ori-test", None, "ori-test"),
    "cifar10-valid": DatasetSpec("ori-test", "x-valid", "x-valid"),
    "cifar100": DatasetSpec("x-test", "x-valid", "x-test"),
    "ImageNet16-120": DatasetSpec("x-test", "x-valid", "x-test"),
}

ACCEPTED_FORMATS = (
    "a NATS-Bench topology '*-simple' directory (meta.pickle.pbz2 + NNNNNN.pickle.pbz2 files), "
    "a NATS-Bench topology '.pickle.pbz2' file, a NAS-Bench-201 '.pth' file, "
    "or a dict / API object loaded from one of them"
)


def check_dataset(dataset: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``dataset``; a :class:`ConfigError` names the accepted datasets."""
    try:
        return DATASETS[dataset]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown benchmark dataset {dataset!r}: accepted datasets are {', '.join(DATASETS)}"
        ) from None


@dataclass(frozen=True)
class Record:
    """The 200-epoch results of one architecture on one dataset, per seed (final epoch, accuracy in %).

    ``test_acc_per_seed`` / ``valid_acc_per_seed`` map seed -> accuracy on ``test_set`` / ``valid_set``;
    the means are plain means over the seeds present (NaN when none). ``missing_seeds`` lists the
    :data:`EXPECTED_SEEDS` without a headline accuracy; ``note`` says so in words.
    """

    arch_str: str
    index: int
    dataset: str
    test_set: str
    valid_set: str | None
    headline_set: str
    test_acc_per_seed: dict[int, float]
    valid_acc_per_seed: dict[int, float]
    epochs: int = EPOCHS
    missing_seeds: tuple[int, ...] = ()
    note: str = ""

    @property
    def test_acc_mean(self) -> float:
        return _mean(self.test_acc_per_seed)

    @property
    def valid_acc_mean(self) -> float:
        return _mean(self.valid_acc_per_seed)

    @property
    def acc_per_seed(self) -> dict[int, float]:
        """Per-seed headline accuracy (see :data:`DATASETS`)."""
        return self.valid_acc_per_seed if self.headline_set == self.valid_set else self.test_acc_per_seed

    @property
    def acc_mean(self) -> float:
        """Headline accuracy averaged over the recorded seeds: what rankings compare."""
        return _mean(self.acc_per_seed)

    def to_dict(self) -> dict:
        def nan_none(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "arch_str": self.arch_str,
            "index": self.index,
            "dataset": self.dataset,
            "epochs": self.epochs,
            "test_set": self.test_set,
            "valid_set": self.valid_set,
            "headline_set": self.headline_set,
            "test_acc_per_seed": {str(s): a for s, a in self.test_acc_per_seed.items()},
            "test_acc_mean": nan_none(self.test_acc_mean),
            "valid_acc_per_seed": {str(s): a for s, a in self.valid_acc_per_seed.items()},
            "valid_acc_mean": nan_none(self.valid_acc_mean),
            "missing_seeds": list(self.missing_seeds),
            "note": self.note,
        }


def _mean(values: Mapping[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


# Per index: dataset -> seed -> eval set -> final-epoch accuracy. Small, so it is cached for every queried
# architecture (an ArchResults with its 200 epochs of curves is not: ~15k of them would not fit in memory).
_Summary = dict[str, dict[int, dict[str, float]]]


@dataclass(repr=False)
class BenchmarkRecords:
    """Benchmark records of the NB201 cell space; build with :func:`open_benchmark`.

    ``len(records)`` and :meth:`arch_strs` cover the architectures that *have* records (all 15,625 in a full
    benchmark, a few in a partial ``-simple`` copy); :attr:`space_size` is the size of the space itself.
    """

    source: str
    format: str
    meta_archs: list[str]
    _indices: list[int]
    _load: Callable[[int], Any]
    _archstr2index: dict[str, int] = field(init=False)
    _available: frozenset[int] = field(init=False)
    _cache: dict[int, _Summary] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._archstr2index = {a: i for i, a in enumerate(self.meta_archs)}
        self._available = frozenset(self._indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return f"BenchmarkRecords({self.source!r}, {self.format}, {len(self)} of {self.space_size} architectures)"

    @property
    def space_size(self) -> int:
        return len(self.meta_archs)

    def indices(self) -> list[int]:
        """Benchmark indices of the architectures with records, ascending."""
        return list(self._indices)

    def arch_strs(self) -> list[str]:
        """Arch strings of the architectures with records, in index order."""
        return [self.meta_archs[i] for i in self._indices]

    def arch_str(self, index: int) -> str:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.meta_archs):
            raise BenchmarkError(
                f"architecture index {index!r} is out of range for {self.source} "
                f"(0..{len(self.meta_archs) - 1})"
            )
        return self.meta_archs[index]

    def index_of(self, arch: str | ArchGraph | int) -> int:
        """Benchmark index of an NB201 arch string, digit code (``3_33_133``), :class:`ArchGraph` or index."""
        if isinstance(arch, bool):
            raise ConfigError(f"architecture {arch!r} is not an NB201 arch string, digit code or index")
        if isinstance(arch, int):
            self.arch_str(arch)
            return arch
        arch_str = nb201_arch_string(arch)
        try:
            return self._archstr2index[arch_str]
        except KeyError:
            raise BenchmarkError(f"architecture {arch_str!r} is not in the search space of {self.source}") from None

    def query(self, arch: str | ArchGraph | int, dataset: str) -> Record:
        """The 200-epoch :class:`Record` of ``arch`` on ``dataset`` (see :data:`DATASETS`)."""
        spec = check_dataset(dataset)
        index = self.index_of(arch)
        summary = self._summary(index)
        arch_str = self.meta_archs[index]
        if dataset not in summary:
            raise BenchmarkError(
                f"architecture {arch_str!r} (index {index}) has no {EPOCHS}-epoch record on {dataset!r} in "
                f"{self.source}; recorded datasets: {', '.join(summary) or 'none'}"
            )
        trials = summary[dataset]
        test = {s: sets[spec.test_set] for s, sets in trials.items() if spec.test_set in sets}
        valid = (
            {s: sets[spec.valid_set] for s, sets in trials.items() if spec.valid_set in sets}
            if spec.valid_set
            else {}
        )
        headline = valid if spec.headline == spec.valid_set else test
        if not headline:
            raise BenchmarkError(
                f"architecture {arch_str!r} (index {index}) has no {spec.headline!r} accuracy on {dataset!r} "
                f"in {self.source} (trained seeds: {sorted(trials)})"
            )
        missing = tuple(s for s in EXPECTED_SEEDS if s not in headline)
        notes = []
        if missing:
            notes.append(
                f"seed(s) {', '.join(map(str, missing))} missing: the mean is over "
                f"{len(headline)} seed(s) ({', '.join(map(str, sorted(headline)))})"
            )
        if spec.valid_set is None:
            notes.append("no validation split: 'cifar10' trains on train+valid (x-valid is under 'cifar10-valid')")
        return Record(
            arch_str=arch_str,
            index=index,
            dataset=dataset,
            test_set=spec.test_set,
            valid_set=spec.valid_set,
            headline_set=spec.headline,
            test_acc_per_seed=dict(sorted(test.items())),
            valid_acc_per_seed=dict(sorted(valid.items())),
            missing_seeds=missing,
            note="; ".join(notes),
        )

    def accuracies(self, dataset: str, archs: Iterable[str | ArchGraph | int] | None = None) -> dict[str, float]:
        """Arch string -> headline accuracy (mean over seeds) for ``archs`` (default: every recorded one)."""
        return {r.arch_str: r.acc_mean for r in self._records(dataset, archs)}

    def seed_accuracies(
        self, dataset: str, archs: Iterable[str | ArchGraph | int] | None = None
    ) -> dict[str, dict[int, float]]:
        """Arch string -> {seed: headline accuracy}: the input of the ranking noise floor."""
        return {r.arch_str: r.acc_per_seed for r in self._records(dataset, archs)}

    def _records(self, dataset: str, archs: Iterable[str | ArchGraph | int] | None) -> list[Record]:
        check_dataset(dataset)
        return [self.query(a, dataset) for a in (self._indices if archs is None else archs)]

    def _summary(self, index: int) -> _Summary:
        if index not in self._cache:
            if index not in self._available:
                raise BenchmarkError(
                    f"architecture {self.meta_archs[index]!r} (index {index}) has no record in {self.source}: "
                    f"{len(self._indices)} of {len(self.meta_archs)} architectures are stored"
                )
            self._cache[index] = _summarize(self._load(index), index, self.meta_archs[index], self.source)
        return self._cache[index]


def _summarize(results: Any, index: int, arch_str: str, source: str) -> _Summary:
    """Final-epoch accuracies of every trial in an official ``ArchResults`` (200-epoch runs)."""
    if results.arch_str != arch_str:
        raise BenchmarkError(
            f"{source}: the record of index {index} is for {results.arch_str!r}, but the benchmark's "
            f"architecture list has {arch_str!r} there (mismatched or corrupt files)"
        )
    out: _Summary = {}
    for dataset in results.get_dataset_names():
        trials: dict[int, dict[str, float]] = {}
        for seed, trial in results.query(dataset).items():
            if trial.get_total_epoch() != EPOCHS:
                raise BenchmarkError(
                    f"{source}: index {index} on {dataset!r} seed {seed} has {trial.get_total_epoch()} epochs "
                    f"under hp={HP!r}, expected {EPOCHS}"
                )
            trials[int(seed)] = {
                name: float(trial.get_eval(name)["accuracy"]) for name in trial.get_eval_set()
            }
        out[dataset] = trials
    return out


# --- opening ------------------------------------------------------------------------------------------------


def open_benchmark(path_or_obj: str | os.PathLike | Mapping | Any) -> BenchmarkRecords:
    """Open benchmark records, detecting the format (see the module docstring and :data:`ACCEPTED_FORMATS`).

    Raises :class:`BenchmarkError` naming the path for a missing, unreadable or unrecognised benchmark.
    """
    if isinstance(path_or_obj, Mapping):
        return _from_dict(path_or_obj, "<dict>")
    if hasattr(path_or_obj, "query_meta_info_by_index") and hasattr(path_or_obj, "meta_archs"):
        return _from_api(path_or_obj, f"<{type(path_or_obj).__name__}>")
    if not isinstance(path_or_obj, (str, os.PathLike)):
        raise BenchmarkError(
            f"cannot open a benchmark from a {type(path_or_obj).__name__}: accepted are {ACCEPTED_FORMATS}"
        )
    path = Path(path_or_obj)
    if not path.exists():
        raise BenchmarkError(f"benchmark {str(path)!r} does not exist; accepted are {ACCEPTED_FORMATS}")
    if path.is_dir():
        if not (path / _META).is_file():
            raise BenchmarkError(
                f"benchmark directory {str(path)!r} has no {_META}: it is not a NATS-Bench topology "
                f"'-simple' directory; accepted are {ACCEPTED_FORMATS}"
            )
        return _from_simple_dir(path)
    if path.name.endswith(".pth"):
        return _from_nb201_file(path)
    if path.name.endswith(_EXT):
        data = load_pbz2(path)
        if not isinstance(data, Mapping):
            raise BenchmarkError(f"{str(path)!r} holds a {type(data).__name__}, not a NATS-Bench benchmark dict")
        if HP in data:
            raise BenchmarkError(
                f"{str(path)!r} is one architecture's file of a '-simple' directory: open the directory "
                f"{str(path.parent)!r} instead"
            )
        return _from_dict(data, str(path))
    raise BenchmarkError(f"benchmark file {str(path)!r} has an unknown format; accepted are {ACCEPTED_FORMATS}")


def _from_simple_dir(path: Path) -> BenchmarkRecords:
    """Lazy reader of a ``-simple`` directory, as ``NATStopology(fast_mode=True)`` does in ``reload``."""
    from nats_bench.api_utils import ArchResults

    meta = load_pbz2(path / _META)
    if not isinstance(meta, Mapping) or "meta_archs" not in meta:
        raise BenchmarkError(f"{str(path / _META)!r} has no 'meta_archs': not a NATS-Bench topology meta file")
    meta_archs = list(meta["meta_archs"])
    files = _arch_files(path, len(meta_archs))

    def load(index: int) -> Any:
        data = load_pbz2(files[index])
        if not isinstance(data, Mapping) or HP not in data:
            raise BenchmarkError(f"{str(files[index])!r} has no {EPOCHS}-epoch results (key {HP!r})")
        return ArchResults.create_from_state_dict(data[HP])

    return BenchmarkRecords(str(path), "nats-tss-simple", meta_archs, sorted(files), load)


def _arch_files(path: Path, n: int) -> dict[int, Path]:
    """Index -> per-architecture file of a ``-simple`` directory (``000011.pickle.pbz2`` or ``11.pickle.pbz2``)."""
    files: dict[int, Path] = {}
    for entry in sorted(path.iterdir()):
        match = _ARCH_FILE.match(entry.name)
        if match and int(match.group(1)) < n:
            files.setdefault(int(match.group(1)), entry)
    return files


def _from_dict(data: Mapping, source: str) -> BenchmarkRecords:
    missing = [k for k in ("meta_archs", "arch2infos", "evaluated_indexes") if k not in data]
    if missing:
        raise BenchmarkError(
            f"{source} is not a benchmark dict: it lacks {missing}; accepted are {ACCEPTED_FORMATS}"
        )
    if any("full" in v or "less" in v for v in data["arch2infos"].values()):
        from nas_201_api import NASBench201API

        api: Any = _official(lambda: NASBench201API(dict(data), verbose=False), source)
    else:
        import nats_bench

        api = _official(lambda: nats_bench.create(dict(data), "tss", fast_mode=False, verbose=False), source)
    return _from_api(api, source)


class _Shared(dict):
    """A dict the official API may "deep-copy" for free: it is ours, freshly loaded, and nobody else holds it (the
    API deep-copies a dict it is given, which would double the memory of a multi-GB file)."""

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _from_nb201_file(path: Path) -> BenchmarkRecords:
    """A NAS-Bench-201 ``.pth`` file, loaded by us with ``torch.load(..., weights_only=True)`` passed explicitly
    (the official ``NASBench201API(path)`` calls ``torch.load`` without it, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``
    in the environment would let a malicious file run code), numpy's scalar reconstruction admitted on top; the
    records are then handed to the official API as data."""
    import torch
    from nas_201_api import NASBench201API

    allowed: list[Any] = [NP_SCALAR, (NP_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                          type(np.dtype(np.float64))]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable, foreign or code-carrying files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BenchmarkError(
            f"cannot load NAS-Bench-201 file {str(path)!r}: {first}; accepted are {ACCEPTED_FORMATS}"
        ) from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"{str(path)!r} holds a {type(data).__name__}, not a NAS-Bench-201 benchmark dict")
    missing = [k for k in ("meta_archs", "arch2infos", "evaluated_indexes") if k not in data]
    if missing:
        raise BenchmarkError(f"{str(path)!r} is not a NAS-Bench-201 file: it lacks {missing}")
    api = _official(lambda: NASBench201API(_Shared(data), verbose=False), str(path))
    return _from_api(api, str(path))


def _from_api(api: Any, source: str) -> BenchmarkRecords:
    """Wrap an official API object; every lookup goes through ``query_meta_info_by_index(i, hp='200')``."""
    fmt = "nas-bench-201" if type(api).__module__.startswith("nas_201_api") else "nats-tss"
    meta_archs = list(api.meta_archs)
    if getattr(api, "fast_mode", False) and getattr(api, "archive_dir", None):
        indices = sorted(_arch_files(Path(api.archive_dir), len(meta_archs)))
    else:
        indices = sorted(int(i) for i in api.arch2infos_dict)
    return BenchmarkRecords(
        source, fmt, meta_archs, indices, lambda i: _official(lambda: api.query_meta_info_by_index(i, hp=HP), source)
    )


def _official(call: Callable[[], Any], source: str) -> Any:
    """Run an official API call; its ValueError/AssertionError/KeyError become a :class:`BenchmarkError`."""
    try:
        return call()
    except (ValueError, AssertionError, KeyError, TypeError, AttributeError) as exc:
        raise BenchmarkError(f"{source}: the benchmark API refused the records: {exc}") from None

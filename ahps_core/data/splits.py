"""NAS-Bench-201's split files: where each lives, what it must contain, and reading one with checksum discipline.

NB201 carves a validation and a test part out of a set with index files, shipped in its code
(D-X-Y/AutoDL-Projects ``configs/nas-benchmark/``), JSON of the form ``{"key": ["int", ["0", "5", ...]], ...}``:

========================  ==================================  ===================  =========================
dataset                   file                                keys                 set split (images)
========================  ==================================  ===================  =========================
``cifar10-valid``         ``cifar-split.txt``                 ``train``/``valid``  CIFAR-10 train (50,000)
``cifar100``              ``cifar100-test-split.txt``         ``xvalid``/``xtest`` CIFAR-100 test (10,000)
``ImageNet16-120``        ``imagenet-16-120-test-split.txt``  ``xvalid``/``xtest`` ImageNet16-120 val (6,000)
========================  ==================================  ===================  =========================

**Verification** (the datasets' discipline, :mod:`ahps_core.data.checksums`): a split file is read fully and
checked before its indices are used. When an md5 is known for its file name (an explicit ``checksums`` entry, else
:data:`~ahps_core.data.checksums.KNOWN_MD5`) the bytes must have it. NB201 publishes no md5 of these files, so
without one the file must pass NB201's own check of them, from the script that built the benchmark
(``exps/NAS-Bench-201/statistics.py``, which asserts the first ten indices of both keys: :data:`NB201_SPLIT_HEADS`),
and split the whole set in two (:data:`NB201_SPLIT_SETS`). Any other file needs its md5 given; ``verify=False``
accepts it unchecked (an explicit opt-out). Every read records the file's md5 and whether it is NB201's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ahps_core.data.checksums import check_md5, lookup_md5, md5_bytes
from ahps_core.errors import DataError
from ahps_core.protocol import NB201_SPLIT_FILES

#: The size of the set each split file halves.
NB201_SPLIT_SETS: dict[str, int] = {"cifar10-valid": 50_000, "cifar100": 10_000, "ImageNet16-120": 6_000}
#: NB201's own check of its split files: the first ten indices of each key (``exps/NAS-Bench-201/statistics.py``).
NB201_SPLIT_HEADS: dict[str, dict[str, list[int]]] = {
    "cifar10-valid": {"train": [0, 5, 7, 11, 13, 15, 16, 17, 20, 24], "valid": [1, 2, 3, 4, 6, 8, 9, 10, 12, 14]},
    "cifar100": {"xvalid": [1, 3, 4, 5, 8, 10, 13, 14, 15, 16], "xtest": [0, 2, 6, 7, 9, 11, 12, 17, 20, 24]},
    "ImageNet16-120": {"xvalid": [1, 2, 3, 6, 7, 8, 9, 12, 16, 18], "xtest": [0, 4, 5, 10, 11, 13, 14, 15, 17, 20]},
}


@dataclass(frozen=True)
class SplitFile:
    """A read split file: its two index arrays (in ``keys`` order), md5, how it was verified (``md5``, ``nb201``:
    NB201's own check, or ``unverified``) and whether it is NB201's split of the dataset (``nb201``)."""

    source: str
    name: str
    keys: tuple[str, str]
    indices: tuple[np.ndarray, np.ndarray]
    md5: str
    verified: str
    nb201: bool

    def describe(self) -> str:
        what = "NB201's split" if self.nb201 else "not NB201's split"
        return f"{self.source} (md5 {self.md5}, {what}, verified by {self.verified})"


def is_nb201_split(dataset: str, keys: tuple[str, str], indices: tuple[np.ndarray, np.ndarray]) -> bool:
    """Whether ``indices`` are NB201's split of ``dataset``: NB201's first indices of both keys, and the two parts
    partition the whole set (:data:`NB201_SPLIT_SETS`)."""
    heads = NB201_SPLIT_HEADS.get(dataset)
    if heads is None or tuple(heads) != keys:
        return False
    if any(part[:10].tolist() != heads[key] for key, part in zip(keys, indices, strict=True)):
        return False
    both = np.concatenate(indices)
    return len(both) == NB201_SPLIT_SETS[dataset] and np.array_equal(np.sort(both), np.arange(len(both)))


def parse_split(content: bytes, source: str, keys: tuple[str, str], size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The ``keys`` index arrays of a split file's ``content``; indices in ``0..size-1`` (when ``size`` is given)
    and the two sets disjoint, otherwise :class:`DataError`."""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise DataError(f"cannot read split file {source}: {exc}") from exc
    arrays = []
    for key in keys:
        entry = data.get(key) if isinstance(data, dict) else None
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == "int" and isinstance(entry[1], list)):
            raise DataError(f'split file {source}: expected an entry {key!r}: ["int", ["0", ...]] (NB201 format)')
        try:
            indices = np.asarray([int(value) for value in entry[1]], dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"split file {source}: non-integer index in {key!r}: {exc}") from exc
        if indices.size == 0 or indices.min() < 0 or (size is not None and indices.max() >= size):
            bound = f"0..{size - 1} (the set has {size} images)" if size is not None else ">= 0"
            raise DataError(f"split file {source}: {key!r} indices must be in {bound}")
        arrays.append(indices)
    if np.intersect1d(arrays[0], arrays[1]).size:
        raise DataError(f"split file {source}: {keys[0]!r} and {keys[1]!r} share indices; expected disjoint sets")
    return arrays[0], arrays[1]


def _read_bytes(source: str, *, md5: str | None, cache_dir: str | os.PathLike[str] | None,
                endpoint_url: str | None) -> bytes:
    if source.startswith("s3://"):
        from ahps_core.data import s3
        from ahps_core.data.datasets import default_cache_dir

        bucket, key = s3.parse_s3_uri(source)
        dest = Path(cache_dir or default_cache_dir()) / "splits" / bucket / key
        s3.fetch_object(s3.make_client(endpoint_url), bucket, key, dest, md5)
        path = dest
    else:
        path = Path(source).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read split file {source}: {exc.strerror or exc}") from exc


def read_split(source: str | os.PathLike[str], dataset: str, keys: tuple[str, str], *, size: int | None = None,
               checksums: Mapping[str, str] | None = None, verify: bool = True,
               cache_dir: str | os.PathLike[str] | None = None, endpoint_url: str | None = None) -> SplitFile:
    """Read and verify the split file ``source`` (a path or ``s3://bucket/key``) of ``dataset`` (module docstring).

    ``checksums``: ``{file name: md5}`` overriding :data:`~ahps_core.data.checksums.KNOWN_MD5`, looked up by the
    file's name. Raises :class:`~ahps_core.errors.ChecksumError` for a wrong md5 and :class:`DataError` for an
    unreadable or malformed file, or one without a known md5 that is not NB201's."""
    source = os.fspath(source)
    name = source.rstrip("/").rsplit("/", 1)[-1]
    expected = lookup_md5(name, checksums) if verify else None
    content = _read_bytes(source, md5=expected, cache_dir=cache_dir, endpoint_url=endpoint_url)
    actual = md5_bytes(content)
    check_md5(Path(source), actual, expected)
    indices = parse_split(content, source, keys, size)
    nb201 = is_nb201_split(dataset, keys, indices)
    verified = "md5" if expected else "nb201" if nb201 else "unverified"
    if verify and verified == "unverified":
        nb_name = NB201_SPLIT_FILES.get(dataset, "none")
        raise DataError(
            f"split file {source} has no known md5 and is not NB201's {dataset} split ({nb_name}: its first indices "
            f"and sizes differ); give its md5 in the checksums file ({{{name!r}: '<md5>'}}) to use it"
        )
    return SplitFile(source, name, keys, indices, actual, verified, nb201)


def write_split_file(path: str | os.PathLike[str], keys: tuple[str, str], first: list[int], second: list[int]) -> str:
    """Write a split file in NB201's format; returns its md5 (generated data and tests)."""
    body = {key: ["int", [str(i) for i in part]] for key, part in zip(keys, (first, second), strict=True)}
    blob = json.dumps(body, indent=1).encode()
    Path(path).write_bytes(blob)
    return md5_bytes(blob)


__all__ = ["NB201_SPLIT_HEADS", "NB201_SPLIT_SETS", "SplitFile", "is_nb201_split",
           "parse_split", "read_split", "write_split_file"]

"""Readers for the on-disk dataset formats: CIFAR python batches (and their ``.tar.gz``) and ImageNet16.

Formats (as written by their authors, reproduced by :mod:`ahps_core.data.synthetic`):

* **CIFAR-10** ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``; **CIFAR-100**
  ``cifar-100-python/train`` and ``test``. Python 2 cPickle (protocol 2) dicts with keys ``b'batch_label'``,
  ``b'labels'`` (CIFAR-100: ``b'fine_labels'``, ``b'coarse_labels'``), ``b'data'`` (N x 3072 uint8, each
  row 1024 R then 1024 G then 1024 B values, i.e. CHW) and ``b'filenames'``. Also shipped as
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` holding those folders.
* **ImageNet16** (NAS-Bench-201's copy of Chrabaszcz et al.'s 16x16 downsampled ImageNet)
  ``train_data_batch_1..10`` and ``val_data``: Python 3 pickles (protocol 3) of dicts ``{'data': N x 768
  uint8 CHW, 'labels': list of 1-based ImageNet class ids}``, train batches also hold ``'mean'``.

Every file is MD5-verified before it is unpickled (see :mod:`ahps_core.data.checksums`) and unpickled with
:class:`~ahps_core.data.safe_pickle.RestrictedUnpickler`.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ahps_core.data.checksums import check_md5, expected_md5, lookup_md5, md5_file, read_verified
from ahps_core.data.safe_pickle import safe_loads
from ahps_core.errors import DataError


@dataclass(frozen=True)
class FileLayout:
    """Where a dataset family's files live under its root, and how to decode them."""

    title: str
    train: tuple[str, ...]  # relative names of the training batches, in order
    test: tuple[str, ...]  # relative names of the test (CIFAR) / validation (ImageNet16) batches
    archive: str | None  # relative name of a .tar.gz holding ``folder``, if the family ships one
    encoding: str  # how pickled Python 2 strings are decoded
    label_key: str
    image_size: int

    @property
    def members(self) -> tuple[str, ...]:
        """All batch files the loader reads."""
        return self.train + self.test

    @property
    def folder(self) -> str | None:
        """Top-level folder of the members (the archive's content), or ``None`` if they sit in the root."""
        heads = {name.split("/", 1)[0] for name in self.members if "/" in name}
        return heads.pop() if heads else None

    def describe(self) -> str:
        """Human-readable list of what is expected under the root (for error messages)."""
        text = ", ".join(self.members)
        return f"{text} (or {self.archive})" if self.archive else text


CIFAR10_FILES = FileLayout(
    title="CIFAR-10",
    train=tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
    test=("cifar-10-batches-py/test_batch",),
    archive="cifar-10-python.tar.gz",
    encoding="bytes",
    label_key="labels",
    image_size=32,
)
CIFAR100_FILES = FileLayout(
    title="CIFAR-100",
    train=("cifar-100-python/train",),
    test=("cifar-100-python/test",),
    archive="cifar-100-python.tar.gz",
    encoding="bytes",
    label_key="fine_labels",
    image_size=32,
)
IMAGENET16_FILES = FileLayout(
    title="ImageNet16",
    train=tuple(f"train_data_batch_{i}" for i in range(1, 11)),
    test=("val_data",),
    archive=None,
    encoding="latin1",
    label_key="labels",
    image_size=16,
)


def locate(
    root: Path,
    layout: FileLayout,
    *,
    checksums: Mapping[str, str] | None,
    verify: bool,
    extract_dir: Path,
) -> Path:
    """Return the directory that holds all of ``layout.members``, extracting the archive if needed.

    Looks in ``root``, then in ``extract_dir`` (where an earlier call may have extracted the archive).
    If neither holds the batch files and ``root`` holds the archive, the archive is MD5-verified and
    extracted into ``extract_dir``. Raises :class:`DataError` naming what is missing.
    """
    if not root.is_dir():
        raise DataError(f"{layout.title} root {root} is not a directory: expected it to contain {layout.describe()}")
    candidates = [root] if extract_dir == root else [root, extract_dir]
    for directory in candidates:
        present = [name for name in layout.members if (directory / name).is_file()]
        if len(present) == len(layout.members):
            return directory
        if present:
            missing = [name for name in layout.members if name not in present]
            described = ", ".join(f"{name} (expected md5 {lookup_md5(name, checksums)})" for name in missing)
            raise DataError(f"incomplete {layout.title} files in {directory}: missing {described}")
    if layout.archive is not None and (root / layout.archive).is_file():
        extract_archive(
            root / layout.archive,
            extract_dir,
            folder=layout.folder,
            md5=expected_md5(layout.archive, checksums, verify),
        )
        return extract_dir
    raise DataError(f"no {layout.title} files under {root}: expected {layout.describe()}")


def extract_archive(archive: Path, dest: Path, *, folder: str | None, md5: str | None) -> None:
    """Verify ``archive`` against ``md5``, then extract its ``folder`` into ``dest`` atomically.

    Extraction uses tarfile's ``'data'`` filter (no absolute paths, no ``..``, no links out of the tree,
    no devices) into a temporary directory inside ``dest``; the folder is then moved into place with
    ``os.replace``, so an interrupted extraction never leaves a half-populated dataset folder.
    """
    if folder is None:
        raise DataError(f"{archive} cannot be used: this dataset's files are not stored in a folder")
    check_md5(archive, md5_file(archive), md5)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=".extract-") as tmp:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            extracted = Path(tmp) / folder
            if not extracted.is_dir():
                raise DataError(f"archive {archive} does not contain the expected folder {folder}/")
            os.replace(extracted, dest / folder)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive} into {dest}: {exc}") from exc


def _text_keys(entry: object, source: Path) -> dict[str, object]:
    """The unpickled dict with ``bytes`` keys (Python 2 pickles loaded with ``encoding='bytes'``) as ``str``."""
    if not isinstance(entry, dict):
        raise DataError(f"{source} holds a {type(entry).__name__}, expected a dict with 'data' and labels")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _int_labels(raw: object, path: Path, key: str) -> np.ndarray:
    """The labels of a batch as int64: a list or array of integers, anything else (strings, floats, nested
    lists) is a :class:`DataError` naming the file."""
    try:
        values = np.asarray(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {key!r} is not a list of integer labels ({exc})") from None
    if values.dtype == object or not np.issubdtype(values.dtype, np.integer) \
            or values.ndim != 1:
        raise DataError(f"{path}: {key!r} holds {values.dtype} values of shape {values.shape}, expected a list of "
                        "integer labels")
    return values.astype(np.int64)


def read_batches(
    directory: Path,
    names: Sequence[str],
    layout: FileLayout,
    *,
    checksums: Mapping[str, str] | None,
    verify: bool,
    num_classes: int,
    label_offset: int = 0,
    drop_other_labels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Read, verify and decode the batch files ``names`` under ``directory``.

    Returns ``(images, labels)``: uint8 ``[N, 3, S, S]`` (S = ``layout.image_size``) and int64 ``[N]`` holding
    ``label - label_offset``. Labels outside ``[label_offset, label_offset + num_classes)`` are dropped when
    ``drop_other_labels`` (ImageNet16-120 keeps ImageNet ids 1..120) and are an error otherwise.
    """
    size = layout.image_size
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in names:
        path = directory / name
        blob = read_verified(path, expected_md5(name, checksums, verify))
        entry = _text_keys(safe_loads(blob, encoding=layout.encoding, source=path), path)
        if "data" not in entry or layout.label_key not in entry:
            raise DataError(f"{path} lacks the 'data' or {layout.label_key!r} entry of a {layout.title} batch")
        data = entry["data"]
        if (
            not isinstance(data, np.ndarray)
            or data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * size * size
        ):
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise DataError(f"{path}: 'data' is {got}, expected a uint8 N x {3 * size * size} array")
        target = _int_labels(entry[layout.label_key], path, layout.label_key) - label_offset
        if target.shape != (data.shape[0],):
            raise DataError(f"{path}: {target.size} labels for {data.shape[0]} images")
        in_range = (target >= 0) & (target < num_classes)
        if not drop_other_labels and not in_range.all():
            bad = int(target[~in_range][0]) + label_offset
            raise DataError(
                f"{path}: label {bad} outside the expected range {label_offset}..{label_offset + num_classes - 1}"
            )
        images.append(data[in_range].reshape(-1, 3, size, size))
        labels.append(target[in_range])
    return np.concatenate(images), np.concatenate(labels)

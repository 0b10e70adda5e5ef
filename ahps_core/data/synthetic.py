"""Small synthetic datasets written in the exact on-disk formats of CIFAR-10/100 and ImageNet16.

Used by the tests and by the offline demo of the re-evaluation pipeline (no real dataset can be downloaded
here). The files are byte-for-byte the same *kind* of pickle as the originals:

* CIFAR: a Python 2 cPickle stream (protocol 2) with py2 ``str`` (``SHORT_BINSTRING``/``BINSTRING``)
  for every string and byte string, dict keys ``b'batch_label'``, ``b'labels'`` (CIFAR-100:
  ``b'fine_labels'``, ``b'coarse_labels'``), ``b'data'``, ``b'filenames'``, and numpy arrays referenced as
  ``numpy.core.multiarray._reconstruct`` (the pre-numpy-2 module path the real files contain).
* ImageNet16: a Python 3 pickle, protocol 3, ``{'data', 'labels', 'mean'}`` (``val_data`` without
  ``'mean'``), labels being 1-based ImageNet ids.

Images are learnable, not noise: each class has a fixed random 4x4 colour template, upsampled and blurred
by noise, so a small network can fit them. Labels are balanced (``i % num_classes``, then shuffled).
Every writer returns ``{relative_name: md5}`` of what it wrote, ready for ``load_dataset(checksums=...)``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ahps_core.data.checksums import md5_bytes, md5_file
from ahps_core.data.formats import CIFAR10_FILES, CIFAR100_FILES, IMAGENET16_FILES
from ahps_core.errors import ConfigError

_NEW_NUMPY_PATH = b"cnumpy._core.multiarray\n"
_OLD_NUMPY_PATH = b"cnumpy.core.multiarray\n"


# The pure-Python pickler: unlike the C one, its per-type ``dispatch`` table can be overridden.
_PurePickler: Any = pickle._Pickler


class _Py2Pickler(_PurePickler):
    """Writes ``str`` and ``bytes`` as Python 2 ``str`` opcodes, as cPickle did for the CIFAR batches."""

    dispatch = _PurePickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def _legacy_numpy_path(blob: bytes) -> bytes:
    """Name numpy's reconstructor ``numpy.core.multiarray`` as pre-2.0 numpy (and the real files) did.

    Protocols <= 3 write globals as newline-terminated text (``GLOBAL`` opcode), so this is an exact rewrite.
    """
    return blob.replace(_NEW_NUMPY_PATH, _OLD_NUMPY_PATH)


def py2_pickle(obj: Any) -> bytes:
    """``obj`` pickled as Python 2's cPickle (protocol 2) would have written it."""
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return _legacy_numpy_path(buffer.getvalue())


def _images(rng: np.random.Generator, labels: np.ndarray, size: int, templates: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 3 * size * size]`` CHW rows: the class template (4x4 upsampled) plus Gaussian noise."""
    coarse = templates[labels]  # [N, 3, 4, 4]
    scale = size // 4
    upsampled = coarse.repeat(scale, axis=2).repeat(scale, axis=3)
    noisy = upsampled + rng.normal(0.0, 40.0, size=upsampled.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(len(labels), -1)


def _labels(rng: np.random.Generator, n: int, num_labels: int, first: int = 0) -> np.ndarray:
    """``n`` balanced labels ``first..first+num_labels-1`` in random order."""
    return rng.permutation(np.arange(n) % num_labels) + first


def _write(path: Path, blob: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return md5_bytes(blob)


def write_cifar_like(
    root: str | os.PathLike[str],
    n_train: int,
    n_test: int,
    num_classes: int = 10,
    seed: int = 0,
    *,
    archive: bool = False,
) -> dict[str, str]:
    """Write a CIFAR-10 (``num_classes=10``) or CIFAR-100 (``num_classes=100``) lookalike under ``root``.

    CIFAR-10: ``cifar-10-batches-py/data_batch_1..5`` (``n_train`` split over 5 batches), ``test_batch``,
    ``batches.meta``. CIFAR-100: ``cifar-100-python/train``, ``test``, ``meta``. With ``archive=True`` only
    ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` (holding that folder) is written.

    Returns ``{relative_name: md5}`` of every batch file (and the archive when written).
    """
    if num_classes not in (10, 100):
        raise ConfigError(f"num_classes must be 10 (CIFAR-10 format) or 100 (CIFAR-100 format), got {num_classes}")
    if n_train < 5 or n_test < 1:
        raise ConfigError(f"need n_train >= 5 and n_test >= 1, got n_train={n_train}, n_test={n_test}")
    layout = CIFAR10_FILES if num_classes == 10 else CIFAR100_FILES
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_classes, 3, 4, 4))
    label_key = b"labels" if num_classes == 10 else b"fine_labels"
    files: dict[str, bytes] = {}
    splits = [
        ("training", name, size)
        for name, size in zip(layout.train, _batch_sizes(n_train, len(layout.train)), strict=True)
    ]
    splits.append(("testing", layout.test[0], n_test))
    for number, (kind, name, size) in enumerate(splits):
        labels = _labels(rng, size, num_classes)
        entry: dict[bytes, Any] = {
            b"batch_label": _batch_label(kind, number, len(layout.train)),
            label_key: labels.tolist(),
            b"data": _images(rng, labels, 32, templates),
            b"filenames": [f"synthetic_{number}_{i:05d}.png".encode() for i in range(size)],
        }
        if num_classes == 100:
            entry[b"coarse_labels"] = (labels // 5).tolist()
        files[name] = py2_pickle(entry)
    folder = layout.folder
    assert folder is not None
    meta_name, meta = _cifar_meta(num_classes, n_train, len(layout.train))
    files[f"{folder}/{meta_name}"] = py2_pickle(meta)
    root = Path(root)
    checksums = {name: md5_bytes(blob) for name, blob in files.items() if name in layout.members}
    if not archive:
        for name, blob in files.items():
            _write(root / name, blob)
        return checksums
    assert layout.archive is not None
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in files.items():
            _write(Path(tmp) / name, blob)
        with tarfile.open(root / layout.archive, "w:gz") as tar:
            tar.add(Path(tmp) / folder, arcname=folder)
    checksums[layout.archive] = md5_file(root / layout.archive)
    return checksums


def _batch_sizes(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes differing by at most one."""
    return [len(chunk) for chunk in np.array_split(np.arange(total), parts)]


def _batch_label(kind: str, number: int, train_batches: int) -> bytes:
    if kind == "testing":
        return b"testing batch 1 of 1"
    return f"training batch {number + 1} of {train_batches}".encode()


def _cifar_meta(num_classes: int, n_train: int, train_batches: int) -> tuple[str, dict[bytes, Any]]:
    """The ``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100) file name and content (never read by the loader)."""
    if num_classes == 10:
        names = [f"class_{i}".encode() for i in range(10)]
        per_batch = -(-n_train // train_batches)
        return "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    fine = [f"fine_{i}".encode() for i in range(100)]
    coarse = [f"coarse_{i}".encode() for i in range(20)]
    return "meta", {b"fine_label_names": fine, b"coarse_label_names": coarse}


def write_imagenet16_like(
    root: str | os.PathLike[str],
    n_train: int,
    n_val: int,
    num_labels: int = 1000,
    seed: int = 0,
) -> dict[str, str]:
    """Write NAS-Bench-201's ImageNet16 files (``train_data_batch_1..10``, ``val_data``) under ``root``.

    Labels are 1-based ImageNet ids ``1..num_labels`` (balanced), so with ``num_labels > 120`` some images
    fall outside ImageNet16-120 and are dropped by the loader, as in the real data (151,700 of 1,281,167
    training images kept). Returns ``{relative_name: md5}``.
    """
    if n_train < 10 or n_val < 1 or num_labels < 1:
        raise ConfigError(f"need n_train >= 10, n_val >= 1, num_labels >= 1; got {n_train}, {n_val}, {num_labels}")
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(num_labels + 1, 3, 4, 4))  # indexed by the 1-based label
    train_labels = _labels(rng, n_train, num_labels, first=1)
    train_images = _images(rng, train_labels, 16, templates)
    mean = train_images.mean(axis=0)  # float64 [768], as the original script stores it
    root = Path(root)
    checksums: dict[str, str] = {}
    bounds = np.cumsum([0, *_batch_sizes(n_train, len(IMAGENET16_FILES.train))])
    for name, lo, hi in zip(IMAGENET16_FILES.train, bounds[:-1], bounds[1:], strict=True):
        entry = {"data": train_images[lo:hi], "labels": train_labels[lo:hi].tolist(), "mean": mean}
        checksums[name] = _write(root / name, _legacy_numpy_path(pickle.dumps(entry, protocol=3)))
    val_labels = _labels(rng, n_val, num_labels, first=1)
    entry = {"data": _images(rng, val_labels, 16, templates), "labels": val_labels.tolist()}
    checksums[IMAGENET16_FILES.test[0]] = _write(
        root / IMAGENET16_FILES.test[0], _legacy_numpy_path(pickle.dumps(entry, protocol=3))
    )
    return checksums


#: Name of the checksums manifest written next to generated data (``{"data_source", "synthetic": true, "md5"}``).
SYNTHETIC_MANIFEST = "ahps-synthetic-md5.json"
SYNTHETIC_SIZES = {"n_train": 1000, "n_test": 500}


def write_synthetic_splits(directory: str | os.PathLike[str], n_train: int, n_test: int) -> dict[str, str]:
    """Split files in NB201's format and under NB201's names (:data:`ahps_core.protocol.NB201_SPLIT_FILES`) for
    the generated sets: ``cifar10-valid``'s ``n_train`` training images, ``cifar100``'s and ``ImageNet16-120``'s
    ``n_test`` test images, each halved by alternating indices. NOT NB201's splits (they are not even its sizes).
    Returns ``{file name: md5}``."""
    from ahps_core.data.datasets import DATASETS
    from ahps_core.data.splits import write_split_file
    from ahps_core.protocol import NB201_SPLIT_FILES

    md5 = {}
    for dataset, name in NB201_SPLIT_FILES.items():
        size = n_train if dataset == "cifar10-valid" else n_test
        keys = DATASETS[dataset].split_keys
        assert keys is not None
        md5[name] = write_split_file(Path(directory) / name, keys, list(range(0, size, 2)), list(range(1, size, 2)))
    return md5


def write_synthetic_datasets(directory: str | os.PathLike[str]) -> Path:
    """Tiny learnable datasets in the exact formats of CIFAR-10 (``cifar-10-batches-py/``), CIFAR-100
    (``cifar-100-python/``) and ImageNet16-120 (the batch files) under ``directory``, split files for them in NB201's
    format (:func:`write_synthetic_splits`), and their manifest (:data:`SYNTHETIC_MANIFEST`) written last; returns
    the manifest's path. The offline data of ``ahps run reevaluate``: NOT the real datasets, and every report of a
    run on it says so."""
    from ahps_core.jsonio import write_json

    root = Path(directory).resolve()
    n_train, n_test = SYNTHETIC_SIZES["n_train"], SYNTHETIC_SIZES["n_test"]
    md5 = {**write_cifar_like(root, n_train, n_test, 10, seed=0),
           **write_cifar_like(root, n_train, n_test, 100, seed=1),
           **write_imagenet16_like(root, n_train, n_test, num_labels=120, seed=2),
           **write_synthetic_splits(root, n_train, n_test)}
    return write_json(root / SYNTHETIC_MANIFEST, {
        "data_source": str(root), "synthetic": True, "md5": md5,
        "note": f"generated by ahps run reevaluate: {n_train} training / {n_test} test images per dataset, class "
                "templates plus noise; NOT the real datasets",
    })

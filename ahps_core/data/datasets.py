"""The datasets and NAS-Bench-201 splits, loaded as uint8 tensors ready for :class:`DeviceLoader`.

========================  ==========================================================  ==========
name                      parts (sizes of the real data)                              ``eval``
========================  ==========================================================  ==========
``digits``                train 1437 / test 360 (scikit-learn's 8x8 digits, 1 channel)  test
``cifar10``               train 50k / test 10k                                          test
``cifar10-valid``         train 25k / valid 25k (both from CIFAR-10 train) / test 10k   valid
``cifar100``              train 50k / valid 5k / test 5k (from the test set) / ori-test  valid
``ImageNet16-120``        train 151,700 / valid 3k / test 3k (from val) / ori-test 6k   valid
========================  ==========================================================  ==========

``ori-test`` is the whole original test/validation set that NB201 splits into valid and test ("ori-test" in
NB201's result files); ``cifar10-valid``'s ``test`` is likewise the original CIFAR-10 test set.

**Splits.** NB201 carves the valid/test parts with index files (``cifar-split.txt`` with keys ``train``/
``valid``; ``cifar100-test-split.txt`` and ``imagenet-16-120-test-split.txt`` with keys ``xvalid``/``xtest``;
JSON of the form ``{"key": ["int", ["0", "5", ...]], ...}``; :mod:`ahps_core.data.splits`). Pass one as
``split_file`` (a path or ``s3://``) to reproduce NB201's exact split; it is verified like the dataset files (its md5
when one is known, else NB201's own check of its split files). Without it a deterministic *stratified halving* is
used instead: shuffle with ``numpy.random.default_rng(split_seed)``, stable-sort by label, alternate positions
between the two parts (per class the halves differ by at most one; 25k/25k, 5k/5k and 3k/3k on the real data). It
is NOT NB201's split; ``metadata["split"]`` says which one was used (with a file: ``split_md5``, ``split_nb201``,
``split_verified``), and ``metadata["part_indices"]`` holds a hash of each carved part's indices.

**Normalization** (NB201 ``get_datasets``, checked in D-X-Y/AutoDL-Projects
``lib/datasets/get_dataset_with_transform.py``): CIFAR-10 mean (125.3, 123.0, 113.9)/255, std (63.0, 62.1,
66.7)/255 -- NB201's own rounding of the exact CIFAR-10 statistics (0.49139968, 0.48215827, 0.44653124) /
(0.24703233, 0.24348505, 0.26158768), not the (0.2023, 0.1994, 0.2010) std of the reference scaling code;
CIFAR-100 mean (129.3, 124.1, 112.4)/255, std (68.2, 65.4, 70.4)/255; ImageNet16 mean (122.68, 116.66,
104.01)/255, std (63.22, 61.26, 65.09)/255. **Augmentation** (training part only): flip + random crop with
zero padding 4 (CIFAR, 32x32) or 2 (ImageNet16, 16x16); digits: none.

**Digits** (``sklearn.datasets.load_digits``, no download): 1797 images of 8x8 with values 0..16, stored as
uint8 ``round(v * 255 / 16)`` in ``[N, 1, 8, 8]``; split 1437/360 by ``train_test_split(test_size=360,
stratify=labels, random_state=0)``; mean/std are those of the training part (computed at load).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ahps_core.data.checksums import expected_md5
from ahps_core.data.formats import CIFAR10_FILES, CIFAR100_FILES, IMAGENET16_FILES, FileLayout, locate, read_batches
from ahps_core.data.loader import DeviceLoader
from ahps_core.errors import ConfigError, DataError


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one dataset name: its files, classes, normalization, augmentation and split."""

    name: str
    layout: FileLayout | None  # None: embedded (digits)
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...] | None  # None: computed from the training part at load time
    std: tuple[float, ...] | None
    pad: int  # zero padding of the training random crop (0: no crop)
    flip: bool  # random horizontal flip when training
    eval_part: str
    split_keys: tuple[str, str] | None  # the two keys of NB201's split file, if the dataset is split
    label_offset: int = 0  # ImageNet16 labels are 1-based ImageNet ids


def _scaled(values: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(v / 255 for v in values)


CIFAR10_MEAN, CIFAR10_STD = _scaled((125.3, 123.0, 113.9)), _scaled((63.0, 62.1, 66.7))
CIFAR100_MEAN, CIFAR100_STD = _scaled((129.3, 124.1, 112.4)), _scaled((68.2, 65.4, 70.4))
IMAGENET16_MEAN, IMAGENET16_STD = _scaled((122.68, 116.66, 104.01)), _scaled((63.22, 61.26, 65.09))

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "digits", layout=None, num_classes=10, image_size=8, channels=1, mean=None, std=None,
            pad=0, flip=False, eval_part="test", split_keys=None,
        ),
        DatasetSpec(
            "cifar10", layout=CIFAR10_FILES, num_classes=10, image_size=32, channels=3, mean=CIFAR10_MEAN,
            std=CIFAR10_STD, pad=4, flip=True, eval_part="test", split_keys=None,
        ),
        DatasetSpec(
            "cifar10-valid", layout=CIFAR10_FILES, num_classes=10, image_size=32, channels=3, mean=CIFAR10_MEAN,
            std=CIFAR10_STD, pad=4, flip=True, eval_part="valid", split_keys=("train", "valid"),
        ),
        DatasetSpec(
            "cifar100", layout=CIFAR100_FILES, num_classes=100, image_size=32, channels=3, mean=CIFAR100_MEAN,
            std=CIFAR100_STD, pad=4, flip=True, eval_part="valid", split_keys=("xvalid", "xtest"),
        ),
        DatasetSpec(
            "ImageNet16-120", layout=IMAGENET16_FILES, num_classes=120, image_size=16, channels=3,
            mean=IMAGENET16_MEAN, std=IMAGENET16_STD, pad=2, flip=True, eval_part="valid",
            split_keys=("xvalid", "xtest"), label_offset=1,
        ),
    )
}  # fmt: skip
"""Every dataset name :func:`load_dataset` accepts, with its static facts."""


@dataclass(frozen=True)
class Part:
    """One part of a split: uint8 images ``[N, C, H, W]`` and int64 labels ``[N]`` (CPU tensors)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetSplit:
    """A loaded dataset: its named parts plus what a training loop needs to know about them.

    ``train``/``eval`` are the parts NB201 trains and evaluates on; ``parts`` holds every part by name.
    ``pad``/``flip`` describe the training augmentation (``augment`` is whether there is any).
    ``metadata`` records the source, the verified files and their md5s, and which split was used.
    """

    name: str
    parts: Mapping[str, Part]
    eval_part: str
    num_classes: int
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def train(self) -> Part:
        return self.parts["train"]

    @property
    def eval(self) -> Part:
        return self.parts[self.eval_part]

    @property
    def augment(self) -> bool:
        return self.pad > 0 or self.flip

    def loader(
        self,
        part: str = "train",
        *,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        training: bool | None = None,
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> DeviceLoader:
        """A :class:`DeviceLoader` over ``parts[part]`` with this dataset's normalization.

        ``training`` (default: ``part == "train"``) turns on shuffling and the dataset's augmentation;
        otherwise the order is fixed and images are only normalized.
        """
        if part not in self.parts:
            raise ConfigError(f"unknown part {part!r} of {self.name}; expected one of {sorted(self.parts)}")
        training = part == "train" if training is None else training
        data = self.parts[part]
        return DeviceLoader(
            data.images,
            data.labels,
            batch_size,
            device,
            mean=self.mean,
            std=self.std,
            augment=training and self.augment,
            pad=self.pad,
            flip=self.flip,
            shuffle=training,
            drop_last=drop_last,
            seed=seed,
            channels_last=channels_last,
            dtype=dtype,
        )


def default_cache_dir() -> Path:
    """``$AHPS_DATA_CACHE``, else ``~/.cache/ahps/data``: where S3 objects are mirrored."""
    return Path(os.environ.get("AHPS_DATA_CACHE") or Path.home() / ".cache" / "ahps" / "data")


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split_file: str | os.PathLike[str] | None = None,
    split_seed: int = 0,
    checksums: Mapping[str, str] | None = None,
    verify: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> DatasetSplit:
    """Load dataset ``name`` (one of :data:`DATASETS`) with its NB201 split.

    Args:
        name: ``digits``, ``cifar10``, ``cifar10-valid``, ``cifar100`` or ``ImageNet16-120``; or a user dataset,
            ``npz:PATH`` (``npz:s3://bucket/key.npz``) or ``module:function`` (:mod:`ahps_core.data.custom`).
        root: local directory or ``s3://bucket/prefix`` holding the files (CIFAR: ``cifar-10-batches-py/`` or
            ``cifar-10-python.tar.gz``, likewise for CIFAR-100; ImageNet16: the batch files themselves).
            ``digits`` takes none.
        split_file: NB201's split index file for ``cifar10-valid``/``cifar100``/``ImageNet16-120`` (a path or
            ``s3://bucket/key``, verified with ``checksums``/``verify``: :func:`ahps_core.data.splits.read_split`);
            without it a seeded stratified halving (``split_seed``) is used (see module docstring).
        checksums: ``{relative_name: md5}`` overriding the known md5 table (custom/synthetic files).
        verify: ``False`` loads files without any known md5 unverified (explicit opt-out).
        cache_dir: where S3 objects are mirrored (default :func:`default_cache_dir`) and where a local
            ``.tar.gz`` is extracted (default: next to it, in ``root``).
        endpoint_url: S3 endpoint; default: ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, then AWS.
    """
    from ahps_core.data.custom import is_custom, load_custom

    if is_custom(name):  # npz:PATH or module:function (ahps_core.data.custom)
        return load_custom(name, root, cache_dir=cache_dir, endpoint_url=endpoint_url)
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}, npz:PATH or "
                          "module:function")
    spec = DATASETS[name]
    if split_file is not None and spec.split_keys is None:
        raise ConfigError(f"dataset {name} has no NB201 split file; split_file must not be given")
    if spec.layout is None:
        if root is not None:
            raise ConfigError(f"dataset {name} ships with scikit-learn; root must not be given (got {root})")
        return _load_digits()
    if root is None:
        raise DataError(
            f"dataset {name} needs root: a directory or s3://bucket/prefix holding {spec.layout.describe()}"
        )
    directory, source = _dataset_directory(
        spec.layout, root, checksums=checksums, verify=verify, cache_dir=cache_dir, endpoint_url=endpoint_url
    )
    layout = spec.layout

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        return read_batches(
            directory, names, layout, checksums=checksums, verify=verify, num_classes=spec.num_classes,
            label_offset=spec.label_offset, drop_other_labels=spec.label_offset > 0,
        )  # fmt: skip

    train_x, train_y = read(layout.train)
    test_x, test_y = read(layout.test)
    split_info: dict[str, Any] = {}

    def carve(labels: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], str]:
        if split_file is None:
            return _split_indices(labels, spec, None, split_seed)
        from ahps_core.data.splits import read_split

        assert spec.split_keys is not None
        split = read_split(split_file, name, spec.split_keys, size=len(labels), checksums=checksums, verify=verify,
                           cache_dir=cache_dir, endpoint_url=endpoint_url)
        split_info.update(split_md5=split.md5, split_nb201=split.nb201, split_verified=split.verified)
        return split.indices, f"file: {os.fspath(split_file)}"

    if spec.split_keys is None:
        parts = {"train": _part(train_x, train_y), "test": _part(test_x, test_y)}
        split_note = "none: the dataset's own train/test parts"
    elif name == "cifar10-valid":  # NB201 carves train/valid out of the CIFAR-10 training set
        (first, second), split_note = carve(train_y)
        split_info["part_indices"] = {"train": indices_hash(first), "valid": indices_hash(second)}
        parts = {
            "train": _part(train_x[first], train_y[first]),
            "valid": _part(train_x[second], train_y[second]),
            "test": _part(test_x, test_y),
        }
    else:  # cifar100, ImageNet16-120: valid/test carved out of the test (validation) set
        (first, second), split_note = carve(test_y)
        split_info["part_indices"] = {"valid": indices_hash(first), "test": indices_hash(second)}
        parts = {
            "train": _part(train_x, train_y),
            "valid": _part(test_x[first], test_y[first]),
            "test": _part(test_x[second], test_y[second]),
            "ori-test": _part(test_x, test_y),
        }
    assert spec.mean is not None and spec.std is not None
    metadata = {
        "source": source,
        "directory": str(directory),
        "verified": verify,
        "files": {n: expected_md5(n, checksums, verify) for n in layout.members},
        "split": split_note,
        **split_info,
        "sizes": {key: len(value) for key, value in parts.items()},
        "normalization": "NB201 get_datasets",
    }
    return DatasetSplit(
        name, parts, spec.eval_part, spec.num_classes, spec.image_size, spec.channels,
        mean=spec.mean, std=spec.std, pad=spec.pad, flip=spec.flip, metadata=metadata,
    )  # fmt: skip


def _part(images: np.ndarray, labels: np.ndarray) -> Part:
    return Part(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels)))


def _dataset_directory(
    layout: FileLayout,
    root: str | os.PathLike[str],
    *,
    checksums: Mapping[str, str] | None,
    verify: bool,
    cache_dir: str | os.PathLike[str] | None,
    endpoint_url: str | None,
) -> tuple[Path, str]:
    """The local directory holding ``layout``'s batch files (mirroring S3 first), and the source description."""
    source = os.fspath(root)
    if source.startswith("s3://"):
        from ahps_core.data import s3

        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        local = s3.mirror(source, layout, cache, checksums=checksums, verify=verify, endpoint_url=endpoint_url)
        return locate(local, layout, checksums=checksums, verify=verify, extract_dir=local), source
    local_root = Path(source).expanduser()
    extract_dir = Path(cache_dir) if cache_dir is not None else local_root
    return locate(local_root, layout, checksums=checksums, verify=verify, extract_dir=extract_dir), source


def indices_hash(indices: np.ndarray | list[int]) -> str:
    """A short hash of a part's indices (``metadata["part_indices"]``): which images a part holds."""
    from ahps_core.jsonio import stable_hash

    return stable_hash([int(i) for i in np.asarray(indices).tolist()])



def _split_indices(
    labels: np.ndarray, spec: DatasetSpec, split_file: str | os.PathLike[str] | None, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """The two index arrays of an NB201 split (from ``split_file``, unverified, or seeded) and a note saying
    which."""
    assert spec.split_keys is not None
    if split_file is not None:
        return read_split_file(split_file, spec.split_keys, len(labels)), f"file: {os.fspath(split_file)}"
    note = (
        f"seeded: stratified halving with split_seed={seed} (NB201 split file not given; "
        "this is not NB201's exact split)"
    )
    return stratified_halves(labels, seed), note


def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into two sorted index arrays of sizes ``ceil(n/2)`` and ``floor(n/2)``.

    Shuffle with ``default_rng(seed)``, stable-sort by label, then alternate: each class is halved (the two
    halves differ by at most one image), and the result depends only on ``(labels, seed)``.
    """
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    ordered = shuffled[np.argsort(labels[shuffled], kind="stable")]
    return np.sort(ordered[0::2]), np.sort(ordered[1::2])


def read_split_file(path: str | os.PathLike[str], keys: tuple[str, str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an NB201 split index file (``{"key": ["int", ["0", "5", ...]]}``) and return the ``keys`` arrays,
    unverified (:func:`ahps_core.data.splits.read_split` verifies it too).

    The indices must lie in ``0..size-1`` and the two sets must be disjoint; otherwise :class:`DataError`.
    """
    from ahps_core.data.splits import parse_split

    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    return parse_split(content, os.fspath(path), keys, size)


def _load_digits() -> DatasetSplit:
    """scikit-learn's digits as uint8 ``[N, 1, 8, 8]`` with the fixed 1437/360 split (module docstring), read by
    :mod:`ahps_core.data.digits` without importing scikit-learn."""
    from ahps_core.data.digits import digits_arrays, digits_split

    pixels, labels = digits_arrays()
    images = np.rint(pixels * (255 / 16)).astype(np.uint8)[:, None]
    train, test = digits_split(labels, test_size=360, seed=0)
    scaled = images[train].astype(np.float64) / 255
    mean, std = (float(scaled.mean()),), (float(scaled.std()),)
    parts = {"train": _part(images[train], labels[train]), "test": _part(images[test], labels[test])}
    metadata = {
        "source": "sklearn.datasets.load_digits",
        "split": "fixed: train_test_split(test_size=360, stratify=labels, random_state=0)",
        "sizes": {key: len(value) for key, value in parts.items()},
        "normalization": "mean/std of the training part",
    }
    return DatasetSplit("digits", parts, "test", 10, 8, 1, mean, std, 0, False, metadata)

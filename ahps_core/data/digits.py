"""scikit-learn's digits, read without importing scikit-learn (importing it costs ~1-2 s per process, and a
pipeline step pays that in every training task).

:func:`digits_arrays` reads the ``digits.csv.gz`` file that ships inside the installed scikit-learn package
(located with :func:`importlib.util.find_spec`, which does not execute the package) exactly as
``sklearn.datasets.load_digits`` does: 1797 rows of 64 pixel values 0..16 and the label.

:func:`digits_split` is ``train_test_split(arange(n), test_size=360, stratify=labels, random_state=0)``,
returned as sorted index arrays: the index sets of scikit-learn's ``StratifiedShuffleSplit`` (its
``_approximate_mode`` per-class counts, then one ``RandomState(0).permutation`` per class), written out here
with the same calls on the same ``RandomState``. ``tests/test_data_digits.py`` checks both against scikit-learn
itself.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ahps_core.errors import DataError

DIGITS_CSV = ("datasets", "data", "digits.csv.gz")


def digits_csv() -> Path:
    """The ``digits.csv.gz`` of the installed scikit-learn package (scikit-learn is not imported)."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in locations:
        path = Path(root).joinpath(*DIGITS_CSV)
        if path.is_file():
            return path
    raise DataError("dataset digits needs scikit-learn's packaged digits.csv.gz: install scikit-learn "
                    "(pip install scikit-learn)")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float64 ``[1797, 8, 8]`` pixel values 0..16 and int64 ``[1797]`` labels, the
    ``images``/``target`` of ``sklearn.datasets.load_digits()``."""
    path = digits_csv()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = np.loadtxt(fh, delimiter=",")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read scikit-learn's digits file {path}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 65:
        raise DataError(f"scikit-learn's digits file {path} has shape {data.shape}; expected [N, 65]")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``_approximate_mode``: per-class draws close to the mode of the multivariate
    hypergeometric, ties broken with ``rng.choice``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def digits_split(labels: np.ndarray, test_size: int = 360, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, test)`` indices of ``train_test_split(arange(n), test_size=test_size, stratify=labels,
    random_state=seed)`` (module docstring)."""
    n_test = int(test_size)
    n_train = len(labels) - n_test
    _, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = approximate_mode(class_counts, n_train, rng)
    t_i = approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(class_counts)):
        permuted = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(permuted[: n_i[i]])
        test.extend(permuted[n_i[i]: n_i[i] + t_i[i]])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(test, dtype=np.int64))


__all__ = ["DIGITS_CSV", "approximate_mode", "digits_arrays", "digits_csv", "digits_split"]

"""Datasets defined outside ahps, for the bring-your-own-data tests: ``module:function`` references and the
generator of ``.npz`` files (vectors and images, uint8 and float, both image layouts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = 3


def blobs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 vectors of dimension ``d`` around one centre per class (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, size=(CLASSES, d))
    y = rng.integers(0, CLASSES, size=n)
    return (centres[y] + rng.normal(0, 1, size=(n, d))).astype(np.float32), y.astype(np.int64)


def images(n: int, seed: int, *, layout: str = "NHWC", side: int = 8,
           channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images whose brightness pattern depends on the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, size=n)
    base = np.zeros((n, side, side, channels))
    for c in range(CLASSES):
        base[y == c, :, c * side // CLASSES:(c + 1) * side // CLASSES, :] = 180
    x = np.clip(base + rng.normal(0, 30, size=base.shape), 0, 255).astype(np.uint8)
    return (x if layout == "NHWC" else x.transpose(0, 3, 1, 2).copy()), y.astype(np.int64)


def vector_arrays() -> dict[str, np.ndarray]:
    x_train, y_train = blobs(192, 12, 1)
    x_test, y_test = blobs(48, 12, 2)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def image_arrays(layout: str = "NHWC", dtype: str = "uint8") -> dict[str, np.ndarray]:
    x_train, y_train = images(160, 1, layout=layout)
    x_valid, y_valid = images(32, 2, layout=layout)
    x_test, y_test = images(32, 3, layout=layout)
    out = {"x_train": x_train, "y_train": y_train, "x_valid": x_valid, "y_valid": y_valid, "x_test": x_test,
           "y_test": y_test}
    if dtype != "uint8":
        for k in ("x_train", "x_valid", "x_test"):
            out[k] = out[k].astype(dtype) / 255
    return out


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


# --- module:function datasets -----------------------------------------------------------------------------------


def vectors() -> dict[str, np.ndarray]:
    """``tests.user_data:vectors``: the vector dataset as a function."""
    return vector_arrays()


def not_a_mapping() -> list[int]:
    return [1, 2, 3]


def broken() -> dict[str, np.ndarray]:
    raise RuntimeError("the data server is down")

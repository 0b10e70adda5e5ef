"""Bring your own data: ``npz:PATH`` (``npz:s3://bucket/key.npz`` too) and ``module:function`` datasets.

Both give the same arrays (``numpy.load`` of the ``.npz``, without pickles; or the mapping ``function()``
returns):

* ``x_train``, ``y_train``, ``x_test``, ``y_test``; optional ``x_valid``, ``y_valid`` (then the ``valid`` part
  is the one evaluated, as for NB201's splits); optional ``layout`` (``"NHWC"`` or ``"NCHW"``) for images whose
  layout cannot be told from their shape;
* ``x``: vectors ``[N, D]`` (the ``mlp`` family, or your own ``--model``), or images ``[N, H, W, C]`` /
  ``[N, C, H, W]`` with C <= 4 (told apart by which axis is the small one), ``uint8`` (0..255) or floating
  point, with the same per-sample shape in every part, and finite;
* ``y``: integer class labels ``[N]`` (integers stored as floats are accepted), >= 0; the number of classes is
  the largest label + 1.

Inputs are normalized per channel (per feature for vectors) with the mean and standard deviation of the training
part, like ``digits`` (``uint8`` images in [0, 1] units first; a constant channel gets std 1); there is no
augmentation. Every problem is a one-line :class:`~ahps_core.errors.DataError` naming the array and what is
accepted. An S3 object is mirrored once into the cache directory, keyed by its ETag (verified as its md5 when
the ETag is one).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ahps_core.errors import ConfigError, DataError

NPZ_PREFIX = "npz:"
REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_valid", "y_valid")
LAYOUTS = ("NHWC", "NCHW")
ACCEPTED = "x_train, y_train, x_test, y_test (optional x_valid, y_valid, layout)"
WHAT = "dataset reference"


def is_custom(name: str) -> bool:
    """Whether dataset ``name`` is a user dataset: ``npz:PATH`` or ``module:function``."""
    from ahps_core.refs import is_ref

    return isinstance(name, str) and (name.startswith(NPZ_PREFIX) or is_ref(name))


def load_custom(
    name: str, root: str | os.PathLike[str] | None = None, *, cache_dir: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """The :class:`~ahps_core.data.DatasetSplit` of user dataset ``name`` (module docstring)."""
    if root is not None:
        raise ConfigError(f"dataset {name} names its own data: --data-root / data_source must not be given "
                          f"(got {os.fspath(root)!r})")
    if name.startswith(NPZ_PREFIX):
        where = name[len(NPZ_PREFIX):].strip()
        if not where:
            raise ConfigError(f"dataset {name!r}: give the file, e.g. npz:data.npz or npz:s3://bucket/data.npz")
        path = _mirror(where, cache_dir, endpoint_url) if where.startswith("s3://") else Path(where).expanduser()
        return split_from_arrays(name, read_npz(path, name), source=where)
    from ahps_core.refs import call_ref, load_ref

    arrays = call_ref(load_ref(name, WHAT), name, WHAT)
    if not isinstance(arrays, Mapping) and not hasattr(arrays, "files"):
        raise DataError(f"dataset {name}: the function returned a {type(arrays).__name__}; expected a mapping of "
                        f"arrays {ACCEPTED}")
    return split_from_arrays(name, {k: arrays[k] for k in arrays}, source=name)


def read_npz(path: Path, name: str) -> dict[str, Any]:
    """Every array of the ``.npz`` at ``path`` (no pickles)."""
    if not path.is_file():
        raise DataError(f"dataset {name}: file {path} not found")
    if not zipfile.is_zipfile(path):
        raise DataError(f"dataset {name}: cannot read {path}: not an .npz file (numpy.savez writes one)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"dataset {name}: {path} holds object arrays (pickles), which are not loaded; store "
                            "numeric arrays") from exc
        raise DataError(f"dataset {name}: cannot read {path} as .npz: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"dataset {name}: cannot read {path} as .npz: {exc}") from exc


def _mirror(uri: str, cache_dir: str | os.PathLike[str] | None, endpoint_url: str | None) -> Path:
    from ahps_core.data import s3
    from ahps_core.data.datasets import default_cache_dir

    bucket, key = s3.parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ConfigError(f"dataset npz:{uri}: expected an object, e.g. npz:s3://bucket/data.npz")
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3.make_client(endpoint_url)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise s3.as_data_error(exc, uri) from exc
    etag = str(head.get("ETag", "")).strip('"')
    md5 = etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None
    tag = re.sub(r"[^0-9A-Za-z-]", "", etag)[:40] or "noetag"
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = base / "npz" / bucket / f"{Path(key).name}.{tag}"
    s3.fetch_object(client, bucket, key, dest, md5)
    return dest


# --- checks and conversion -----------------------------------------------------------------------------------


def _check_keys(name: str, arrays: Mapping[str, Any]) -> None:
    keys = set(arrays)
    missing = [k for k in REQUIRED if k not in keys]
    unknown = sorted(keys - set(REQUIRED) - set(OPTIONAL) - {"layout"})
    if missing or unknown:
        what = []
        if missing:
            what.append(f"missing {', '.join(missing)}")
        if unknown:
            what.append(f"unexpected {', '.join(unknown)}")
        raise DataError(f"dataset {name}: {'; '.join(what)}; accepted arrays: {ACCEPTED} (found: "
                        f"{', '.join(sorted(keys)) or 'none'})")
    if ("x_valid" in keys) != ("y_valid" in keys):
        raise DataError(f"dataset {name}: give both x_valid and y_valid, or neither")


def _layout(name: str, arrays: Mapping[str, Any]) -> str | None:
    if "layout" not in arrays:
        return None
    value = np.asarray(arrays["layout"])
    text = str(value.item()) if value.shape == () else ""
    if text.upper() not in LAYOUTS:
        raise DataError(f"dataset {name}: layout {text or value!r} must be NHWC or NCHW")
    return text.upper()


def _as_x(name: str, key: str, value: Any, layout: str | None) -> tuple[np.ndarray, str]:
    """``x`` as ``[N, C, H, W]`` (vectors: ``[N, D, 1, 1]``) of uint8 or float32, and its kind."""
    x = np.asarray(value)
    if x.dtype == np.bool_ or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"dataset {name}: {key} has dtype {x.dtype}; accepted are uint8 (images 0..255) and "
                        "floating point (cast with .astype(numpy.float32))")
    if x.ndim not in (2, 4):
        raise DataError(f"dataset {name}: {key} has shape {x.shape}; expected vectors [N, D] or images "
                        "[N, H, W, C] / [N, C, H, W]")
    if x.shape[0] == 0 or 0 in x.shape:
        raise DataError(f"dataset {name}: {key} has shape {x.shape}: no data")
    if np.issubdtype(x.dtype, np.floating):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(f"dataset {name}: {key} holds {bad} NaN/inf value(s); every input must be finite")
        x = x.astype(np.float32, copy=False)
    if x.ndim == 2:
        return np.ascontiguousarray(x[:, :, None, None]), "vectors"
    if layout is None:
        first, last = x.shape[1] <= 4, x.shape[3] <= 4
        if first == last:
            raise DataError(f"dataset {name}: {key} of shape {x.shape}: cannot tell channels from height/width; "
                            "add an array layout='NHWC' or 'NCHW' to the data")
        layout = "NCHW" if first else "NHWC"
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), "images"


def _as_y(name: str, key: str, value: Any, n: int) -> np.ndarray:
    y = np.asarray(value)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"dataset {name}: {key} has shape {y.shape}; expected integer labels of shape ({n},) to "
                        f"match x_{key[2:]}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)):
            raise DataError(f"dataset {name}: {key} holds NaN/inf; labels must be integers >= 0")
        if not np.all(y == np.round(y)):
            raise DataError(f"dataset {name}: {key} holds non-integer values; labels must be class indices 0..K-1")
    elif y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"dataset {name}: {key} has dtype {y.dtype}; labels must be integers 0..K-1")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"dataset {name}: {key} holds label {int(y.min())}; labels must be class indices >= 0")
    return y


def split_from_arrays(name: str, arrays: Mapping[str, Any], *, source: str = "") -> Any:
    """The :class:`~ahps_core.data.DatasetSplit` of checked ``arrays`` (module docstring)."""
    from ahps_core.data.datasets import DatasetSplit, Part

    _check_keys(name, arrays)
    layout = _layout(name, arrays)
    parts_np: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    kinds, shapes = set(), {}
    for part in ("train", "valid", "test"):
        if f"x_{part}" not in arrays:
            continue
        x, kind = _as_x(name, f"x_{part}", arrays[f"x_{part}"], layout)
        parts_np[part] = (x, _as_y(name, f"y_{part}", arrays[f"y_{part}"], x.shape[0]))
        kinds.add((kind, x.dtype.name))
        shapes[part] = x.shape[1:]
    if len(kinds) > 1 or len(set(shapes.values())) > 1:
        raise DataError(f"dataset {name}: the parts differ in kind, dtype or per-sample shape ("
                        + ", ".join(f"x_{p} {tuple(s)}" for p, s in shapes.items()) + "); they must match")
    (kind, dtype), = kinds
    num_classes = int(max(int(y.max()) for _, y in parts_np.values())) + 1
    train_x = parts_np["train"][0]
    scaled = train_x.astype(np.float64) / (255.0 if dtype == "uint8" else 1.0)
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
    std = np.where(std > 1e-12, std, 1.0)
    parts = {p: Part(torch.from_numpy(x), torch.from_numpy(y)) for p, (x, y) in parts_np.items()}
    c, h, w = (int(d) for d in train_x.shape[1:])
    metadata = {
        "source": source or name, "kind": kind, "dtype": dtype, "input_shape": [c, h, w] if kind == "images" else [c],
        "split": "given: the arrays' own parts", "sizes": {p: len(v) for p, v in parts.items()},
        "normalization": "per-channel mean/std of the training part", "num_classes": num_classes,
    }
    return DatasetSplit(name, parts, "valid" if "valid" in parts else "test", num_classes, h, c,
                        tuple(float(v) for v in mean), tuple(float(v) for v in std), 0, False, metadata)


def check_data_family(data: Any, family: str) -> None:
    """Vectors only fit the ``mlp`` family: a :class:`ConfigError` for ``cnn``/``nb201`` on vector data."""
    meta = getattr(data, "metadata", None) or {}
    if meta.get("kind") == "vectors" and family in ("cnn", "nb201"):
        raise ConfigError(f"dataset {data.name} holds vectors [N, {data.channels}]: the {family} family needs images "
                          "[N, H, W, C]; use --family mlp or your own --model")


__all__ = ["ACCEPTED", "LAYOUTS", "NPZ_PREFIX", "OPTIONAL", "REQUIRED", "check_data_family", "is_custom",
           "load_custom", "read_npz", "split_from_arrays"]

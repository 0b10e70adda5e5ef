"""Reading benchmark files without running their code.

* NAS-Bench-201 ``.pth`` files: :func:`load_nb201_pth` calls ``torch.load(..., weights_only=True)`` itself, with the
  argument passed explicitly (the official ``NASBench201API(path)`` calls ``torch.load`` without it, so
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment would let a malicious file run code); numpy's scalar
  reconstruction is admitted on top, as records may hold numpy floats. The records are then handed to the official
  API as data (:class:`Shared`).
* NATS-Bench ``.pickle.pbz2`` files: :func:`load_pbz2` unpickles with an allow-list (``collections.OrderedDict``,
  numpy scalars and dtypes; checked with ``pickletools`` against the real files); the official ``pickle_load``
  runs an unrestricted ``pickle.load``.

Any failure to decode an untrusted file is a :class:`~ahps_core.errors.BenchmarkError` naming it.
"""

from __future__ import annotations

import bz2
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ahps_core.errors import BenchmarkError

# numpy's scalar reconstructor (numpy 2 moved it from numpy.core to numpy._core; old files name numpy.core).
_NP_SCALAR = np.float64(0).__reduce__()[0]
NB201_KEYS = ("meta_archs", "arch2infos", "evaluated_indexes")


class Shared(dict):
    """A dict the official API may "deep-copy" for free: it is ours, freshly loaded, and nobody else holds it (the
    API deep-copies a dict it is given, which would double the memory of a multi-GB file)."""

    def __deepcopy__(self, memo: dict) -> Shared:
        return self


def load_nb201_pth(path: Path, accepted: str) -> dict[str, Any]:
    """The benchmark dict of a NAS-Bench-201 ``.pth`` file, loaded with ``weights_only=True`` (module docstring);
    ``accepted`` (the accepted formats) completes the error message of an unreadable file."""
    import torch

    allowed: list[Any] = [_NP_SCALAR, (_NP_SCALAR, "numpy.core.multiarray.scalar"), np.dtype,
                          type(np.dtype(np.float64))]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for unreadable, foreign or code-carrying files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise BenchmarkError(f"cannot load NAS-Bench-201 file {str(path)!r}: {first}; accepted are "
                             f"{accepted}") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"{str(path)!r} holds a {type(data).__name__}, not a NAS-Bench-201 benchmark dict")
    missing = [k for k in NB201_KEYS if k not in data]
    if missing:
        raise BenchmarkError(f"{str(path)!r} is not a NAS-Bench-201 file: it lacks {missing}")
    return data


_NATS_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "dtype"): np.dtype,
}


class _NatsUnpickler(pickle.Unpickler):
    """Resolves only :data:`_NATS_GLOBALS` (what NATS-Bench files reference, checked with ``pickletools``)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _NATS_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: NATS-Bench files may only reference "
                + ", ".join(f"{m}.{n}" for m, n in _NATS_GLOBALS)
            ) from None


def load_pbz2(path: Path) -> Any:
    """A NATS-Bench ``.pickle.pbz2`` file through the allow-list unpickler (:data:`_NATS_GLOBALS`)."""
    try:
        with bz2.open(path, "rb") as fh:
            return _NatsUnpickler(fh).load()
    except Exception as exc:  # any failure to decode an untrusted file is a benchmark error, not a bug
        raise BenchmarkError(f"cannot read NATS-Bench file {str(path)!r}: {exc}") from None

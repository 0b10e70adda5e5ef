"""Safe unpickling of NATS-Bench ``.pickle.pbz2`` files (:mod:`ahps_core.benchmarks.records` reads them): an
allow-list of the globals those files reference (``collections.OrderedDict``, numpy scalars and dtypes, checked
with ``pickletools``); anything else is refused, so an untrusted file cannot run code."""

from __future__ import annotations

import bz2
import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ahps_core.errors import BenchmarkError

#: numpy's scalar reconstructor (``numpy.core.multiarray.scalar``; ``numpy._core`` in numpy 2)
NP_SCALAR = np.float64(0).__reduce__()[0]

_NATS_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "scalar"): NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): NP_SCALAR,
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
    """The records of the NATS-Bench file ``path``, unpickled with the allow-list (a BenchmarkError otherwise)."""
    try:
        with bz2.open(path, "rb") as fh:
            return _NatsUnpickler(fh).load()
    except Exception as exc:  # any failure to decode an untrusted file is a benchmark error, not a bug
        raise BenchmarkError(f"cannot read NATS-Bench file {str(path)!r}: {exc}") from None


__all__ = ["NP_SCALAR", "load_pbz2"]

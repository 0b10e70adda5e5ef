"""A restricted unpickler for the dataset pickles (CIFAR python batches, NAS-Bench-201's ImageNet16).

``pickle.load`` on an untrusted file runs arbitrary code: every ``GLOBAL``/``STACK_GLOBAL`` opcode imports a
callable that ``REDUCE`` then calls. These formats only ever need numpy's array reconstruction, so
:class:`RestrictedUnpickler` resolves exactly those names and refuses every other one *before* anything is
imported or called. Dicts, lists, ints, strings and bytes are plain pickle opcodes and need no import.

What the real files reference (checked with ``pickletools``):

* CIFAR batches (Python 2 cPickle, protocol 2): ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``; strings are py2 ``str`` (loaded with ``encoding="bytes"``).
* ImageNet16 batches (Python 3, protocol 3): the same three names.
* Re-pickled copies made with numpy >= 2 name ``numpy._core.multiarray._reconstruct`` instead, and Python 3
  protocol <= 2 pickles rebuild ``bytes`` through ``_codecs.encode(text, "latin1")``; both are admitted.
  numpy's protocol-5 path (``numpy._core.numeric._frombuffer``) is not: no real file uses it.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ahps_core.errors import DataError

# The callables numpy's ndarray pickles reference, taken from numpy itself so the same objects are used
# whatever numpy version is installed (numpy 2 moved them from numpy.core to numpy._core).
_RECONSTRUCT: Any = np.empty(0).__reduce__()[0]


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 round trip pickle uses for ``bytes`` (protocol <= 2)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r}): only latin1")
    return codecs.encode(text, "latin1", errors)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`; anything else raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: dataset pickles may only reference {allowed}"
            ) from None


def safe_loads(data: bytes, *, encoding: str, source: str | Path) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`.

    ``encoding`` is how Python 2 ``str`` objects are decoded (``"bytes"`` for CIFAR, ``"latin1"`` for
    ImageNet16, as their reference loaders do). Any failure, including a refused global, becomes a
    :class:`DataError` naming ``source``.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except Exception as exc:  # any failure to decode untrusted bytes is a data error, not a bug
        raise DataError(f"cannot unpickle {source}: {exc}") from exc

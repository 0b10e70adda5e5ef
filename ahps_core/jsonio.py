"""JSON on disk, the one home of the project's JSON conventions.

* :func:`jsonable`: non-finite floats become ``null`` (reports, summaries, MLflow dicts: a missing value);
* :func:`json_safe` / :func:`json_restore`: non-finite floats become ``"inf"``/``"-inf"``/``"nan"`` and back
  (training histories and LR curves, where a diverged loss must survive the round trip);
* :func:`write_json`: atomic (temporary file + rename), so a reader never sees half a file;
* :func:`stable_hash`: a short content hash of JSON-able data (configuration and input identities).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (containers walked; tuples become lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``"inf"``/``"-inf"``/``"nan"`` (strict JSON, reversible by
    :func:`json_restore`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_restore(value: Any) -> Any:
    """Inverse of :func:`json_safe`."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {k: json_restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_restore(v) for v in value]
    return value


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_json(path: str | os.PathLike[str], data: Any, *, encode: Callable[[Any], Any] = jsonable,
               indent: int | None = 1) -> Path:
    """Write ``encode(data)`` to ``path`` atomically (parents created); returns the path. Paths are written as
    strings. A failed write leaves no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(encode(data), indent=indent, default=_default))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def stable_hash(data: Any, length: int = 16) -> str:
    """A short sha256 of ``data`` as sorted-key JSON (non-finite floats as null; unknown types by ``str``)."""
    text = json.dumps(jsonable(data), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]




def read_json(directory: str | os.PathLike[str], name: str | None = None) -> Any:
    """The JSON document at ``directory/name`` (or at ``directory`` when ``name`` is None)."""
    path = Path(directory) if name is None else Path(directory, name)
    return json.loads(path.read_text())


__all__ = ["json_restore", "json_safe", "jsonable", "read_json", "stable_hash", "write_json"]

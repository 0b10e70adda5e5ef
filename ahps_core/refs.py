"""``package.module:attribute`` references to user code (model factories, dataset functions): the one place that
imports them, with one-line errors. Pure Python (imports nothing heavy itself).

``load_ref(ref, what)`` imports ``package.module`` (looked up on ``sys.path``, then in the current directory) and
walks the dotted ``attribute`` path (``module:Class.build``); the result must be callable. ``call_ref`` calls it
and turns any exception raised by the user's code into a :class:`~ahps_core.errors.ConfigError` naming the
reference. ``what`` names the kind of reference in every message ("model reference", "dataset reference").
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ahps_core.errors import AhpsError, ConfigError


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception (its type alone when the message is empty)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def is_ref(text: str) -> bool:
    """Whether ``text`` looks like ``package.module:attribute`` (one colon, no path separators, no scheme)."""
    if not isinstance(text, str) or text.count(":") != 1 or "/" in text or "\\" in text:
        return False
    mod, attr = text.split(":")
    return bool(mod.strip()) and bool(attr.strip())


def split_ref(ref: str, what: str) -> tuple[str, str]:
    """``(module, attribute path)`` of ``ref``; :class:`ConfigError` unless it has the form ``module:attribute``."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ConfigError(f"{what} {ref!r} must look like 'package.module:factory' (one colon)")
    mod_name, attr_path = (part.strip() for part in ref.split(":"))
    if not mod_name or not attr_path:
        raise ConfigError(f"{what} {ref!r} must look like 'package.module:factory' (both parts non-empty)")
    return mod_name, attr_path


def load_ref(ref: str, what: str = "reference") -> Any:
    """The callable ``ref`` names (module docstring)."""
    mod_name, attr_path = split_ref(ref, what)
    obj: Any = import_module(mod_name, ref, what)
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {ref!r}: {mod_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {ref!r}: {attr_path!r} is a {type(obj).__name__}, not callable")
    return obj


def call_ref(fn: Any, ref: str, what: str, *args: Any) -> Any:
    """``fn(*args)``; an exception raised inside becomes a one-line :class:`ConfigError` naming ``ref`` (an
    :class:`~ahps_core.errors.AhpsError` raised by ahps code the user's function called propagates as it is)."""
    _, attr_path = split_ref(ref, what)
    shown = ", ".join(repr(a) for a in args)
    try:
        return fn(*args)
    except AhpsError:
        raise
    except Exception as exc:  # any failure in user code becomes a one-line config error
        raise ConfigError(f"{what} {ref!r}: calling {attr_path}({shown}) failed: {one_line(exc)}") from exc


def import_module(mod_name: str, ref: str, what: str) -> Any:
    """Import ``mod_name`` (from ``sys.path``, then the current directory), with one-line errors."""
    def missing(exc: ModuleNotFoundError) -> bool:  # the module itself (or a parent package) is missing
        return exc.name is not None and (mod_name == exc.name or mod_name.startswith(exc.name + "."))

    try:
        try:
            return importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            cwd = os.getcwd()
            if not missing(exc) or cwd in sys.path:
                raise
            sys.path.insert(0, cwd)
            try:
                return importlib.import_module(mod_name)
            finally:
                sys.path.remove(cwd)
    except ModuleNotFoundError as exc:
        if missing(exc):
            raise ConfigError(f"{what} {ref!r}: module {mod_name!r} not found") from exc
        raise ConfigError(f"{what} {ref!r}: importing {mod_name!r} failed: {one_line(exc)}") from exc
    except Exception as exc:  # errors raised by the user's module at import time
        raise ConfigError(f"{what} {ref!r}: importing {mod_name!r} failed: {one_line(exc)}") from exc


__all__ = ["call_ref", "import_module", "is_ref", "load_ref", "one_line", "split_ref"]

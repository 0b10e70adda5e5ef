"""Value checks with the project's error messages: every check names the bad value and what is accepted, and
raises :class:`~ahps_core.errors.ConfigError` (one line at the CLI, exit 2). Pure Python, no dependencies."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ahps_core.errors import ConfigError


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when it is a finite number, else None."""
    if not is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def finite_items(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are finite numbers, as floats (None, strings, bools, inf and NaN left out)."""
    out = {}
    for key, value in values.items():
        number = finite_or_none(value)
        if number is not None:
            out[key] = number
    return out


#: The largest learning rate accepted: parameters are float32 (bf16 under autocast), and an SGD step with a
#: larger LR cannot even be computed (torch: "value cannot be converted to type float without overflow").
MAX_LR = 1e38


def check_lr(lr: object, what: str = "learning rate") -> float:
    """``lr`` as a float when it is a finite number > 0 and at most :data:`MAX_LR`."""
    if not is_number(lr) or not math.isfinite(lr) or lr <= 0:  # type: ignore[operator, arg-type]
        raise ConfigError(f"{what} {lr!r} must be a finite number > 0")
    if lr > MAX_LR:  # type: ignore[operator]
        raise ConfigError(f"{what} {lr!r} is too large: at most {MAX_LR:g} (the largest float32 step)")
    return float(lr)  # type: ignore[arg-type]


def check_writable_dir(directory: str | os.PathLike[str], what: str = "output directory") -> str:
    """``directory``, created when missing, once a file could be written there (checked before any work is
    done, so nothing computed is lost to an unwritable path)."""
    path = os.fspath(directory)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".ahps-write-test-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except FileExistsError:
        raise ConfigError(f"{what} {path!r} cannot be written: it, or a parent, is a file, not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path!r} cannot be written: {exc.strerror or exc}") from None
    return path


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} {value!r} must be an integer >= {minimum}")
    return value


def as_int(value: Any, name: str = "value") -> int:
    """An integral number, also one that arrived as a float (``2.0`` -> ``2``: kfp carries numbers inside lists
    and dicts as floats)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not number.is_integer():
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    return int(number)


def check_choice(name: str, value: object, accepted: Iterable[str]) -> str:
    """``value`` when it is one of ``accepted``."""
    accepted = tuple(accepted)
    if value not in accepted:
        raise ConfigError(f"unknown {name} {value!r}: accepted are {', '.join(accepted)}")
    return value


def check_choices(name: str, values: Sequence[str], accepted: Iterable[str]) -> list[str]:
    """``values`` without repeats, when not empty and each one of ``accepted``."""
    accepted = tuple(accepted)
    unique = list(dict.fromkeys(values))
    if not unique:
        raise ConfigError(f"no {name} given: accepted are {', '.join(accepted)}")
    for value in unique:
        check_choice(name, value, accepted)
    return unique


__all__ = ["MAX_LR", "as_int", "check_choice", "check_choices", "check_int", "check_lr", "check_writable_dir",
           "finite_items", "finite_or_none", "is_number"]

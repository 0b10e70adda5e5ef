"""Cron expressions for Kubeflow Pipelines recurring runs (robfig/cron: 6 fields, seconds first, or a
descriptor), from what people write (5 fields, 6 fields, ``@daily``, ``@every 6h``)."""

from __future__ import annotations

import re

from ahps_core.errors import ConfigError

#: A Go duration as ``@every`` takes it (robfig/cron uses time.ParseDuration): e.g. ``6h``, ``1h30m``, ``90s``.
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")

_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = (  # (name, low, high, names)
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


def kfp_cron(expr: str) -> str:
    """A cron expression for KFP (robfig/cron, 6 fields with seconds first) from a standard 5-field one (a
    ``0`` second is prepended), a 6-field one (kept) or a descriptor (``@daily``...). ConfigError naming the bad
    field otherwise."""
    text = " ".join((expr or "").split())
    if text.lower() in _CRON_DESCRIPTORS:
        return text.lower()
    if text.lower().startswith("@every"):
        duration = text[len("@every"):].strip()
        if not _GO_DURATION.match(duration):  # robfig/cron runs durations under 1 s every second
            raise ConfigError(f"cron expression {expr!r}: @every needs a duration such as 6h, 1h30m or 90s")
        return f"@every {duration}"
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(f"cron expression {expr!r} has {len(fields)} field(s): expected 5 (minute hour "
                          "day-of-month month day-of-week, e.g. '0 3 * * 0') or 6 (seconds first)")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expr, value, name, low, high, names)
    return " ".join(fields)


def _check_cron_field(expr: str, value: str, name: str, low: int, high: int, names: tuple[str, ...] | None) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"cron expression {expr!r}: {name} field {value!r} {why}")

    if value == "?" and name in ("day of month", "day of week"):
        return
    for part in value.split(","):
        rng, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) < 1):
            raise bad(f"has a bad step {step!r}")
        if rng == "*":
            continue
        ends = rng.split("-")
        if len(ends) > 2 or not all(ends):
            raise bad("is not a number, range (a-b), list (a,b), step (*/n) or *")
        nums = []
        for e in ends:
            if e.isdigit():
                n = int(e)
            elif names and e.upper() in names:
                n = names.index(e.upper()) + low
            else:
                accepted = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
                raise bad(f"is not valid: expected {accepted}")
            if not low <= n <= high:
                raise bad(f"is out of range {low}-{high}")
            nums.append(n)
        if len(nums) == 2 and nums[0] > nums[1]:
            raise bad("has a decreasing range")

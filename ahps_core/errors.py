"""User-facing errors.

Every error a user can cause by bad input is an :class:`AhpsError`: the CLI prints its message on one line
(``error: ...``) and exits with its ``exit_code``, never with a traceback. Library callers can catch the
specific subclasses. Messages name the bad value and what is accepted.

Two guarantees hold for every message, whoever wrote it (a parser's multi-line error included): it is **one
line** (line breaks become spaces), and it carries **no credential**: :func:`redact_secrets` replaces the
password of ``scheme://user:password@host`` and the values of secret-looking query parameters (``token``,
``password``, ``secret``, ``key``, ``signature``, ``credential``, ...) by ``***``.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@?#]*):(?P<pw>[^\s/?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[^\s=&;#]*?(?:pass(?:word|wd)?|secret|token|key|signature|credential|auth|sig)"
    r"[^\s=&;#]*)=)(?P<value>[^\s&;#]+)", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def redact_secrets(text: str) -> str:
    """``text`` with the passwords of ``scheme://user:password@`` URLs and the values of secret-looking query
    parameters replaced by ``***`` (user names and hosts are kept: they say where, not how to log in)."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@" if m["pw"] != "***" else m[0], text)
    return _SECRET_QUERY.sub(lambda m: f"{m['key']}***", text)


def one_line(text: str) -> str:
    """``text`` on one line (every line break, with the spaces around it, becomes one space)."""
    return _LINE_BREAKS.sub(" ", text.strip())


class AhpsError(Exception):
    """Base class of errors caused by user input or the environment (not bugs). ``str()`` of one is a single
    line without credentials (module docstring)."""

    exit_code = 2

    def __str__(self) -> str:
        return redact_secrets(one_line(super().__str__()))


class ArchSpecError(AhpsError, ValueError):
    """An architecture spec that cannot be parsed or is not a valid graph."""


class NoPathError(ArchSpecError):
    """A valid graph without any input->output path carrying signal: no LR can be transferred to it."""


class ConfigError(AhpsError, ValueError):
    """A bad option or parameter value (unknown family, LR <= 0, empty grid, ...)."""


class DataError(AhpsError):
    """A dataset that is missing, unreadable, or does not match its known checksum."""


class ChecksumError(DataError):
    """A file whose checksum differs from the expected one (truncated or tampered)."""


class BenchmarkError(AhpsError):
    """A benchmark record file that is missing, of the wrong format, or lacks the queried entry."""


class TrackingError(AhpsError):
    """The MLflow tracking server cannot be reached or refused a request."""


class TrackingUnavailableError(TrackingError):
    """The MLflow tracking store stopped answering within the time budget (an outage, not a refusal): what could
    not be logged is journaled on disk and replayed later (:mod:`ahps_core.tracking.journal`)."""


class OrchestrationError(AhpsError):
    """The Kubeflow Pipelines host cannot be reached or refused a request."""


class DivergedError(ConfigError):
    """Every learning rate of a search diverged (non-finite loss): the grid is too high for this model. A
    :class:`ConfigError` (the user can fix it by lowering the grid), distinguishable without reading its text."""

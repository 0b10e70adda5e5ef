"""User-facing errors.

Every error a user can cause by bad input is an :class:`AhpsError`: the CLI prints its message on one line
(``error: ...``) and exits with its ``exit_code``, never with a traceback. Library callers can catch the
specific subclasses. Messages name the bad value and what is accepted.
"""

from __future__ import annotations


class AhpsError(Exception):
    """Base class of errors caused by user input or the environment (not bugs)."""

    exit_code = 2


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


class OrchestrationError(AhpsError):
    """The Kubeflow Pipelines host cannot be reached or refused a request."""


class DivergedError(ConfigError):
    """Every learning rate of a search diverged (non-finite loss): the grid is too high for this model. A
    :class:`ConfigError` (the user can fix it by lowering the grid), distinguishable without reading its text."""

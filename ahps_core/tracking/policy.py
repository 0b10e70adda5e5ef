"""How ahps talks to MLflow when things go wrong, and to whom it may send credentials (no mlflow import).

**Time budget.** Every MLflow call gets ``$AHPS_TRACKING_TIMEOUT_S`` seconds in all (default
:data:`DEFAULT_BUDGET_S`): transient failures (connection refused or reset, timeouts, HTTP 5xx, a locked SQLite
database) are retried with exponential backoff (:data:`BACKOFF_S` doubling, at most :data:`MAX_BACKOFF_S`) until
the budget is spent; each attempt's HTTP timeout is what is left of it. MLflow's own retries (7 by default,
minutes per failed call) are turned off (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``) unless the environment sets them.
The up-front check of a tracking server (:func:`ahps_core.tracking.uri.check_tracking_uri`) retries the same way.

**Credential policy.** ``$AHPS_ALLOWED_TRACKING_HOSTS`` (the cluster sets it from the ConfigMap ``ahps-policy``)
is a comma-separated list of ``host:port`` (or ``host``: any port) entries. When it is set and MLflow credentials
are in the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``), ahps refuses to contact any other
tracking host (:func:`check_credential_host`), so a run parameter cannot send the pods' credentials elsewhere.
Set but empty: no host may receive them. Unset (no ConfigMap): no restriction.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from ahps_core.errors import ConfigError, TrackingError

DEFAULT_BUDGET_S = 30.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
BUDGET_ENV = "AHPS_TRACKING_TIMEOUT_S"
ALLOWED_HOSTS_ENV = "AHPS_ALLOWED_TRACKING_HOSTS"
POLICY_CONFIGMAP = "ahps-policy"
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

T = TypeVar("T")


def budget_s() -> float:
    """The time budget of one MLflow call, in seconds (module docstring)."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise ConfigError(f"{BUDGET_ENV} {raw!r} must be a number of seconds > 0 (the time budget of one MLflow "
                          "call, retries included)")
    return value


def quiet_mlflow_retries() -> None:
    """MLflow's own HTTP retries off (ours are budgeted), unless the environment chose otherwise."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def attempt_timeout(deadline: float) -> int:
    """The HTTP timeout (whole seconds, at least 1) of an attempt that must end by ``deadline``."""
    return max(1, int(deadline - time.monotonic()))


def retry(call: Callable[[], T], *, transient: Callable[[BaseException], bool], budget: float | None = None,
          on_attempt: Callable[[float], None] | None = None) -> T:
    """``call()``, retried with backoff while it raises a ``transient`` error and the budget lasts; the last error
    propagates. ``on_attempt(deadline)`` runs before each attempt (e.g. to set the HTTP timeout)."""
    total = budget_s() if budget is None else budget
    deadline = time.monotonic() + total
    pause = BACKOFF_S
    while True:
        if on_attempt is not None:
            on_attempt(deadline)
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + pause >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, MAX_BACKOFF_S)


# --- the credential policy --------------------------------------------------------------------------------------


def allowed_hosts() -> list[tuple[str, int | None]] | None:
    """The ``(host, port or None)`` entries of ``$AHPS_ALLOWED_TRACKING_HOSTS``; None when it is unset."""
    raw = os.environ.get(ALLOWED_HOSTS_ENV)
    if raw is None:
        return None
    out: list[tuple[str, int | None]] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        parsed = urllib.parse.urlsplit(entry if "://" in entry else f"//{entry}")
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if not parsed.hostname or port == -1:
            raise ConfigError(f"{ALLOWED_HOSTS_ENV} entry {entry!r} is not host:port or host (ConfigMap "
                              f"{POLICY_CONFIGMAP})")
        out.append((parsed.hostname.lower(), port))
    return out


def has_credentials() -> bool:
    return any(os.environ.get(name) for name in CREDENTIAL_ENV)


def check_credential_host(uri: str) -> None:
    """Refuse an ``http(s)`` tracking ``uri`` whose host the policy does not allow while MLflow credentials are in
    the environment (module docstring): a :class:`TrackingError` naming the host and the policy."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme.lower() not in ("http", "https") or not has_credentials():
        return
    hosts = allowed_hosts()
    if hosts is None:
        return
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    except ValueError:
        port = 0
    if any(host == h and (p is None or p == port) for h, p in hosts):
        return
    listed = ", ".join(f"{h}:{p}" if p else h for h, p in hosts) or "none"
    raise TrackingError(
        f"refusing to send MLflow credentials to {host}:{port}: it is not an allowed tracking host "
        f"({ALLOWED_HOSTS_ENV} from the ConfigMap {POLICY_CONFIGMAP}: {listed}); use an allowed tracking_uri or ask "
        "the cluster admin to add the host (chart value security.allowedTrackingHosts)"
    )


def describe(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def is_transient(exc: BaseException) -> bool:
    """Whether an MLflow/HTTP/database error may go away by retrying: connection failures and timeouts, HTTP 5xx
    and 429, MLflow's INTERNAL_ERROR / TEMPORARILY_UNAVAILABLE / REQUEST_LIMIT_EXCEEDED, a locked database."""
    if isinstance(exc, (ConfigError, TrackingError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    code = getattr(exc, "error_code", None)
    if code is not None:
        return str(code) in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                             "DEADLINE_EXCEEDED", "ABORTED", "IO_ERROR")
    status: Any = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    module = type(exc).__module__.split(".")[0]
    if module in ("requests", "urllib3"):
        return True
    text = str(exc).lower()
    if module in ("sqlalchemy", "sqlite3"):
        return "locked" in text or "busy" in text or "timeout" in text
    return False


__all__ = ["ALLOWED_HOSTS_ENV", "BUDGET_ENV", "CREDENTIAL_ENV", "DEFAULT_BUDGET_S", "POLICY_CONFIGMAP",
           "allowed_hosts", "attempt_timeout", "budget_s", "check_credential_host", "describe", "has_credentials",
           "is_transient", "quiet_mlflow_retries", "retry"]

"""Where the MLflow tracking store is and whether it can be used: URI resolution, the up-front check
(:func:`check_tracking_uri`: retried with backoff within the tracking time budget of
:mod:`ahps_core.tracking.policy`, no mlflow import), credential redaction for messages, and the local SQLite
store's layout. No mlflow import here."""

from __future__ import annotations

import base64
import shlex
import os
import socket
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ahps_core.errors import ConfigError, TrackingError, redact_secrets
from ahps_core.tracking import policy


def local_store_uri(directory: str | os.PathLike[str] = "mlruns") -> str:
    """``sqlite:///<absolute directory>/mlflow.db`` (the directory is created on first use)."""
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if rest.startswith("////"):
        return Path(rest[3:])
    if rest.startswith("///"):
        return Path(rest[3:]).resolve()
    raise ConfigError(f"unsupported SQLite tracking URI {uri!r}: expected sqlite:///relative/path or sqlite:////abs/path")


def default_artifact_location(uri: str) -> str | None:
    """Artifact location for experiments created in ``uri``: ``<db dir>/artifacts`` for SQLite, else the
    server's default (None)."""
    db = sqlite_path(uri)
    return str(db.parent / "artifacts") if db is not None else None


def ui_command(uri: str) -> str:
    """How to open the MLflow UI on ``uri``: a shell command that works as printed from the current directory
    (the ``mlflow`` of this interpreter's environment, by path when ``mlflow`` on PATH is not that one)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"{mlflow_executable()} ui --backend-store-uri {shlex.quote(uri)}"


def mlflow_executable() -> str:
    """``mlflow`` when PATH finds this environment's, else the path of this environment's ``mlflow`` script
    (relative to the current directory when below it, e.g. ``.venv/bin/mlflow``)."""
    import shutil

    mine = Path(sys.executable).parent / "mlflow"
    if not mine.is_file():
        return "mlflow"
    found = shutil.which("mlflow")
    if found and Path(found).resolve() == mine.resolve():
        return "mlflow"
    try:
        return shlex.quote(str(mine.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(mine))


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, or ``$MLFLOW_TRACKING_URI`` when ``uri`` is empty; a ConfigError when both are empty."""
    uri = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise ConfigError("no MLflow tracking URI: pass tracking_uri (http(s)://host:port or sqlite:///path/mlflow.db) "
                          "or set MLFLOW_TRACKING_URI")
    return uri


def auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    return {}


def check_tracking_uri(uri: str | None, *, timeout: float | None = None) -> str:
    """Check that the tracking store ``uri`` can be used, before any work is done; returns the resolved URI.

    * ``http(s)://``: the host may receive our credentials (:func:`~ahps_core.tracking.policy.check_credential_host`),
      and the server answers (``/health``, else the REST API) and does not refuse our credentials
      (``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, else a ``user:password@`` in the
      URI); a server that is down, busy or restarting is asked again with backoff for ``timeout`` seconds
      (default: the tracking time budget, ``$AHPS_TRACKING_TIMEOUT_S``);
    * ``sqlite:///``: the database's directory exists or can be created and is writable, and an existing file
      is a SQLite database;
    * ``file:`` / plain paths: the directory can be created and written;
    * ``postgresql://``, ``mysql://``: the host accepts TCP connections.

    Raises :class:`TrackingError` (one line, naming the URI and the cause). Does not import mlflow.
    """
    uri = resolve_tracking_uri(uri)
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        policy.check_credential_host(uri)
        _check_http(uri, policy.budget_s() if timeout is None else timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        path = Path(urllib.parse.urlparse(uri).path if scheme == "file" else uri)
        _check_writable_dir(path, uri)
    elif scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql"):
        parsed = urllib.parse.urlparse(uri)
        port = parsed.port or {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}[scheme.split("+")[0]]
        try:
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout or 5.0):
                pass
        except OSError as exc:
            raise TrackingError(f"MLflow backend store {redact(uri)} cannot be reached: {exc}") from None
    elif scheme.startswith("databricks"):
        pass  # credentials come from the Databricks config; mlflow reports problems itself
    else:
        raise TrackingError(
            f"unsupported MLflow tracking URI {redact(uri)!r}: accepted are http(s)://host:port, "
            "sqlite:///path/mlflow.db, a directory, postgresql://..., mysql://..."
        )
    return uri


def redact(uri: str) -> str:
    """``uri`` with the password of a ``user:password@`` part and secret-looking query values replaced by ``***``
    (for messages and logs; :func:`ahps_core.errors.redact_secrets`)."""
    return redact_secrets(uri)


def split_userinfo(uri: str) -> tuple[str, dict[str, str]]:
    """``(uri without user:password@, its Authorization header)``: urllib cannot open a URL with user info, and
    the password must not reach a message."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {raw}"}


class _Refused(Exception):
    """A definite answer (not worth asking again)."""


def _check_http(uri: str, timeout: float) -> None:
    try:
        base, uri_auth = split_userinfo(uri.rstrip("/"))
    except ValueError as exc:
        raise TrackingError(f"MLflow tracking URI {redact(uri)!r} is malformed: {exc}") from None
    headers = auth_headers() or uri_auth
    shown = redact(uri)

    def get(path: str, deadline: float) -> int:
        req = urllib.request.Request(base + path, headers=headers)
        with urllib.request.urlopen(req, timeout=max(1.0, min(10.0, deadline - time.monotonic()))) as resp:
            return resp.status

    def probe() -> None:
        deadline = time.monotonic() + timeout
        try:
            try:
                get("/health", deadline)
                get("/api/2.0/mlflow/experiments/search?max_results=1", deadline)
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                get("/api/2.0/mlflow/experiments/search?max_results=1", deadline)  # no /health: ask the API
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise _Refused(f"MLflow tracking server {shown} refused the request (HTTP {exc.code}): set "
                               "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN") from None
            if exc.code < 500 and exc.code != 429:
                raise _Refused(f"MLflow tracking server {shown} answered HTTP {exc.code} {exc.reason}; is it an "
                               "MLflow tracking server?") from None
            raise

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, _Refused):
            return False
        if isinstance(exc, urllib.error.HTTPError):
            return exc.code >= 500 or exc.code == 429
        reason = getattr(exc, "reason", exc)
        return not isinstance(reason, socket.gaierror) and isinstance(reason, (OSError, TimeoutError))

    started = time.monotonic()
    try:
        policy.retry(probe, transient=transient, budget=timeout)
    except _Refused as exc:
        raise TrackingError(str(exc)) from None
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {shown} answered HTTP {exc.code} {exc.reason} for "
                            f"{time.monotonic() - started:.0f} s; is it overloaded?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        waited = time.monotonic() - started
        after = f" (asked for {waited:.0f} s)" if waited >= 1 else ""
        raise TrackingError(f"MLflow tracking server {shown} cannot be reached: {reason}{after}; start it or pass "
                            "another tracking URI") from None


def _check_writable_dir(path: Path, uri: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"MLflow store {uri}: cannot create directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise TrackingError(f"MLflow store {uri}: directory {path} is not writable")


def _check_sqlite(uri: str) -> None:
    try:
        db = sqlite_path(uri)
    except ConfigError as exc:
        raise TrackingError(str(exc)) from None
    assert db is not None
    if db.exists() and db.is_dir():
        raise TrackingError(f"MLflow store {uri}: {db} is a directory, not a SQLite database file")
    _check_writable_dir(db.parent, uri)
    if db.exists() and db.stat().st_size > 0:
        with open(db, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise TrackingError(f"MLflow store {uri}: {db} is not a SQLite database")
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            con.execute("select count(*) from sqlite_master").fetchone()
            con.close()
        except sqlite3.Error as exc:
            raise TrackingError(f"MLflow store {uri}: cannot read {db}: {exc}") from None



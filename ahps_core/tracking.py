"""The MLflow adapter: the only module of ahps that imports mlflow (lazily, so importing it stays cheap).

Layout of one pipeline run (a *run group*) in one MLflow experiment::

    parent run          tags ahps.run_group=<group>, ahps.kind=parent          params: the pipeline's parameters
      ├─ lr-search      ahps.run_key=<group>/lr-search                         the proxy's LR curve, base LR
      ├─ train runs     ahps.run_key=<group>/<arch>/<recipe>/<seed>            one per architecture x recipe x seed;
      │                 tags recipe, family, arch, dataset, seed, rule,        params LR, base LR, init, epochs,
      │                 convention                                             batch; step metrics per epoch
      └─ compare        ahps.run_key=<group>/compare                           Kendall tau-b, Spearman, deltas, plots

**Idempotency.** Every run is looked up by its key before it is created: the parent by ``ahps.run_group``, the
others by ``ahps.run_key``. A FINISHED run is reused as it is (the caller reads its recorded results instead of
recomputing them); an unfinished one (a preempted pod, a crash) is resumed, i.e. logged into again. So re-running
the same pipeline run never duplicates MLflow runs. Runs are always created with an explicit ``experiment_id``
(:attr:`Tracker.experiment_id`), never through ``mlflow.set_experiment`` + ``start_run`` (which races when
parallel tasks create the same experiment, landing runs in experiment 0).

**Errors.** An unreachable or refusing tracking store is a :class:`~ahps_core.errors.TrackingError` with a
one-line message; :func:`check_tracking_uri` detects it up front without importing mlflow (a few ms).

**Local store.** :func:`local_store_uri` gives ``sqlite:///<abs dir>/mlflow.db``; experiments created in a
SQLite store keep their artifacts in ``<dir>/artifacts`` (:func:`default_artifact_location`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import socket
import sqlite3
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError, TrackingError

DEFAULT_EXPERIMENT = "ahps"
RUN_GROUP_TAG = "ahps.run_group"
RUN_KEY_TAG = "ahps.run_key"
KIND_TAG = "ahps.kind"
CONFIG_HASH_TAG = "ahps.config_hash"
STATUS_TAG = "ahps.status"
PARENT_TAG = "mlflow.parentRunId"
SUMMARY_ARTIFACT = "ahps/summary.json"
#: MLflow run tags of a training run (issue #5): what the UI's compare view groups and filters by.
TRAIN_TAGS = ("recipe", "family", "arch", "dataset", "seed", "rule", "convention")
_MAX_PARAM_LEN = 6000


# --- URIs ---------------------------------------------------------------------------------------------------------


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
    """How to open the MLflow UI on ``uri``."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri``, or ``$MLFLOW_TRACKING_URI`` when ``uri`` is empty; a ConfigError when both are empty."""
    uri = (uri or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise ConfigError("no MLflow tracking URI: pass tracking_uri (http(s)://host:port or sqlite:///path/mlflow.db) "
                          "or set MLFLOW_TRACKING_URI")
    return uri


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}
    return {}


def check_tracking_uri(uri: str | None, *, timeout: float = 5.0) -> str:
    """Check that the tracking store ``uri`` can be used, before any work is done; returns the resolved URI.

    * ``http(s)://``: the server answers (``/health``, else the REST API) within ``timeout`` seconds and does
      not refuse our credentials (``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``);
    * ``sqlite:///``: the database's directory exists or can be created and is writable, and an existing file
      is a SQLite database;
    * ``file:`` / plain paths: the directory can be created and written;
    * ``postgresql://``, ``mysql://``: the host accepts TCP connections.

    Raises :class:`TrackingError` (one line, naming the URI and the cause). Does not import mlflow.
    """
    uri = resolve_tracking_uri(uri)
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        path = Path(urllib.parse.urlparse(uri).path if scheme == "file" else uri)
        _check_writable_dir(path, uri)
    elif scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql"):
        parsed = urllib.parse.urlparse(uri)
        port = parsed.port or {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}[scheme.split("+")[0]]
        try:
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
                pass
        except OSError as exc:
            raise TrackingError(f"MLflow backend store {_redact(uri)} cannot be reached: {exc}") from None
    elif scheme.startswith("databricks"):
        pass  # credentials come from the Databricks config; mlflow reports problems itself
    else:
        raise TrackingError(
            f"unsupported MLflow tracking URI {uri!r}: accepted are http(s)://host:port, sqlite:///path/mlflow.db, "
            "a directory, postgresql://..., mysql://..."
        )
    return uri


def _redact(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


def _check_http(uri: str, timeout: float) -> None:
    base = uri.rstrip("/")
    headers = _auth_headers()

    def get(path: str) -> int:
        req = urllib.request.Request(base + path, headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - user-given tracking server
            return resp.status

    try:
        try:
            get("/health")
            get("/api/2.0/mlflow/experiments/search?max_results=1")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise TrackingError(
                    f"MLflow tracking server {uri} refused the request (HTTP {exc.code}): set "
                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
                ) from None
            if exc.code != 404:
                raise
            get("/api/2.0/mlflow/experiments/search?max_results=1")  # no /health: ask the API itself
    except TrackingError:
        raise
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {uri} answered HTTP {exc.code} {exc.reason}; is it an MLflow "
                            "tracking server?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri} cannot be reached: {reason}; start it or pass another "
                            "tracking URI") from None


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


# --- errors -------------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def _tracking_errors(uri: str, what: str) -> Iterator[None]:
    """Turn mlflow/HTTP/database exceptions into one-line :class:`TrackingError` s."""
    try:
        yield
    except (TrackingError, ConfigError):
        raise
    except Exception as exc:  # MlflowException, requests/urllib3 errors, sqlalchemy errors, OSError
        name = type(exc).__module__.split(".")[0]
        if name in ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3", "botocore", "boto3") or isinstance(
            exc, OSError
        ):
            raise TrackingError(f"MLflow {what} at {_redact(uri)} failed: {_first_line(exc)}") from exc
        raise


# --- the tracker --------------------------------------------------------------------------------------------------


@dataclass
class RunRef:
    """A run found or created by :class:`Tracker`: ``reused`` when it already existed, ``finished`` when it was
    FINISHED (its recorded results can be used as they are)."""

    run_id: str
    status: str
    reused: bool
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"value {value!r} cannot be used as a run key (contains both quote characters)")


def _param_str(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM_LEN]


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are finite numbers (None, strings, inf and NaN are left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """One run group in one MLflow experiment (see the module docstring). Thread- and process-safe: every call
    names its run explicitly (no global active run)."""

    def __init__(self, tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT, run_group: str = "") -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if not experiment:
            raise ConfigError("MLflow experiment name is empty")
        self.experiment = experiment
        self.run_group = run_group
        self._client = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None

    # -- plumbing --------------------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            with _tracking_errors(self.uri, "connection"):
                from mlflow import MlflowClient

                if self.uri.startswith("sqlite:"):
                    db = sqlite_path(self.uri)
                    assert db is not None
                    db.parent.mkdir(parents=True, exist_ok=True)
                self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _errors(self, what: str):
        return _tracking_errors(self.uri, what)

    def key(self, *parts: Any) -> str:
        """The run key ``<group>/<part>/...`` of a run of this group."""
        if not self.run_group:
            raise ConfigError("run group is empty: every pipeline run needs a run-group key")
        return "/".join([self.run_group, *(str(p) for p in parts)])

    @property
    def experiment_id(self) -> str:
        """The experiment's id; the experiment is created when missing (tolerating a concurrent creator)."""
        if self._experiment_id is None:
            with self._errors(f"experiment {self.experiment!r}"):
                from mlflow.exceptions import MlflowException

                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    try:
                        self._experiment_id = self.client.create_experiment(
                            self.experiment, artifact_location=default_artifact_location(self.uri),
                            tags={"ahps": "true"},
                        )
                    except MlflowException as exc:
                        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                            raise
                        exp = self.client.get_experiment_by_name(self.experiment)
                        if exp is None:
                            raise
                if exp is not None:
                    if exp.lifecycle_stage == "deleted":
                        raise TrackingError(
                            f"MLflow experiment {self.experiment!r} is deleted: restore it (mlflow experiments "
                            "restore) or choose another experiment name"
                        )
                    self._experiment_id = exp.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

    def _search(self, filter_string: str, *, max_results: int = 1000) -> list:
        with self._errors("run search"):
            out, token = [], None
            while True:
                page = self.client.search_runs(
                    [self.experiment_id], filter_string=filter_string, max_results=max_results,
                    order_by=["attributes.start_time ASC"], page_token=token,
                )
                out.extend(page)
                token = page.token
                if not token:
                    return out

    @staticmethod
    def _ref(run, reused: bool) -> RunRef:
        return RunRef(run.info.run_id, run.info.status, reused, dict(run.data.tags), dict(run.data.params),
                      dict(run.data.metrics))

    @staticmethod
    def _pick(runs: list):
        """Among runs sharing a key: the first FINISHED one, else the most recent."""
        finished = [r for r in runs if r.info.status == "FINISHED"]
        return finished[0] if finished else runs[-1]

    # -- lookups ---------------------------------------------------------------------------------------------------
    def find(self, run_key: str) -> RunRef | None:
        """The run keyed ``run_key`` (FINISHED preferred), or None."""
        runs = self._search(f"tags.`{RUN_KEY_TAG}` = {_quote(run_key)}")
        return self._ref(self._pick(runs), True) if runs else None

    def find_parent(self) -> RunRef | None:
        runs = self._search(f"tags.`{RUN_GROUP_TAG}` = {_quote(self.run_group)} and tags.`{KIND_TAG}` = 'parent'")
        return self._ref(runs[0], True) if runs else None

    def group_runs(self) -> list[RunRef]:
        """Every run of this group (parent and children)."""
        runs = self._search(f"tags.`{RUN_GROUP_TAG}` = {_quote(self.run_group)}")
        return [self._ref(r, True) for r in runs]

    # -- creation --------------------------------------------------------------------------------------------------
    def ensure_parent(self, *, name: str | None = None, params: Mapping[str, Any] | None = None,
                      tags: Mapping[str, Any] | None = None) -> RunRef:
        """The group's parent run, created when missing (params are logged once; a reused parent whose params
        differ from ``params`` is a ConfigError: the same run-group key cannot mean two different runs)."""
        ref = self.find_parent()
        if ref is None:
            all_tags = {RUN_GROUP_TAG: self.run_group, KIND_TAG: "parent", **{k: str(v) for k, v in (tags or {}).items()}}
            with self._errors("run creation"):
                run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name or f"ahps {self.run_group}")
            ref = self._ref(run, False)
        self._parent_id = ref.run_id
        if params:
            self.log_params(ref.run_id, params, existing=ref.params, what=f"run group {self.run_group!r}")
        if tags:
            self.set_tags(ref.run_id, tags)
        if ref.reused and ref.status != "RUNNING":
            with self._errors("run update"):
                self.client.update_run(ref.run_id, status="RUNNING")
        return ref

    @property
    def parent_id(self) -> str:
        if self._parent_id is None:
            self._parent_id = self.ensure_parent().run_id
        return self._parent_id

    def start_run(self, run_key: str, *, name: str, kind: str, tags: Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None, config_hash: str | None = None) -> RunRef:
        """The child run keyed ``run_key``: reused when it exists (``finished`` tells whether its results are
        final), else created under the parent. ``config_hash`` guards against a key reused for a different
        configuration (ConfigError naming the key)."""
        ref = self.find(run_key)
        if ref is not None:
            old = ref.tags.get(CONFIG_HASH_TAG)
            if config_hash and old and old != config_hash:
                raise ConfigError(
                    f"run group {self.run_group!r} already holds {run_key!r} with another configuration "
                    f"(hash {old}, now {config_hash}); use a new run group"
                )
            if ref.finished:
                return ref
            with self._errors("run update"):
                self.client.update_run(ref.run_id, status="RUNNING")
            ref.status = "RUNNING"
        else:
            all_tags = {
                RUN_GROUP_TAG: self.run_group, RUN_KEY_TAG: run_key, KIND_TAG: kind, PARENT_TAG: self.parent_id,
                **({CONFIG_HASH_TAG: config_hash} if config_hash else {}),
                **{k: str(v) for k, v in (tags or {}).items()},
            }
            with self._errors("run creation"):
                run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
            ref = self._ref(run, False)
        if params:
            self.log_params(ref.run_id, params, existing=ref.params, what=run_key)
        if tags and ref.reused:
            self.set_tags(ref.run_id, tags)
        return ref

    # -- logging ---------------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any], *, existing: Mapping[str, str] | None = None,
                   what: str = "run") -> None:
        from mlflow.entities import Param

        new = {k: _param_str(v) for k, v in params.items() if v is not None}
        existing = dict(existing or {})
        clash = {k: (existing[k], v) for k, v in new.items() if k in existing and existing[k] != v}
        if clash:
            k, (old, now) = sorted(clash.items())[0]
            raise ConfigError(f"{what} was recorded with {k}={old}; this run has {k}={now}: use a new run group")
        todo = [Param(k, v) for k, v in new.items() if k not in existing]
        with self._errors("param logging"):
            for i in range(0, len(todo), 100):
                self.client.log_batch(run_id, params=todo[i:i + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        with self._errors("tag logging"):
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        """Finite numeric entries of ``metrics`` (others are skipped), at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(step or 0)) for k, v in finite_metrics(metrics).items()]
        with self._errors("metric logging"):
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def log_history(self, run_id: str, history: list[Mapping[str, Any]], *, keys: tuple[str, ...] | None = None) -> None:
        """Step metrics of a training history (one record per epoch, ``epoch`` is the step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for rec in history:
            step = int(rec.get("epoch", 0) or 0)
            values = {k: v for k, v in rec.items() if k != "epoch" and (keys is None or k in keys)}
            batch.extend(Metric(k, v, now, step) for k, v in finite_metrics(values).items())
        with self._errors("metric logging"):
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        with self._errors("artifact logging"):
            self.client.log_dict(run_id, data, artifact_file)

    def log_file(self, run_id: str, path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        with self._errors("artifact logging"):
            self.client.log_artifact(run_id, str(path), artifact_dir)

    def log_dir(self, run_id: str, path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        with self._errors("artifact logging"):
            self.client.log_artifacts(run_id, str(path), artifact_dir)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        with self._errors("artifact logging"):
            self.client.log_figure(run_id, figure, artifact_file)

    def load_dict(self, run_id: str, artifact_file: str) -> dict | None:
        """A JSON artifact of ``run_id`` (None when it is missing)."""
        with self._errors("artifact download"), tempfile.TemporaryDirectory() as tmp:
            from mlflow.exceptions import MlflowException

            try:
                local = self.client.download_artifacts(run_id, artifact_file, tmp)
            except (MlflowException, OSError):
                return None
            try:
                return json.loads(Path(local).read_text())
            except (OSError, ValueError):
                return None

    def save_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """The run's machine-readable result (read back by :meth:`load_summary` when the run is reused)."""
        self.log_dict(run_id, dict(summary), SUMMARY_ARTIFACT)

    def load_summary(self, run_id: str) -> dict | None:
        return self.load_dict(run_id, SUMMARY_ARTIFACT)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        with self._errors("run update"):
            self.client.set_terminated(run_id, status)


# --- queries for reports and tests ------------------------------------------------------------------------------


def group_overview(tracking_uri: str, experiment: str, run_group: str) -> dict[str, Any]:
    """Counts of the group's runs by kind and status, and the parent run's id/URL fragment."""
    tracker = Tracker(tracking_uri, experiment, run_group)
    runs = tracker.group_runs()
    kinds: dict[str, int] = {}
    for r in runs:
        kinds[r.tags.get(KIND_TAG, "?")] = kinds.get(r.tags.get(KIND_TAG, "?"), 0) + 1
    parent = next((r for r in runs if r.tags.get(KIND_TAG) == "parent"), None)
    return {
        "experiment_id": tracker.experiment_id,
        "parent_run_id": parent.run_id if parent else None,
        "runs": len(runs),
        "by_kind": kinds,
    }

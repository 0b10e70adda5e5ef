"""The logging half of :class:`~ahps_core.tracking.client.Tracker`: every operation that writes to a run (params,
metrics, tags, artifacts, status) and the JSON artifacts read back. Each operation is sent at once, within the
tracking time budget; while MLflow is unavailable (or for a run created offline) it is appended to the tracking
journal instead (:mod:`ahps_core.tracking.journal`), in the same form :meth:`RunLogging.apply` sends it, so a
replay does exactly what the live call would have done."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ahps_core.checks import finite_items
from ahps_core.errors import AhpsError, ConfigError, TrackingError, TrackingUnavailableError
from ahps_core.tracking import policy
from ahps_core.tracking.journal import is_placeholder

if TYPE_CHECKING:
    from ahps_core.tracking.journal import Journal

SUMMARY_ARTIFACT = "ahps/summary.json"
_MAX_PARAM_LEN = 6000
T = TypeVar("T")


def param_str(value: Any) -> str:
    """A param value as MLflow stores it: strings as they are, anything else as sorted-key JSON (truncated)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:_MAX_PARAM_LEN]


class RunLogging:
    """Writing to runs (module docstring); mixed into :class:`~ahps_core.tracking.client.Tracker`, which provides
    the client, the budgeted :meth:`call`, the journal and the run lookup."""

    journaling: bool
    offline: str | None

    if TYPE_CHECKING:
        @property
        def client(self) -> Any: ...

        @property
        def journal(self) -> Journal: ...

        def call(self, what: str, fn: Callable[[], T]) -> T: ...

        def get(self, run_id: str) -> Any: ...

    def apply(self, run_id: str, op: Mapping[str, Any]) -> None:
        """Send one operation in the journal's form (:mod:`ahps_core.tracking.journal`) to ``run_id`` now."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "params":
            params = [Param(k, v) for k, v in op["params"].items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(run_id, params=params[i:i + 100])
        elif kind == "metrics":
            metrics = [Metric(k, v, int(ts), int(step)) for k, v, ts, step in op["metrics"]]
            for i in range(0, len(metrics), 500):
                self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        elif kind == "tags":
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in op["tags"].items()])
        elif kind == "dict":
            self.client.log_dict(run_id, op["data"], op["file"])
        elif kind == "table":  # an MLflow table artifact (the UI's artifact view shows it as a table)
            self.client.log_table(run_id, data=op["data"], artifact_file=op["file"])
        elif kind == "file":
            self.client.log_artifact(run_id, str(op["path"]), op.get("dir"))
        elif kind == "status":
            if op["status"] == "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            else:
                self.client.set_terminated(run_id, op["status"])
        else:
            raise TrackingError(f"unknown tracking journal operation {kind!r}")

    def _send(self, run_id: str, op: dict[str, Any], what: str) -> None:
        if not self.journaling:
            self.call(what, lambda: self.apply(run_id, op))
            return
        if not is_placeholder(run_id) and not self.offline:
            try:
                self.call(what, lambda: self.apply(run_id, op))
                return
            except TrackingUnavailableError:
                pass
        if op["op"] == "file":
            op = {**op, "path": self.journal.keep_file(op["path"])}
        self.journal.append({**op, "run": run_id})

    def log_params(self, run_id: str, params: Mapping[str, Any], *, existing: Mapping[str, str] | None = None,
                   what: str = "run") -> None:
        new = {k: param_str(v) for k, v in params.items() if v is not None}
        for attempt in range(2):
            existing = dict(existing or {})
            clash = {k: (existing[k], v) for k, v in new.items() if k in existing and existing[k] != v}
            if clash:
                k, (old, now) = sorted(clash.items())[0]
                raise ConfigError(f"{what} was recorded with {k}={old}; this run has {k}={now}: use a new run group")
            todo = {k: v for k, v in new.items() if k not in existing}
            if not todo:
                return
            try:
                self._send(run_id, {"op": "params", "params": todo}, "param logging")
                return
            except TrackingUnavailableError:
                raise
            except TrackingError:
                if attempt or is_placeholder(run_id):
                    raise
                existing = self.get(run_id).params  # a concurrent process logged some of them first

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._send(run_id, {"op": "tags", "tags": {k: str(v) for k, v in tags.items()}}, "tag logging")

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        """Finite numeric entries of ``metrics`` (others are skipped), at ``step``."""
        now = int(time.time() * 1000)
        batch = [[k, v, now, int(step or 0)] for k, v in finite_items(metrics).items()]
        if batch:
            self._send(run_id, {"op": "metrics", "metrics": batch}, "metric logging")

    def log_history(self, run_id: str, history: list[Mapping[str, Any]], *,
                    keys: tuple[str, ...] | None = None) -> None:
        """Step metrics of a training history (one record per epoch, ``epoch`` is the step)."""
        now = int(time.time() * 1000)
        batch: list[list[Any]] = []
        for rec in history:
            step = int(rec.get("epoch", 0) or 0)
            values = {k: v for k, v in rec.items() if k != "epoch" and (keys is None or k in keys)}
            batch.extend([k, v, now, step] for k, v in finite_items(values).items())
        if batch:
            self._send(run_id, {"op": "metrics", "metrics": batch}, "metric logging")

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self._send(run_id, {"op": "dict", "data": data, "file": artifact_file}, "artifact logging")

    def log_table(self, run_id: str, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        """``data`` (column -> values) as an MLflow table artifact ``artifact_file`` (``.json``)."""
        self._send(run_id, {"op": "table", "data": {k: list(v) for k, v in data.items()}, "file": artifact_file},
                   "artifact logging")

    def log_file(self, run_id: str, path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        self._send(run_id, {"op": "file", "path": str(path), "dir": artifact_dir}, "artifact logging")

    def load_dict(self, run_id: str, artifact_file: str) -> dict | None:
        """A JSON artifact of ``run_id`` (None when it is missing)."""
        if is_placeholder(run_id):
            return None

        def download() -> dict | None:
            from mlflow.exceptions import MlflowException

            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = self.client.download_artifacts(run_id, artifact_file, tmp)
                except MlflowException as exc:
                    if policy.is_transient(exc):
                        raise
                    return None
                except OSError as exc:  # requests' errors are OSErrors too
                    if policy.is_transient(exc) and not isinstance(exc, FileNotFoundError):
                        raise
                    return None
                try:
                    return json.loads(Path(local).read_text())
                except (OSError, ValueError):
                    return None

        return self.call("artifact download", download)

    def save_summary(self, run_id: str, summary: Mapping[str, Any]) -> None:
        """The run's machine-readable result (read back by :meth:`load_summary` when the run is reused)."""
        self.log_dict(run_id, dict(summary), SUMMARY_ARTIFACT)

    def load_summary(self, run_id: str) -> dict | None:
        return self.load_dict(run_id, SUMMARY_ARTIFACT)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self._send(run_id, {"op": "status", "status": status}, "run update")

    def set_running(self, run_id: str) -> None:
        self._send(run_id, {"op": "status", "status": "RUNNING"}, "run update")

    def finish_quietly(self, run_id: str, status: str) -> None:
        """:meth:`finish`, ignoring a tracking failure (used while another error is being raised)."""
        with contextlib.suppress(AhpsError):
            self.finish(run_id, status)

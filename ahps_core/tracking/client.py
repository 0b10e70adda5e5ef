"""The MLflow client side of the adapter: :class:`Tracker`, one run group in one experiment (mlflow is imported
lazily, so importing this stays cheap).

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
one-line message (:func:`ahps_core.tracking.uri.check_tracking_uri` detects it up front).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ahps_core.checks import finite_items
from ahps_core.errors import AhpsError, ConfigError, TrackingError
from ahps_core.tracking.uri import default_artifact_location, redact, resolve_tracking_uri, sqlite_path

DEFAULT_EXPERIMENT = "ahps"
RUN_GROUP_TAG = "ahps.run_group"
RUN_KEY_TAG = "ahps.run_key"
KIND_TAG = "ahps.kind"
CONFIG_HASH_TAG = "ahps.config_hash"
INPUTS_HASH_TAG = "ahps.inputs_hash"
PARENT_TAG = "mlflow.parentRunId"
SUMMARY_ARTIFACT = "ahps/summary.json"
_MAX_PARAM_LEN = 6000


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
            raise TrackingError(f"MLflow {what} at {redact(uri)} failed: {_first_line(exc)}") from exc
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
        return RunRef(run.info.run_id, run.info.status, reused, dict(run.data.tags), dict(run.data.params))

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
            all_tags = {RUN_GROUP_TAG: self.run_group, KIND_TAG: "parent",
                        **{k: str(v) for k, v in (tags or {}).items()}}
            with self._errors("run creation"):
                run = self.client.create_run(self.experiment_id, tags=all_tags,
                                             run_name=name or f"ahps {self.run_group}")
            ref = self._ref(run, False)
        self._parent_id = ref.run_id
        if params:
            self.log_params(ref.run_id, params, existing=ref.params, what=f"run group {self.run_group!r}")
        if tags:
            self.set_tags(ref.run_id, tags)
        if ref.reused and ref.status != "RUNNING":
            self.set_running(ref.run_id)
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
            self.set_running(ref.run_id)
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
        batch = [Metric(k, v, now, int(step or 0)) for k, v in finite_items(metrics).items()]
        with self._errors("metric logging"):
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def log_history(self, run_id: str, history: list[Mapping[str, Any]], *,
                    keys: tuple[str, ...] | None = None) -> None:
        """Step metrics of a training history (one record per epoch, ``epoch`` is the step)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch: list[Metric] = []
        for rec in history:
            step = int(rec.get("epoch", 0) or 0)
            values = {k: v for k, v in rec.items() if k != "epoch" and (keys is None or k in keys)}
            batch.extend(Metric(k, v, now, step) for k, v in finite_items(values).items())
        with self._errors("metric logging"):
            for i in range(0, len(batch), 500):
                self.client.log_batch(run_id, metrics=batch[i:i + 500])

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        with self._errors("artifact logging"):
            self.client.log_dict(run_id, data, artifact_file)

    def log_file(self, run_id: str, path: str | os.PathLike[str], artifact_dir: str | None = None) -> None:
        with self._errors("artifact logging"):
            self.client.log_artifact(run_id, str(path), artifact_dir)

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

    def set_running(self, run_id: str) -> None:
        with self._errors("run update"):
            self.client.update_run(run_id, status="RUNNING")

    def finish_quietly(self, run_id: str, status: str) -> None:
        """:meth:`finish`, ignoring a tracking failure (used while another error is being raised)."""
        with contextlib.suppress(AhpsError):
            self.finish(run_id, status)

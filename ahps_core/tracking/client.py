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
others by ``ahps.run_key`` (through the run-group claim of :mod:`ahps_core.tracking.claim`, so that concurrent
processes of one run group create each run once). A FINISHED run is reused as it is (the caller reads its
recorded results instead of recomputing them); an unfinished one (a preempted pod, a crash) is resumed, i.e.
logged into again. Runs are always created with an explicit ``experiment_id`` (:attr:`Tracker.experiment_id`),
never through ``mlflow.set_experiment`` + ``start_run`` (which races when parallel tasks create the same experiment).
The parent is claimed by create-then-resolve: a contender that finds no parent creates one, waits
``$AHPS_CLAIM_SETTLE_S`` (default 1 s), and keeps the earliest parent of the group (MLflow's creation order:
start time, then run id); a loser deletes its own.

**Failures.** Every call gets the time budget of :mod:`ahps_core.tracking.policy` (retries of transient failures
included). A refusing store is a one-line :class:`~ahps_core.errors.TrackingError`. A store that stops answering
is an outage: the tracker goes offline for the rest of the process, and every logging call (params, metrics, tags,
artifacts, status, run creation) is appended to the tracking journal (:mod:`ahps_core.tracking.journal`) instead,
to be replayed later; lookups raise :class:`~ahps_core.errors.TrackingUnavailableError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ahps_core.errors import ConfigError, TrackingError, TrackingUnavailableError
from ahps_core.tracking import policy
from ahps_core.tracking.journal import Journal, is_placeholder, journal_root, new_placeholder
from ahps_core.tracking.sending import RunLogging, param_str
from ahps_core.tracking.uri import default_artifact_location, redact, resolve_tracking_uri, sqlite_path

DEFAULT_EXPERIMENT = "ahps"
RUN_GROUP_TAG = "ahps.run_group"
RUN_KEY_TAG = "ahps.run_key"
KIND_TAG = "ahps.kind"
CONFIG_HASH_TAG = "ahps.config_hash"
#: the experiment tag MLflow 3's UI reads to open an experiment on its runs table, not the GenAI overview
EXPERIMENT_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}
INPUTS_HASH_TAG = "ahps.inputs_hash"
OWNER_TAG = "ahps.owner"
PARENT_TAG = "mlflow.parentRunId"
SETTLE_ENV = "AHPS_CLAIM_SETTLE_S"
_USER_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT" in os.environ
T = TypeVar("T")


@contextlib.contextmanager
def _sqlite_lock(uri: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite store (``<db>.lock``) while its schema is created; nothing for others."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def prepare_store(uri: str) -> None:
    """Open the store ``uri`` once, so that a fresh SQLite database gets its schema before any parallel task opens
    it (two processes creating it at once both run the migration and one fails); every :class:`Tracker` does the
    same under the same file lock."""
    Tracker(uri).client  # noqa: B018 - opening the client creates the schema


@dataclass
class RunRef:
    """A run found or created by :class:`Tracker`: ``reused`` when it already existed, ``finished`` when it was
    FINISHED (its recorded results can be used as they are). Runs created while MLflow was unavailable have a
    placeholder id (``offline:...``) and status ``OFFLINE``."""

    run_id: str
    status: str
    reused: bool
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    start_time: int = 0
    deleted: bool = False

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    @property
    def offline(self) -> bool:
        return is_placeholder(self.run_id)


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"value {value!r} cannot be used as a run key (contains both quote characters)")


def settle_s() -> float:
    try:
        return max(0.0, float(os.environ.get(SETTLE_ENV, "") or 1.0))
    except ValueError:
        raise ConfigError(f"{SETTLE_ENV} {os.environ.get(SETTLE_ENV)!r} must be a number of seconds") from None


class Tracker(RunLogging):
    """One run group in one MLflow experiment (see the module docstring). Thread- and process-safe: every call
    names its run explicitly (no global active run)."""

    def __init__(self, tracking_uri: str | None, experiment: str = DEFAULT_EXPERIMENT, run_group: str = "") -> None:
        self.uri = resolve_tracking_uri(tracking_uri)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if not experiment:
            raise ConfigError("MLflow experiment name is empty")
        self.experiment = experiment
        self.run_group = run_group
        self.offline: str | None = None  #: why the store is considered unavailable (None: it answers)
        self.journaling = True  #: journal what cannot be sent (False: raise, e.g. while replaying a journal)
        self._client = None
        self._experiment_id: str | None = None
        self._parent_id: str | None = None
        self._journal: Journal | None = None

    # -- plumbing --------------------------------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            policy.check_credential_host(self.uri)
            policy.quiet_mlflow_retries()

            def connect():
                from mlflow import MlflowClient

                with _sqlite_lock(self.uri):
                    return MlflowClient(tracking_uri=self.uri)

            self._client = self._call("connection", connect)
        return self._client

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` (MLflow calls) within the time budget (module docstring): a refusal is a TrackingError, an
        outage a TrackingUnavailableError (and the tracker goes offline)."""
        if self.offline:
            raise TrackingUnavailableError(f"MLflow {what} at {redact(self.uri)} skipped: the tracking store is "
                                           f"unavailable ({self.offline})")
        return self._call(what, fn)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def set_timeout(deadline: float) -> None:
            if not _USER_HTTP_TIMEOUT:
                os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(policy.attempt_timeout(deadline))

        budget = policy.budget_s()
        try:
            return policy.retry(fn, transient=policy.is_transient, budget=budget, on_attempt=set_timeout)
        except (ConfigError, TrackingError):
            raise
        except Exception as exc:  # MlflowException, requests/urllib3 errors, sqlalchemy errors, OSError
            if policy.is_transient(exc):
                self.offline = policy.describe(exc)
                raise TrackingUnavailableError(
                    f"MLflow {what} at {redact(self.uri)} failed for {budget:g} s ({self.offline}): the tracking "
                    "store is unavailable") from exc
            name = type(exc).__module__.split(".")[0]
            if name in ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3", "botocore", "boto3") or isinstance(
                exc, OSError
            ):
                raise TrackingError(f"MLflow {what} at {redact(self.uri)} failed: {policy.describe(exc)}") from exc
            raise

    def key(self, *parts: Any) -> str:
        """The run key ``<group>/<part>/...`` of a run of this group."""
        if not self.run_group:
            raise ConfigError("run group is empty: every pipeline run needs a run-group key")
        return "/".join([self.run_group, *(str(p) for p in parts)])

    @property
    def experiment_id(self) -> str:
        """The experiment's id (:meth:`require_experiment`); ``""`` while the store is unavailable."""
        try:
            return self.require_experiment()
        except TrackingUnavailableError:
            return ""

    def require_experiment(self) -> str:
        """The experiment's id; the experiment is created when missing (tolerating a concurrent creator)."""
        if self._experiment_id is None:
            self._experiment_id = self.call(f"experiment {self.experiment!r}", self._get_or_create_experiment)
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            try:
                return self.client.create_experiment(self.experiment, tags={"ahps": "true", **EXPERIMENT_KIND_TAGS},
                                                     artifact_location=default_artifact_location(self.uri))
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {self.experiment!r} is deleted: restore it (mlflow experiments "
                                "restore) or choose another experiment name")
        for key, value in EXPERIMENT_KIND_TAGS.items():  # an experiment created before ahps set it
            if key not in (exp.tags or {}):
                self.client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(journal_root(), experiment=self.experiment, run_group=self.run_group)
        return self._journal

    @property
    def journaled(self) -> int:
        """How many operations this tracker wrote to its journal instead of MLflow."""
        return self._journal.count if self._journal is not None else 0

    # -- lookups ---------------------------------------------------------------------------------------------------
    def _search(self, filter_string: str, *, max_results: int = 1000) -> list:
        def search() -> list:
            out, token = [], None
            while True:
                page = self.client.search_runs(
                    [self.require_experiment()], filter_string=filter_string, max_results=max_results,
                    order_by=["attributes.start_time ASC"], page_token=token,
                )
                out.extend(page)
                token = page.token
                if not token:
                    return sorted(out, key=lambda r: (r.info.start_time or 0, r.info.run_id))

        return self.call("run search", search)

    @staticmethod
    def _ref(run, reused: bool) -> RunRef:
        return RunRef(run.info.run_id, run.info.status, reused, dict(run.data.tags), dict(run.data.params),
                      int(run.info.start_time or 0), run.info.lifecycle_stage == "deleted")

    @staticmethod
    def _pick(runs: list):
        """Among runs sharing a key: the first FINISHED one, else the most recent."""
        finished = [r for r in runs if r.info.status == "FINISHED"]
        return finished[0] if finished else runs[-1]

    def find(self, run_key: str) -> RunRef | None:
        """The run keyed ``run_key`` (FINISHED preferred), or None."""
        runs = self._search(f"tags.`{RUN_KEY_TAG}` = {_quote(run_key)}")
        return self._ref(self._pick(runs), True) if runs else None

    def _parents(self) -> list:
        return self._search(f"tags.`{RUN_GROUP_TAG}` = {_quote(self.run_group)} and tags.`{KIND_TAG}` = 'parent'")

    def find_parent(self) -> RunRef | None:
        """The group's parent: the earliest (start time, run id) of its parent runs."""
        runs = self._parents()
        return self._ref(runs[0], True) if runs else None

    def group_runs(self) -> list[RunRef]:
        """Every run of this group (parent and children)."""
        runs = self._search(f"tags.`{RUN_GROUP_TAG}` = {_quote(self.run_group)}")
        return [self._ref(r, True) for r in runs]

    def get(self, run_id: str) -> RunRef:
        """The run ``run_id`` as it is now."""
        return self._ref(self.call("run lookup", lambda: self.client.get_run(run_id)), True)

    def metric_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which ``run_id`` already has metric ``key`` (empty when unknown)."""
        if is_placeholder(run_id):
            return set()
        try:
            history = self.call("metric lookup", lambda: self.client.get_metric_history(run_id, key))
        except TrackingUnavailableError:
            return set()
        return {int(m.step) for m in history}

    # -- creation --------------------------------------------------------------------------------------------------
    def ensure_parent(self, *, name: str | None = None, params: Mapping[str, Any] | None = None,
                      tags: Mapping[str, Any] | None = None) -> RunRef:
        """The group's parent run, created when missing (module docstring; params are logged once; a reused parent
        whose params differ from ``params`` is a ConfigError: the same run-group key cannot mean two runs). While
        MLflow is unavailable: a placeholder whose creation is journaled."""
        extra = {k: str(v) for k, v in (tags or {}).items()}
        try:
            ref = self.find_parent() or self._create_parent(name, extra)
        except TrackingUnavailableError:
            if not self.journaling:
                raise
            ref = RunRef(new_placeholder(), "OFFLINE", False, {RUN_GROUP_TAG: self.run_group, KIND_TAG: "parent",
                                                                **extra})
            self.journal.append({"op": "create", "run": ref.run_id, "kind": "parent", "name": name,
                                 "tags": extra, "params": {k: param_str(v) for k, v in (params or {}).items()}})
            self._parent_id = ref.run_id
            return ref
        self._parent_id = ref.run_id
        if params:
            self.log_params(ref.run_id, params, existing=ref.params, what=f"run group {self.run_group!r}")
        if tags:
            self.set_tags(ref.run_id, tags)
        if ref.reused and ref.status != "RUNNING":
            self.set_running(ref.run_id)
        return ref

    def _create_parent(self, name: str | None, tags: Mapping[str, str]) -> RunRef:
        from ahps_core.tracking.claim import new_token

        token = new_token()
        all_tags = {RUN_GROUP_TAG: self.run_group, KIND_TAG: "parent", OWNER_TAG: token, **tags}
        run = self.call("run creation", lambda: self.client.create_run(
            self.require_experiment(), tags=all_tags, run_name=name or f"ahps {self.run_group}"))
        time.sleep(settle_s())  # let every contender of this moment create its parent, then resolve
        parents = self._parents() or [run]
        winner = parents[0]
        for other in parents[1:]:
            if other.data.tags.get(OWNER_TAG) == token:  # ours (a retried creation included): not the winner
                self.delete_run(other.info.run_id)
        if winner.info.run_id == run.info.run_id or winner.data.tags.get(OWNER_TAG) == token:
            return self._ref(winner, False)
        return self._ref(winner, True)

    @property
    def parent_id(self) -> str:
        """The group's parent run (looked up, or created, on first use)."""
        if self._parent_id is None:
            self._parent_id = self.ensure_parent().run_id
        return self._parent_id

    @parent_id.setter
    def parent_id(self, run_id: str) -> None:
        self._parent_id = run_id

    def create_child(self, run_key: str, *, name: str, kind: str = "", tags: Mapping[str, Any] | None = None,
                     config_hash: str | None = None, parent_id: str | None = None) -> RunRef:
        """A new run keyed ``run_key`` under the parent (no lookup: see :meth:`start_run` and the claims)."""
        all_tags = {
            RUN_GROUP_TAG: self.run_group, RUN_KEY_TAG: run_key, PARENT_TAG: parent_id or self.parent_id,
            **({KIND_TAG: kind} if kind else {}), **({CONFIG_HASH_TAG: config_hash} if config_hash else {}),
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        run = self.call("run creation", lambda: self.client.create_run(self.require_experiment(), tags=all_tags,
                                                                       run_name=name))
        return self._ref(run, False)

    def offline_child(self, run_key: str, *, name: str, kind: str, tags: Mapping[str, Any] | None = None,
                      config_hash: str | None = None, identity_tag: str = CONFIG_HASH_TAG,
                      identity: str = "") -> RunRef:
        """A placeholder for the run ``run_key`` while MLflow is unavailable; its creation is journaled."""
        parent = self._parent_id or self.ensure_parent().run_id
        all_tags = {KIND_TAG: kind, **({CONFIG_HASH_TAG: config_hash} if config_hash else {}),
                    **{k: str(v) for k, v in (tags or {}).items()}}
        ref = RunRef(new_placeholder(), "OFFLINE", False, all_tags)
        self.journal.append({"op": "create", "run": ref.run_id, "kind": "child", "key": run_key, "name": name,
                             "tags": all_tags, "identity_tag": identity_tag, "identity": identity or config_hash,
                             "parent": parent})
        return ref

    def start_run(self, run_key: str, *, name: str, kind: str, tags: Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None, config_hash: str | None = None) -> RunRef:
        """The child run keyed ``run_key``: reused when it exists (``finished`` tells whether its results are
        final), else created under the parent. ``config_hash`` guards against a key reused for a different
        configuration (ConfigError naming the key). Pipeline steps go through
        :func:`ahps_core.tracking.tracked_step` (claims, offline journal) instead."""
        ref = self.find(run_key)
        if ref is not None:
            self.check_config(ref, run_key, config_hash)
            if ref.finished:
                return ref
            self.set_running(ref.run_id)
            ref.status = "RUNNING"
        else:
            ref = self.create_child(run_key, name=name, kind=kind, tags=tags, config_hash=config_hash)
        if params:
            self.log_params(ref.run_id, params, existing=ref.params, what=run_key)
        if tags and ref.reused:
            self.set_tags(ref.run_id, tags)
        return ref

    def check_config(self, ref: RunRef, run_key: str, config_hash: str | None) -> None:
        old = ref.tags.get(CONFIG_HASH_TAG)
        if config_hash and old and old != config_hash:
            raise ConfigError(f"run group {self.run_group!r} already holds {run_key!r} with another configuration "
                              f"(hash {old}, now {config_hash}); use a new run group")

    def delete_run(self, run_id: str) -> None:
        self.call("run deletion", lambda: self.client.delete_run(run_id))

    def log_param_once(self, run_id: str, key: str, value: str) -> bool:
        """Log the param ``key`` once (MLflow stores a param's first value and refuses another): True when it now
        holds ``value``, False when it already held another one. The atomic step of the run-group claims."""
        from mlflow.exceptions import MlflowException

        def log() -> bool:
            try:
                self.client.log_param(run_id, key, value)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") == "INVALID_PARAMETER_VALUE" and "Changing param" in str(exc):
                    return False
                raise
            return True

        return self.call("claim", log)

"""The tracked-step primitive: every pipeline step that records an MLflow run goes through :func:`tracked_step`.

It owns the protocol that makes steps idempotent, safe to run concurrently, and failures visible:

1. the run key is *claimed* (:mod:`ahps_core.tracking.claim`): of all processes running the step at once, one
   computes it; the others wait for its result and reuse it;
2. a FINISHED run recorded with the same *identity* (a configuration hash, or a hash of the step's inputs) is
   **reused**: the step gets its recorded summary and does not recompute;
3. otherwise the run is started (or an unfinished one of the same key resumed, i.e. logged into again), with a
   heartbeat that tells waiting processes its owner is alive;
4. an exception inside the block marks the run FAILED (a tracking failure while doing so is ignored, the
   original error propagates);
5. a normal exit saves the step's summary (:attr:`TrackedStep.summary`) as the run's ``ahps/summary.json`` and
   marks the run FINISHED.

Results are written to disk *before* they are logged: the step writes its output files inside the block, then
logs them through :class:`TrackedStep`, and sets ``summary`` last. So an MLflow failure never loses a result.
When MLflow is unavailable (an outage), the step runs anyway: nothing can be claimed or reused, and everything it
logs goes to the tracking journal (:mod:`ahps_core.tracking.journal`), replayed later by ``ahps sync`` or the next
run of the run group. Epoch metrics sent with :meth:`TrackedStep.log_history_async` never make training wait.

Usage::

    with tracked_step(tracker, key, name="train ...", kind="train", identity=config_hash, tags=..., params=...) as run:
        if run.reused:
            return run.summary            # nothing is logged or finished again
        result = compute()
        write_json(out / "result.json", result)   # 1. disk
        run.log_metrics({...})                    # 2. MLflow
        run.summary = result                      # saved and FINISHED on exit
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ahps_core.errors import TrackingUnavailableError
from ahps_core.tracking.client import CONFIG_HASH_TAG, Tracker


@dataclass
class TrackedStep:
    """The run of one tracked step (see :func:`tracked_step`). ``reused``: a finished run with the same identity,
    whose recorded ``summary`` is the step's result; ``resumed``: an existing unfinished (or re-identified) run
    that is logged into again; ``params``: the params already recorded on the run; ``offline``: MLflow was
    unavailable when the step started (everything goes to the journal)."""

    tracker: Tracker
    key: str
    run_id: str
    reused: bool
    resumed: bool = False
    summary: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    offline: bool = False
    _queue: queue.Queue | None = field(default=None, repr=False)
    _worker: threading.Thread | None = field(default=None, repr=False)

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=step)

    def log_history(self, history: list[Mapping[str, Any]]) -> None:
        self.tracker.log_history(self.run_id, history)

    def log_history_async(self, history: list[Mapping[str, Any]]) -> None:
        """:meth:`log_history` in a background thread, in order (the caller never waits on MLflow); a record
        that cannot be sent is journaled. :meth:`flush` waits for what was queued."""
        if self._queue is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._drain, name="ahps-metrics", daemon=True)
            self._worker.start()
        self._queue.put([dict(r) for r in history])

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            with contextlib.suppress(Exception):  # journaled by the tracker on an outage; never kills the step
                self.tracker.log_history(self.run_id, item)

    def flush(self) -> None:
        """Wait until every record queued by :meth:`log_history_async` was sent (or journaled)."""
        if self._queue is not None and self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._queue = self._worker = None

    def logged_steps(self, metric: str) -> set[int]:
        """The steps at which the run already holds ``metric`` (a resumed run: not to be logged twice)."""
        return self.tracker.metric_steps(self.run_id, metric) if self.resumed else set()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(self.run_id, params, existing=self.params, what=self.key)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def log_file(self, path: Any, artifact_dir: str | None = None) -> None:
        self.tracker.log_file(self.run_id, path, artifact_dir)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.tracker.log_dict(self.run_id, data, artifact_file)

    def log_table(self, data: Mapping[str, list[Any]], artifact_file: str) -> None:
        self.tracker.log_table(self.run_id, data, artifact_file)


@contextlib.contextmanager
def tracked_step(
    tracker: Tracker, key: str, *, name: str, kind: str, identity: str, identity_tag: str = CONFIG_HASH_TAG,
    tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
    accept: Callable[[dict[str, Any]], bool] | None = None, log: Callable[[str], None] | None = None,
) -> Iterator[TrackedStep]:
    """The run keyed ``key`` for one step (see the module docstring).

    ``identity`` is recorded in the tag ``identity_tag``: with the default (the configuration hash) a key already
    recorded with another configuration is a :class:`~ahps_core.errors.ConfigError` (the same run-group key cannot
    mean two runs); with another tag (e.g. ``ahps.inputs_hash`` of a fan-in step) a finished run of other inputs is
    logged into again and re-finished. ``accept``: an extra check of a recorded summary before it is reused.
    ``log``: where "waiting for another process" is said.
    """
    from ahps_core.tracking import claim

    all_tags = dict(tags or {})
    config_hash = identity if identity_tag == CONFIG_HASH_TAG else None
    if config_hash is None:
        all_tags[identity_tag] = identity
    try:
        got = claim.acquire(tracker, key, name=name, kind=kind, tags=all_tags, config_hash=config_hash,
                            identity_tag=identity_tag, identity=identity, accept=accept, log=log)
    except TrackingUnavailableError:
        got = claim.Acquired(tracker.offline_child(key, name=name, kind=kind, tags=all_tags, config_hash=config_hash,
                                                   identity_tag=identity_tag, identity=identity), False)
    ref = got.ref
    if got.reused:
        yield TrackedStep(tracker, key, ref.run_id, reused=True, summary=got.summary, params=ref.params)
        return
    if got.resumed:
        tracker.set_tags(ref.run_id, all_tags)
    if params:
        tracker.log_params(ref.run_id, params, existing=ref.params, what=key)
    step = TrackedStep(tracker, key, ref.run_id, reused=False, resumed=got.resumed, params=ref.params,
                       offline=ref.offline)
    beat = claim.Heartbeat(tracker, ref.run_id, got.token) if got.token else None
    try:
        yield step
    except BaseException:
        if beat is not None:
            beat.stop()
        with contextlib.suppress(Exception):
            step.flush()
        tracker.finish_quietly(ref.run_id, "FAILED")
        raise
    if beat is not None:
        beat.stop()
    step.flush()
    if got.token and not claim.still_owner(tracker, key, got.token):
        if log is not None:
            log(f"{key}: another process took the run over meanwhile; it records the result")
        return
    if step.summary is not None:
        tracker.save_summary(ref.run_id, step.summary)
    tracker.finish(ref.run_id)


__all__ = ["TrackedStep", "tracked_step"]

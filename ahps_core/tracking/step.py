"""The tracked-step primitive: every pipeline step that records an MLflow run goes through :func:`tracked_step`.

It owns the protocol that makes steps idempotent and failures visible:

1. look the run up by its key; a FINISHED run recorded with the same *identity* (a configuration hash, or a hash
   of the step's inputs) is **reused**: the step gets its recorded summary and does not recompute;
2. otherwise the run is started (or an unfinished one of the same key resumed, i.e. logged into again);
3. an exception inside the block marks the run FAILED (a tracking failure while doing so is ignored, the
   original error propagates);
4. a normal exit saves the step's summary (:attr:`TrackedStep.summary`) as the run's ``ahps/summary.json`` and
   marks the run FINISHED.

Results are written to disk *before* they are logged: the step writes its output files inside the block, then
logs them through :class:`TrackedStep`, and sets ``summary`` last. So an MLflow failure never loses a result.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ahps_core.tracking.client import CONFIG_HASH_TAG, Tracker


@dataclass
class TrackedStep:
    """The run of one tracked step (see :func:`tracked_step`). ``reused``: a finished run with the same identity,
    whose recorded ``summary`` is the step's result; ``resumed``: an existing unfinished (or re-identified) run
    that is logged into again; ``params``: the params already recorded on the run."""

    tracker: Tracker
    key: str
    run_id: str
    reused: bool
    resumed: bool = False
    summary: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=step)

    def log_history(self, history: list[Mapping[str, Any]]) -> None:
        self.tracker.log_history(self.run_id, history)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(self.run_id, params, existing=self.params, what=self.key)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def log_file(self, path: Any, artifact_dir: str | None = None) -> None:
        self.tracker.log_file(self.run_id, path, artifact_dir)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.tracker.log_dict(self.run_id, data, artifact_file)


@contextlib.contextmanager
def tracked_step(
    tracker: Tracker, key: str, *, name: str, kind: str, identity: str, identity_tag: str = CONFIG_HASH_TAG,
    tags: Mapping[str, Any] | None = None, params: Mapping[str, Any] | None = None,
    accept: Callable[[dict[str, Any]], bool] | None = None,
) -> Iterator[TrackedStep]:
    """The run keyed ``key`` for one step (see the module docstring).

    ``identity`` is recorded in the tag ``identity_tag``: with the default (the configuration hash) a key already
    recorded with another configuration is a :class:`~ahps_core.errors.ConfigError` (the same run-group key cannot
    mean two runs); with another tag (e.g. ``ahps.inputs_hash`` of a fan-in step) a finished run of other inputs is
    logged into again and re-finished. ``accept``: an extra check of a recorded summary before it is reused.
    """
    ref = tracker.find(key)
    if ref is not None and ref.finished and ref.tags.get(identity_tag) == identity:
        recorded = tracker.load_summary(ref.run_id)
        if recorded is not None and (accept is None or accept(recorded)):
            yield TrackedStep(tracker, key, ref.run_id, reused=True, summary=recorded, params=ref.params)
            return
    all_tags = dict(tags or {})
    config_hash = identity if identity_tag == CONFIG_HASH_TAG else None
    if config_hash is None:
        all_tags[identity_tag] = identity
    ref = tracker.start_run(key, name=name, kind=kind, tags=all_tags, params=params, config_hash=config_hash)
    if ref.finished:  # finished, but without a usable summary or with other inputs: record it again
        tracker.set_running(ref.run_id)
    step = TrackedStep(tracker, key, ref.run_id, reused=False, resumed=ref.reused, params=ref.params)
    try:
        yield step
    except BaseException:
        tracker.finish_quietly(ref.run_id, "FAILED")
        raise
    if step.summary is not None:
        tracker.save_summary(ref.run_id, step.summary)
    tracker.finish(ref.run_id)


__all__ = ["TrackedStep", "tracked_step"]

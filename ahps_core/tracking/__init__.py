"""The MLflow adapter: the only package of ahps that imports mlflow (lazily, so importing it stays cheap).

* :mod:`~ahps_core.tracking.uri`: where the store is and whether it can be used (no mlflow import);
* :mod:`~ahps_core.tracking.policy`: the time budget of every call, and the hosts that may receive credentials;
* :mod:`~ahps_core.tracking.client`: :class:`Tracker`, one run group in one experiment (layout, idempotent
  lookups, logging, the offline journal when the store is unavailable);
* :mod:`~ahps_core.tracking.claim`: run-group claims (one process computes each run, the others reuse it);
* :mod:`~ahps_core.tracking.journal`: what did not reach MLflow, on disk, and its replay (``ahps sync``);
* :mod:`~ahps_core.tracking.step`: :func:`tracked_step`, the one protocol every tracked pipeline step follows
  (claim, reuse a finished run by key, else start it; FAILED on error; summary saved and FINISHED on exit).
"""

from ahps_core.tracking.client import (
    CONFIG_HASH_TAG,
    DEFAULT_EXPERIMENT,
    INPUTS_HASH_TAG,
    KIND_TAG,
    PARENT_TAG,
    RUN_GROUP_TAG,
    RUN_KEY_TAG,
    RunRef,
    Tracker,
    prepare_store,
)
from ahps_core.tracking.sending import SUMMARY_ARTIFACT
from ahps_core.tracking.journal import JOURNAL_ENV, ReplayReport, journal_root, pending_files, replay
from ahps_core.tracking.step import TrackedStep, tracked_step
from ahps_core.tracking.uri import (
    check_tracking_uri,
    default_artifact_location,
    local_store_uri,
    redact,
    resolve_tracking_uri,
    sqlite_path,
    ui_command,
)

__all__ = ["CONFIG_HASH_TAG", "DEFAULT_EXPERIMENT", "INPUTS_HASH_TAG", "JOURNAL_ENV", "KIND_TAG", "PARENT_TAG",
           "RUN_GROUP_TAG", "RUN_KEY_TAG", "SUMMARY_ARTIFACT", "ReplayReport", "RunRef", "TrackedStep", "Tracker",
           "check_tracking_uri", "default_artifact_location", "journal_root", "local_store_uri", "pending_files",
           "prepare_store", "redact", "replay", "resolve_tracking_uri", "sqlite_path", "tracked_step", "ui_command"]

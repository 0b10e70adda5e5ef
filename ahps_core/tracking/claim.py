"""Run-group claims: every run of a run group is created and computed by one process at a time, however many
processes run the group at once (two ``ahps run`` of one run group, a KFP retry next to a re-submission).

**The claim** of a run key ``K`` is a param of the group's parent run, ``ahps.claim.<hash of K>.<generation>``,
whose value is ``"<run id> <owner token> <unix time>"``. MLflow stores a param's first value and refuses any other
(a unique key in its database), so logging it is an atomic test-and-set: whoever logs generation ``g`` first owns
the run; the others get a refusal. The first claim (generation 0) names the run its winner created (or the run the
key already had); a loser deletes the run it created and *follows* the winner.

**Following**: the follower waits while the owner is alive, then reuses the owner's finished run (its recorded
summary, nothing computed again). An owner is alive while its claim or its heartbeat (the tag ``ahps.heartbeat``,
refreshed every ``lease / 6`` s by a background thread) is younger than the lease (``$AHPS_CLAIM_LEASE_S``, default
90 s), and, on the same host, while its process exists. A dead owner's run (a killed process, a preempted pod) or a
FAILED one is taken over by claiming the next generation, again atomically, and resumed (logged into again).

The owner token is ``<host>/<pid>/<random>``. Followers poll every ``$AHPS_CLAIM_POLL_S`` s (default 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ahps_core.errors import ConfigError, TrackingError, TrackingUnavailableError
from ahps_core.tracking.client import OWNER_TAG, RunRef, Tracker

CLAIM_PREFIX = "ahps.claim."
HEARTBEAT_TAG = "ahps.heartbeat"
LEASE_ENV = "AHPS_CLAIM_LEASE_S"
POLL_ENV = "AHPS_CLAIM_POLL_S"


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"{env} {raw!r} must be a number of seconds > 0")
    return value


def lease_s() -> float:
    return _seconds(LEASE_ENV, 90.0)


def poll_s() -> float:
    return _seconds(POLL_ENV, 2.0)


def new_token() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def claim_param(key: str, gen: int) -> str:
    return f"{CLAIM_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:16]}.{gen}"


@dataclass(frozen=True)
class ClaimState:
    """The latest claim of a run key."""

    gen: int
    run_id: str
    token: str
    since: float


def current(tracker: Tracker, key: str) -> ClaimState | None:
    """The latest claim of ``key`` recorded on the group's parent run (None: never claimed)."""
    prefix = claim_param(key, 0)[:-1]
    best: ClaimState | None = None
    for name, value in tracker.get(tracker.parent_id).params.items():
        if not name.startswith(prefix):
            continue
        parts = value.split(" ")
        try:
            state = ClaimState(int(name[len(prefix):]), parts[0], parts[1], float(parts[2]))
        except (ValueError, IndexError):
            continue
        if best is None or state.gen > best.gen:
            best = state
    return best


def take(tracker: Tracker, key: str, gen: int, run_id: str, token: str) -> bool:
    """Claim generation ``gen`` of ``key`` for ``run_id``/``token``; False when someone else claimed it first."""
    return tracker.log_param_once(tracker.parent_id, claim_param(key, gen), f"{run_id} {token} {time.time():.0f}")


def _process_gone(token: str) -> bool:
    host, _, rest = token.partition("/")
    pid = rest.partition("/")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def alive(state: ClaimState, run: RunRef, lease: float) -> bool:
    """Whether the owner of ``state`` (its run ``run``) still works on it (module docstring)."""
    if run.deleted or run.status in ("FAILED", "KILLED") or _process_gone(state.token):
        return False
    last = state.since
    beat = run.tags.get(HEARTBEAT_TAG, "").split(" ")
    if len(beat) == 2 and beat[0] == state.token:
        with contextlib.suppress(ValueError):
            last = max(last, float(beat[1]))
    return time.time() - last < lease


@dataclass
class Acquired:
    """The outcome of :func:`acquire`: the run, whether it is a finished run to reuse (``summary`` is its recorded
    result), and, when we own it, our ``token`` and whether the run existed before (``resumed``)."""

    ref: RunRef
    reused: bool
    token: str = ""
    resumed: bool = False
    summary: dict[str, Any] | None = None


def acquire(tracker: Tracker, key: str, *, name: str, kind: str, tags: Mapping[str, Any], config_hash: str | None,
            identity_tag: str, identity: str, accept: Callable[[dict[str, Any]], bool] | None = None,
            log: Callable[[str], None] | None = None) -> Acquired:
    """Own the run keyed ``key``, or reuse its finished result (module docstring). ``identity`` (recorded in the
    tag ``identity_tag``) tells whether a finished run is this step's result; a configuration-hash identity that
    differs is a ConfigError (the same run key cannot mean two runs). Raises TrackingUnavailableError while MLflow
    is unavailable."""
    token = new_token()
    lease, told = lease_s(), False

    def usable(ref: RunRef) -> dict[str, Any] | None:
        if not ref.finished or ref.tags.get(identity_tag) != identity:
            return None
        recorded = tracker.load_summary(ref.run_id)
        return recorded if recorded is not None and (accept is None or accept(recorded)) else None

    while True:
        state = current(tracker, key)
        if state is None:
            ref = tracker.find(key)
            if ref is not None:
                tracker.check_config(ref, key, config_hash)
                recorded = usable(ref)
                if recorded is not None:  # finished before claims existed: nothing to claim
                    return Acquired(ref, True, summary=recorded)
            created = ref is None
            if ref is None:
                ref = tracker.create_child(key, name=name, kind=kind, tags=tags, config_hash=config_hash)
            if take(tracker, key, 0, ref.run_id, token):
                return _own(tracker, ref, token, resumed=not created)
            if created:
                tracker.delete_run(ref.run_id)
            continue
        try:
            ref = tracker.get(state.run_id)
        except TrackingUnavailableError:
            raise
        except TrackingError:  # the claimed run was removed from the store: claim a new one
            ref = RunRef(state.run_id, "", True, deleted=True)
        if not ref.deleted:
            tracker.check_config(ref, key, config_hash)
            recorded = usable(ref)
            if recorded is not None:
                return Acquired(ref, True, summary=recorded)
        if ref.deleted or ref.finished or not alive(state, ref, lease):
            created = ref.deleted
            if created:
                ref = tracker.create_child(key, name=name, kind=kind, tags=tags, config_hash=config_hash)
            if take(tracker, key, state.gen + 1, ref.run_id, token):
                return _own(tracker, ref, token, resumed=not created)
            if created:
                tracker.delete_run(ref.run_id)
            continue
        if log is not None and not told:
            log(f"{key}: another process ({state.token}) is computing it: waiting for its result")
            told = True
        time.sleep(poll_s())


def _own(tracker: Tracker, ref: RunRef, token: str, *, resumed: bool) -> Acquired:
    tracker.set_tags(ref.run_id, {OWNER_TAG: token, HEARTBEAT_TAG: f"{token} {time.time():.0f}"})
    if resumed and ref.status != "RUNNING":
        tracker.set_running(ref.run_id)
        ref.status = "RUNNING"
    return Acquired(ref, False, token=token, resumed=resumed)


class Heartbeat:
    """Refreshes the owner's heartbeat on its run every ``lease / 6`` seconds, in a daemon thread, until stopped.
    A failed refresh is ignored (the next one tries again); it never delays the step."""

    def __init__(self, tracker: Tracker, run_id: str, token: str) -> None:
        self.tracker, self.run_id, self.token = tracker, run_id, token
        self.interval = max(0.5, lease_s() / 6)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ahps-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tracker.offline:
                return
            try:
                self.tracker.call("heartbeat", lambda: self.tracker.apply(
                    self.run_id, {"op": "tags", "tags": {HEARTBEAT_TAG: f"{self.token} {time.time():.0f}"}}))
            except Exception:  # noqa: BLE001 - a heartbeat must never break the step
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def still_owner(tracker: Tracker, key: str, token: str) -> bool:
    """Whether ``token`` still holds the latest claim of ``key`` (True when it cannot be known)."""
    try:
        state = current(tracker, key)
    except TrackingUnavailableError:
        return True
    return state is None or state.token == token


__all__ = ["CLAIM_PREFIX", "HEARTBEAT_TAG", "LEASE_ENV", "POLL_ENV", "Acquired", "ClaimState", "Heartbeat",
           "acquire", "alive", "claim_param", "current", "lease_s", "new_token", "poll_s", "still_owner", "take"]

"""The tracking journal: what could not reach MLflow, kept on disk and replayed later without duplicates.

When the tracking store stops answering (a :class:`~ahps_core.errors.TrackingUnavailableError`: the time budget of
:mod:`ahps_core.tracking.policy` spent on transient failures), a :class:`~ahps_core.tracking.client.Tracker` stops
calling it for the rest of the process and appends every operation it is asked for to its journal instead: one
JSON-lines file per process under ``<root>/<run group>/`` (``root``: ``$AHPS_TRACKING_JOURNAL``, else
``~/.cache/ahps/tracking-journal``; ``ahps run`` uses ``<output dir>/tracking-journal``). Files to upload are
copied next to it, so the journal is complete on its own. Runs created while offline get a placeholder id
(``offline:...``) and a ``create`` record (the run key, name, tags, identity, parent).

:func:`replay` (``ahps sync``, and the first step of the next run of the same run group) sends the journal: a
placeholder run becomes the run its key already has (a FINISHED run with the same identity means someone else
completed it: its journaled operations are dropped), else a new run under the group's parent. Every operation is
idempotent -- metrics keep the timestamp they were journaled with (MLflow stores a metric with the same key,
value, step and timestamp once), params are logged once, tags and artifacts are overwritten, status is set --
so a replay that is interrupted can simply be run again, and nothing is logged twice. A replayed file is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ahps_core.errors import AhpsError, TrackingError

if TYPE_CHECKING:
    from ahps_core.tracking.client import Tracker

JOURNAL_ENV = "AHPS_TRACKING_JOURNAL"
PLACEHOLDER = "offline:"
_SKIP = "-"


def journal_root() -> Path:
    """Where journals are written: ``$AHPS_TRACKING_JOURNAL``, else ``~/.cache/ahps/tracking-journal``."""
    raw = os.environ.get(JOURNAL_ENV, "").strip()
    return Path(raw) if raw else Path.home() / ".cache" / "ahps" / "tracking-journal"


def is_placeholder(run_id: str | None) -> bool:
    return bool(run_id) and str(run_id).startswith(PLACEHOLDER)


def new_placeholder() -> str:
    return f"{PLACEHOLDER}{uuid.uuid4().hex}"


def group_dir(root: Path, run_group: str) -> Path:
    from ahps_core.storage import slug

    return Path(root) / slug(run_group or "no-group")


class Journal:
    """The journal file of one process and run group (module docstring); created on the first append."""

    def __init__(self, root: Path, *, experiment: str, run_group: str) -> None:
        self.dir = group_dir(root, run_group)
        self.path = self.dir / f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.header = {"op": "header", "experiment": experiment, "run_group": run_group, "created": time.time()}
        self.count = 0
        self.runs: set[str] = set()

    def append(self, record: dict[str, Any]) -> None:
        """Append one operation (a JSON line; the header first)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lines = [] if self.path.exists() else [self.header]
            with open(self.path, "a", encoding="utf-8") as fh:
                for line in [*lines, record]:
                    fh.write(json.dumps(line, default=str) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise TrackingError(f"MLflow is unavailable and the tracking journal {self.path} cannot be written: "
                                f"{exc.strerror}") from None
        if record.get("op") != "create":
            self.count += 1
        if record.get("run"):
            self.runs.add(str(record["run"]))

    def keep_file(self, path: str | os.PathLike[str]) -> str:
        """A copy of ``path`` beside the journal (the original may be temporary); returns the copy's path."""
        dest = files_dir(self.path) / uuid.uuid4().hex[:12] / Path(path).name
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        except OSError as exc:
            raise TrackingError(f"MLflow is unavailable and {path} cannot be copied to the tracking journal: "
                                f"{exc.strerror}") from None
        return str(dest)


def files_dir(journal_file: Path) -> Path:
    """Where the files a journal needs are kept: ``<journal file without .jsonl>.files/``."""
    return journal_file.with_name(journal_file.stem + ".files")


def pending_files(root: Path, run_group: str | None = None) -> list[Path]:
    """The journal files waiting under ``root`` (of ``run_group`` only, when given), oldest first."""
    root = Path(root)
    dirs = [group_dir(root, run_group)] if run_group is not None else sorted(p for p in root.glob("*") if p.is_dir())
    files = [f for d in dirs if d.is_dir() for f in d.glob("*.jsonl")]
    return sorted(files, key=lambda f: f.name)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except ValueError:  # a line torn by a crash while it was written: the operation never happened
            continue


@dataclass
class ReplayReport:
    """What :func:`replay` did: operations sent, runs created or found, runs already complete (skipped), files
    replayed and left (with the reason)."""

    sent: int = 0
    runs: int = 0
    skipped_runs: int = 0
    files: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (f"replayed {self.sent} MLflow operations into {self.runs} runs from {len(self.files)} journal file(s)"
                + (f"; {self.skipped_runs} run(s) were already complete in MLflow (not logged again)"
                   if self.skipped_runs else ""))
        return text + (f"; {len(self.failed)} file(s) left: {self.failed[0]}" if self.failed else "")


def replay(tracking_uri: str, root: Path, *, run_group: str | None = None,
           log: Callable[[str], None] | None = None) -> ReplayReport:
    """Send the journals under ``root`` (of ``run_group`` only, when given) to ``tracking_uri`` (module
    docstring). A file that cannot be sent is kept, named in :attr:`ReplayReport.failed`, for the next replay."""
    from ahps_core.tracking.client import Tracker

    report = ReplayReport()
    for path in pending_files(root, run_group):
        records = list(_records(path))
        if not records or records[0].get("op") != "header":
            continue
        head = records[0]
        tr = Tracker(tracking_uri, head.get("experiment") or "ahps", str(head.get("run_group") or ""))
        tr.journaling = False  # a replay that fails keeps its file: it never writes a new journal
        try:
            sent, runs, skipped = _replay_file(tr, records[1:])
        except AhpsError as exc:
            report.failed.append(f"{path}: {exc}")
            if log:
                log(f"journal {path} not replayed: {exc}")
            continue
        report.sent += sent
        report.runs += runs
        report.skipped_runs += skipped
        report.files.append(str(path))
        path.unlink(missing_ok=True)
        shutil.rmtree(files_dir(path), ignore_errors=True)
    return report


def _replay_file(tr: Tracker, records: list[dict[str, Any]]) -> tuple[int, int, int]:
    ids: dict[str, str] = {}
    sent = runs = skipped = 0
    for rec in records:
        op, run = rec.get("op"), str(rec.get("run") or "")
        if op == "create":
            real = _resolve(tr, rec, ids)
            ids[run] = real
            runs += real != _SKIP
            skipped += real == _SKIP
            continue
        target = ids.get(run, run) if is_placeholder(run) else run
        if target == _SKIP or is_placeholder(target):
            continue
        tr.apply(target, rec)
        sent += 1
    return sent, runs, skipped


def _resolve(tr: Tracker, rec: dict[str, Any], ids: dict[str, str]) -> str:
    """The real run of a ``create`` record (module docstring); :data:`_SKIP` when its key is already complete."""
    if rec.get("kind") == "parent":  # the group's parent when it exists (as it is), else created as journaled
        found = tr.find_parent()
        if found is not None:
            tr.parent_id = found.run_id
            return found.run_id
        return tr.ensure_parent(name=rec.get("name"), params=rec.get("params") or None,
                                tags=rec.get("tags") or None).run_id
    key = str(rec["key"])
    ref = tr.find(key)
    identity_tag, identity = rec.get("identity_tag"), rec.get("identity")
    if ref is not None and ref.finished and identity_tag and ref.tags.get(identity_tag) == identity:
        return _SKIP
    if ref is not None:
        return ref.run_id
    parent = str(rec.get("parent") or "")
    if is_placeholder(parent):
        parent = ids.get(parent, "")
    if parent in ("", _SKIP):
        parent = tr.parent_id
    return tr.create_child(key, name=str(rec.get("name") or key), tags=dict(rec.get("tags") or {}),
                           parent_id=parent).run_id


__all__ = ["JOURNAL_ENV", "Journal", "ReplayReport", "is_placeholder", "journal_root", "new_placeholder",
           "pending_files", "replay"]

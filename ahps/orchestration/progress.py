"""Terminal conventions of the local runner's output: colour only on a terminal, and an overall progress line.

* :func:`want_color`: ANSI colour codes only when the stream is a terminal, ``NO_COLOR`` is unset and ``TERM`` is
  not ``dumb`` (https://no-color.org). kfp 2.17's local runner colours task names and statuses unconditionally
  (``kfp.local.logging_utils.color_text``), so its lines are stripped (:data:`ANSI`) everywhere else, log files
  included.
* :class:`TaskProgress`: ``[ahps run] k/N tasks done (...), elapsed, ETA`` after each finished task; ``N`` counts
  the tasks of the compiled DAG with each ParallelFor body counted once per iteration (:func:`count_tasks`).
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from typing import Any, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: kfp's line for a finished task (after :data:`ANSI` is stripped): ``Task 'train' finished with status SUCCESS``.
TASK_DONE = re.compile(r"Task '([^']+)' finished with status (\w+)")


def want_color(stream: Any) -> bool:
    """Whether ANSI colour may be written to ``stream``: a terminal, no ``NO_COLOR``, ``TERM`` not ``dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def iterations(args: dict[str, Any]) -> int:
    """The expected ParallelFor iterations (packs) of a local run of ``args``: the architectures (targets or
    sampled cells) in packs of ``pack`` (``pack`` 0: one training per task, every arm x seed)."""
    n = len(args["targets"]) if "targets" in args else int(args.get("sample_size", 1) or 1)
    pack = int(args.get("pack", 1) or 0)
    if pack <= 0:
        arms = 2 if "fixed_lr" in args else 1
        return max(1, n * arms * max(1, len(args.get("seeds") or [0])))
    return max(1, math.ceil(n / pack))


def count_tasks(pipeline_spec: Any, loop_iterations: int) -> int:
    """The tasks a run of the compiled ``pipeline_spec`` executes: each task of the root DAG once, each task of a
    ParallelFor body ``loop_iterations`` times."""
    total = 0
    for task in pipeline_spec.root.dag.tasks.values():
        if task.WhichOneof("iterator"):
            body = pipeline_spec.components[task.component_ref.name].dag.tasks
            total += len(body) * loop_iterations
        else:
            total += 1
    return total


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TaskProgress:
    """Counts finished tasks and writes one progress line per finished task to ``out`` (thread-safe). The ETA is
    the mean time per finished task times the tasks left (tasks differ in cost: an estimate, said so)."""

    def __init__(self, total: int, out: TextIO, label: str = "ahps run", unit: str = "tasks") -> None:
        self.total, self.out, self.label, self.unit = max(1, total), out, label, unit
        self.done = 0
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def task_done(self, name: str, status: str = "SUCCESS") -> None:
        with self.lock:
            self.done += 1
            self.total = max(self.total, self.done)
            elapsed = time.monotonic() - self.started
            left = self.total - self.done
            eta = f", ETA ~{_duration(elapsed / self.done * left)}" if left else ""
            state = "" if status == "SUCCESS" else f" {status}"
            self.out.write(f"[{self.label}] {self.done}/{self.total} {self.unit} done ({name}{state}), "
                           f"{_duration(elapsed)} elapsed{eta}\n")
            self.out.flush()


__all__ = ["ANSI", "TASK_DONE", "TaskProgress", "count_tasks", "iterations", "want_color"]

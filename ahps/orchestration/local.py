"""Running a pipeline on kfp's local runner (``ahps run``): the local defaults of each pipeline, the run itself
(SubprocessRunner in this interpreter, no venv per task), a filtered view of its output and its summary.

The local defaults: the architectures are packed into as many training tasks as run in parallel
(:func:`local_pack`); ``transfer`` keeps its checkpoints under ``<output dir>/checkpoints`` (an interrupted run
resumes its trainings); ``reevaluate`` runs on the 3-architecture NATS-Bench fixture shipped with ahps, a tiny
generated dataset in the real CIFAR / ImageNet16 formats under ``<output dir>/synthetic-data`` (written when
missing, after every parameter was checked) and a tiny network and budget (:data:`LOCAL_BUDGET`): a smoke test of
the pipeline, and every report of it says so.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from ahps_core.checks import check_writable_dir
from ahps_core.errors import OrchestrationError, redact_secrets
from ahps_core.jsonio import read_json
from ahps_core.steps.common import SUMMARY_FILE
from pipelines import PipelineDef
from pipelines.cluster import TaskSettings

from ahps.orchestration.params import default_run_group, validated
from ahps.orchestration.progress import ANSI as _ANSI
from ahps.orchestration.progress import TASK_DONE, TaskProgress, count_tasks, iterations, want_color

#: What ``ahps run reevaluate`` runs besides the generated data: the fixture's 3 cells, a tiny network and budget,
#: one seed (each is a deviation from NAS-Bench-201's protocol, and the report lists them).
LOCAL_BUDGET = {"sample_size": 3, "epochs": 2, "C": 4, "N": 1, "batch_size": 64, "seeds": [777]}
_IGNORED_WARNINGS = ("have no effect in the current local runner", "non-Python base image")


def _transfer_defaults(work: Path) -> dict[str, Any]:
    return {"checkpoint_root": str(work / "checkpoints")}


def _reevaluate_defaults(work: Path) -> dict[str, Any]:
    from ahps_core.data.synthetic import SYNTHETIC_MANIFEST

    data = work / "synthetic-data"
    return {"benchmark": "fixture", "data_source": str(data), "checksums_file": str(data / SYNTHETIC_MANIFEST),
            **LOCAL_BUDGET, "checkpoint_root": str(work / "checkpoints")}


LOCAL_DEFAULTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "transfer": _transfer_defaults, "reevaluate": _reevaluate_defaults,
}


def local_pack(args: dict[str, Any], parallelism: int) -> int:
    """``pack`` of a local run: the architectures (targets, or sampled cells) spread over the local runner's
    ``parallelism`` concurrent tasks, one pack per task, so each task's start (a process, its imports) is paid
    once per slot rather than once per architecture."""
    n = len(args["targets"]) if "targets" in args else int(args.get("sample_size", 1))
    return max(1, math.ceil(n / max(1, parallelism)))


def local_params(pipe: PipelineDef, given: dict[str, Any], *, output_dir: Path, tracking_uri: str,
                 run_group: str | None, parallelism: int | None = None) -> dict[str, Any]:
    """The full, checked parameter set of a local run: the pipeline's defaults, its local defaults, ``given``;
    the run group given or derived from the parameters (:func:`default_run_group`); the tracking store checked;
    generated data written when the run uses it and it is missing. With ``parallelism`` and no ``pack`` given,
    ``pack`` is :func:`local_pack`'s."""
    from ahps_core.steps.params import generated_manifest
    from ahps_core.tracking import check_tracking_uri, prepare_store, sqlite_path

    given = {**given, "tracking_uri": tracking_uri}
    extra = LOCAL_DEFAULTS[pipe.name](output_dir)
    if run_group:
        given["run_group"] = run_group
    elif not given.get("run_group"):
        given["run_group"] = default_run_group(pipe.name, {**pipe.defaults(), **extra, **given})
    args = validated(pipe, given, local=True, extra=extra)
    if parallelism and "pack" in args and "pack" not in given:
        args["pack"] = local_pack(args, parallelism)
    args["tracking_uri"] = check_tracking_uri(args["tracking_uri"])  # before anything is trained
    check_writable_dir(output_dir, "--output-dir")
    if sqlite_path(args["tracking_uri"]) is not None:  # a fresh SQLite store gets its schema once, now
        prepare_store(args["tracking_uri"])
    manifest = generated_manifest(args) if "checksums_file" in args else None
    if manifest is not None and not manifest.is_file():
        from ahps_core.data.synthetic import write_synthetic_datasets

        write_synthetic_datasets(manifest.parent)
    return args


class FilteredStdout(io.TextIOBase):
    """Tees kfp's local-runner output to a log file (without ANSI codes); echoes to ``real`` only ahps' own
    progress lines (``[ahps ...]``) and task failures, or every line with ``verbose`` (coloured only when
    :func:`~ahps.orchestration.progress.want_color`). Finished tasks go to ``progress``. After ``interrupted`` is
    set nothing more is echoed (the tasks' KeyboardInterrupt tracebacks and FAILURE lines stay in the log).
    Thread-safe (ParallelFor iterations run in threads)."""

    _keep = re.compile(r"\[ahps |ERROR|finished with status .*FAILURE")

    def __init__(self, real, log_file, *, verbose: bool = False, progress: TaskProgress | None = None) -> None:
        super().__init__()
        self.real, self.log = real, log_file
        self.verbose, self.progress = verbose, progress
        self.color = verbose and want_color(real)
        self.interrupted = threading.Event()
        self.buf = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.buf += text
            while "\n" in self.buf:
                line, self.buf = self.buf.split("\n", 1)
                self._line(line)
            return len(text)

    def _line(self, line: str) -> None:
        plain = redact_secrets(_ANSI.sub("", line))
        self.log.write(plain + "\n")
        if self.interrupted.is_set():
            return
        if self.verbose:
            self.real.write((redact_secrets(line) if self.color else plain) + "\n")
        else:
            clean = plain.strip()
            if self._keep.search(clean) and "Traceback" not in clean:
                self.real.write(clean + "\n")
                self.real.flush()  # a pipe (`| tee`) sees each progress line when it happens
        done = TASK_DONE.search(plain)
        if done and self.progress is not None:
            self.progress.task_done(done.group(1), done.group(2))

    def flush(self) -> None:
        with self.lock:
            if self.buf:
                self._line(self.buf)
                self.buf = ""
            self.log.flush()
            self.real.flush()


class RunInterrupted(Exception):
    """Ctrl-C (SIGINT) during :func:`run_locally`; ``log_path`` holds the output so far."""

    def __init__(self, log_path: Path) -> None:
        super().__init__(f"interrupted (log: {log_path})")
        self.log_path = log_path


def failure_message(log_path: Path) -> str:
    """The last error line of a failed task (e.g. ``TrackingError: ...``) from the run's log."""
    try:
        lines = [_ANSI.sub("", ln).strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for line in reversed(lines):
        m = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception))(?::\s*(.*))?$", line)
        if m and not line.startswith(("RuntimeError: Pipeline", "RuntimeError: Task")):
            return f"{m.group(1)}: {m.group(2) or ''}".strip()
    return ""


@dataclass
class LocalRun:
    """The outcome of :func:`run_locally`: the pipeline's summary, where it is, the run's log, and whether the
    local runner ignored cluster settings (GPU request, placement, secrets, volumes)."""

    summary: dict[str, Any]
    summary_dir: Path
    log_path: Path
    ignored_cluster_settings: bool = False
    journal: list[Path] = field(default_factory=list)  #: journal files of operations that did not reach MLflow


def default_parallelism() -> int:
    """Concurrent training tasks of a local run: the number of CPU cores, at most 4."""
    return max(1, min(os.cpu_count() or 1, 4))


def run_locally(pipe: PipelineDef, args: dict[str, Any], *, output_dir: Path, parallelism: int, verbose: bool,
                echo: Callable[[str], None], out: TextIO | None = None) -> LocalRun:
    """Run ``pipe`` with the checked parameters ``args`` on kfp's local runner, pipeline root ``output_dir``;
    ``echo`` gets the start line. Output on ``out`` (default stdout; ``ahps run --json`` passes stderr): the
    progress lines of the steps and one overall ``k/N tasks done`` line per finished task (every line with
    ``verbose``); the whole task output, without ANSI codes, in ``<output_dir>/logs/``. A failed task is an
    OrchestrationError naming the task's last error and the log; Ctrl-C is :class:`RunInterrupted`."""
    from kfp import local

    from ahps_core.tracking import JOURNAL_ENV, journal_root, pending_files

    out = out if out is not None else sys.stdout
    os.environ.setdefault(JOURNAL_ENV, str(output_dir / "tracking-journal"))  # the tasks inherit it
    cores = os.cpu_count() or 1
    if parallelism > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // parallelism)))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLBACKEND", "Agg")
    func = pipe.load().build(TaskSettings(parallelism=parallelism, retries=0, cache_dir=""))
    log_dir = output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{pipe.name}-{datetime.now():%Y%m%d-%H%M%S}.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir), raise_on_error=True)
    total = count_tasks(func.pipeline_spec, iterations(args))
    echo(f"running pipeline {pipe.name!r} on kfp's local runner (run group {args['run_group']}, {parallelism} "
         f"parallel tasks, about {total} tasks); log: {log_path}")
    ignored: list[str] = []

    def on_warning(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if any(s in text for s in _IGNORED_WARNINGS):
            ignored.append(text)
            return
        print(f"{category.__name__}: {text}", file=sys.stdout)

    with open(log_path, "w") as log_file, warnings.catch_warnings(), _sigint_flag() as interrupted:
        warnings.showwarning = on_warning
        warnings.simplefilter("always")
        stream = FilteredStdout(out, log_file, verbose=verbose, progress=TaskProgress(total, out))
        stream.interrupted = interrupted
        try:
            with contextlib.redirect_stdout(stream):
                task = func(**args)
        except KeyboardInterrupt:
            interrupted.set()
            raise RunInterrupted(log_path) from None
        except RuntimeError as exc:
            if interrupted.is_set():  # a task died of the same Ctrl-C first
                raise RunInterrupted(log_path) from None
            log_file.flush()
            cause = failure_message(log_path) if not verbose else ""
            first = _ANSI.sub("", str(exc)).splitlines()[0]
            raise OrchestrationError(f"{first}{' ' + cause if cause else ''} (full log: {log_path})") from None
        finally:
            stream.flush()
    summary_dir = Path(task.output.path)
    return LocalRun(read_json(summary_dir, SUMMARY_FILE), summary_dir, log_path, bool(ignored),
                    pending_files(journal_root(), args["run_group"]))


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """An event set on SIGINT (then KeyboardInterrupt as usual), so that a task that died of the same Ctrl-C
    (the terminal signals the whole process group) is not reported as a failure."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["LOCAL_BUDGET", "LOCAL_DEFAULTS", "FilteredStdout", "LocalRun", "RunInterrupted", "default_parallelism",
           "failure_message", "local_pack", "local_params", "run_locally"]

"""What a user sees of ``ahps run`` (issue 15, first hour): ``--json`` keeps stdout to the JSON document, an overall
``k/N tasks done`` line, no ANSI codes off a terminal nor in log files, Ctrl-C says how to resume and exits 130, the
printed ``mlflow ui`` command works as written without the venv on PATH."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ahps.orchestration.local import FilteredStdout
from ahps.orchestration.progress import TaskProgress, count_tasks, iterations, want_color
from tests.conftest import REPO, ahps_cmd

ANSI = re.compile(r"\x1b\[")
#: one architecture, one epoch, a 2-point LR grid with one seed: the whole transfer pipeline, 4 tasks
SMALL = ["-p", "targets=2_02", "-p", "epochs=1", "-p", "max_steps_per_epoch=8", "-p", "lr_grid=[0.1,0.3]",
         "-p", "lr_seeds=1", "--parallelism", "1"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert want_color(_Tty()) and not want_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not want_color(_Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not want_color(_Tty())


def test_filtered_output_strips_ansi_from_the_log_and_counts_tasks():
    term, log = io.StringIO(), io.StringIO()
    progress = TaskProgress(3, term)
    out = FilteredStdout(term, log, verbose=True, progress=progress)
    out.write("12:00:00.000 - INFO - Task \x1b[96m'train'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n")
    out.write("    [ahps train] 2_02 autoscaled seed 0: epoch 1/1\n")
    out.flush()
    assert not ANSI.search(log.getvalue()) and not ANSI.search(term.getvalue())  # a StringIO is no terminal
    assert "Task 'train' finished with status SUCCESS" in log.getvalue()
    assert "[ahps run] 1/3 tasks done (train)" in term.getvalue() and "ETA" in term.getvalue()
    out.interrupted.set()
    out.write("Task 'train' finished with status FAILURE\n")
    assert "FAILURE" not in term.getvalue() and "FAILURE" in log.getvalue()


def test_task_count_of_the_compiled_dag():
    from pipelines import get_pipeline
    from pipelines.cluster import TaskSettings

    func = get_pipeline("transfer").load().build(TaskSettings(parallelism=2, retries=0, cache_dir=""))
    args = {"targets": ["2_02", "2_22", "2_02_002"], "pack": 2, "seeds": [0], "fixed_lr": 0.0}
    assert iterations(args) == 2 and iterations({**args, "pack": 0}) == 6  # 3 archs x 2 arms x 1 seed
    assert count_tasks(func.pipeline_spec, iterations(args)) == 5  # find-base-lr, transfer, 2 x train, compare


def test_run_json_stdout_is_only_json_progress_on_stderr_no_ansi(tmp_path):
    r = subprocess.run([*ahps_cmd(), "run", *SMALL, "--json"], capture_output=True, text=True, cwd=tmp_path,
                       env=_env(TERM="xterm"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)  # nothing but the document
    assert summary["pipeline"] == "transfer" and [row["arch"] for row in summary["rows"]] == ["2_02"]
    assert "[ahps find-base-lr]" in r.stderr and "[ahps run] 4/4 tasks done (compare)" in r.stderr
    assert "[ahps run] 1/4 tasks done (find-base-lr)" in r.stderr and "ETA" in r.stderr
    assert not ANSI.search(r.stderr)
    logs = list((tmp_path / "ahps_outputs" / "logs").glob("transfer-*.log"))
    assert len(logs) == 1 and "finished with status SUCCESS" in logs[0].read_text()
    assert not ANSI.search(logs[0].read_text())  # kfp colours it; ahps' log files carry no ANSI codes


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen([*ahps_cmd(), "run", *SMALL], stdout=fo, stderr=fe, cwd=tmp_path, env=_env(),
                                start_new_session=True)  # its own process group, as a terminal's foreground job
        try:
            deadline = time.monotonic() + 300
            while "[ahps find-base-lr]" not in out.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, "no progress line within 300 s"
                time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text() + err.read_text()
    assert code == 130, text[-3000:]
    assert "FAILURE" not in text and "Traceback" not in text
    assert "interrupted: the run of pipeline 'transfer'" in text
    assert "to resume, run the same command again: ahps run -p targets=2_02" in text
    assert "reuses every training that finished" in text and "checkpoints" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_printed_mlflow_ui_command_works_without_the_venv_on_path(tmp_path, monkeypatch):
    """The line ``ahps run`` prints, run as written from the directory it ran in, with PATH lacking the venv (as
    after ``make run`` without activating .venv): the UI starts and answers /health."""
    from ahps_core.tracking import local_store_uri, prepare_store, ui_command

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    uri = local_store_uri("mlruns")
    prepare_store(uri)
    line = ui_command(uri)
    argv = shlex.split(line)
    assert argv[1:3] == ["ui", "--backend-store-uri"] and argv[3] == uri
    if Path(sys.executable).parent != Path("/usr/bin"):
        assert argv[0] != "mlflow"  # named by path: plain `mlflow` is not on this PATH
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([*argv, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"`{line}` exited {proc.returncode}: {log.read_text()[-2000:]}")
                assert time.monotonic() < deadline, f"`{line}` did not answer within 300 s"
                time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)

"""The fast exit of task processes: armed only in kfp's executor (or when forced), exit status 0 only when the
task succeeded, output flushed, skipped teardown."""

from __future__ import annotations

import subprocess
import sys

from ahps_core import fast_exit
from tests.conftest import REPO


def _child(body: str) -> subprocess.CompletedProcess:
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('teardown handler ran', flush=True))\n"
            "from ahps_core import fast_exit\n" + body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_not_armed_outside_kfp_executor():
    assert not fast_exit.in_kfp_executor()
    assert fast_exit.install() is False  # this pytest process keeps its normal exit (and exit status)


def test_forced_fast_exit_skips_the_earlier_handlers_and_flushes_output():
    r = _child("assert fast_exit.install(force=True)\nsys.stdout.write('result written')\n")
    assert r.returncode == 0 and r.stdout == "result written"  # flushed; the earlier atexit handler skipped
    r = _child("import os\nos.environ['AHPS_FAST_EXIT'] = '0'\nassert not fast_exit.install(force=True)\n")
    assert r.returncode == 0 and "teardown handler ran" in r.stdout


def test_a_failed_task_keeps_its_traceback_and_status():
    r = _child("fast_exit.install(force=True)\nraise RuntimeError('step failed')\n")
    assert r.returncode == 1 and "RuntimeError: step failed" in r.stderr
    assert "teardown handler ran" in r.stdout  # the normal exit path ran

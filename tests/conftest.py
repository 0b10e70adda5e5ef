"""Shared test set-up: quiet, offline, deterministic."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def ahps_cmd() -> list[str]:
    """The ``ahps`` command, run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "ahps.cli"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def one_line_error(r) -> str:
    """The single ``error: ...`` line of a failed CLI run (non-zero exit, no traceback), for assertions."""
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """A real S3 API server (moto's ThreadedMotoServer) on a free loopback port; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def mlflow_server_process(args: list[str], port: int, workdir: Path, env: dict[str, str],
                          deadline_s: float = 120.0) -> Iterator[str]:
    """A real ``mlflow server ARGS`` (listening on 127.0.0.1:``port``) started in its own process group, with its
    log in ``workdir/server.log``; yields its URL once ``/health`` answers, stops the whole group afterwards."""
    import signal
    import subprocess
    import time
    import urllib.request

    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], cwd=workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"  # the child keeps its own copy of the log file descriptor
    try:
        end = time.monotonic() + deadline_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n"
                            f"{(workdir / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"mlflow server not healthy after {deadline_s}s:\n"
                            f"{(workdir / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this helper started (uvicorn workers)
            proc.wait(timeout=10)

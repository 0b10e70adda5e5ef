"""Tracking under faults, with real processes: two simultaneous ``ahps run`` of one run group (against a real
``mlflow server`` and against a fresh SQLite store), and an MLflow server stopped in the middle of a run, then
``ahps sync``. What MLflow holds afterwards is read back through its REST API (server) or the database itself
(SQLite): one parent, one run per training and each metric once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, ahps_cmd, free_port, mlflow_server_process

TARGETS = "2_02,2_22"
TRAININGS = 4  # 2 targets x 2 arms x 1 seed
TINY = ["-p", f"targets={TARGETS}", "-p", "epochs=2", "-p", "max_steps_per_epoch=6", "-p", "lr_grid=[0.1,0.3]",
        "-p", "lr_seeds=1", "--parallelism", "2"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "AHPS_CLAIM_POLL_S": "0.5", **extra}


def start(args: list[str], cwd: Path, **extra: str) -> subprocess.Popen:
    """``ahps ARGS`` in ``cwd``, in its own process group (so that a test can kill it with its task processes)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([*ahps_cmd(), *args], cwd=cwd, env=env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def rest(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def server_runs(url: str, experiment: str = "ahps") -> list[dict]:
    """Every active run of ``experiment``: info, tags, and the full history of each of its metrics."""
    exp = rest(url, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    runs, token = [], None
    while True:
        body = {"experiment_ids": [exp["experiment_id"]], "max_results": 1000, **({"page_token": token} if token
                                                                                  else {})}
        page = rest(url, "/api/2.0/mlflow/runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            break
    out = []
    for r in runs:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        history = {}
        for m in r["data"].get("metrics", []):
            got = rest(url, f"/api/2.0/mlflow/metrics/get-history?run_id={r['info']['run_id']}&metric_key={m['key']}")
            history[m["key"]] = [(h["step"], h["value"]) for h in got.get("metrics", [])]
        out.append({"id": r["info"]["run_id"], "status": r["info"]["status"], "tags": tags, "history": history})
    return out


def sqlite_runs(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    runs = {rid: {"id": rid, "status": st, "tags": {}, "history": {}}
            for rid, st in con.execute("select run_uuid, status from runs where lifecycle_stage = 'active'")}
    for key, value, rid in con.execute("select key, value, run_uuid from tags"):
        if rid in runs:
            runs[rid]["tags"][key] = value
    for key, step, value, rid in con.execute("select key, step, value, run_uuid from metrics order by step"):
        if rid in runs:
            runs[rid]["history"].setdefault(key, []).append((step, value))
    con.close()
    return list(runs.values())


def check_once_each(runs: list[dict], group: str, epochs: int = 2) -> None:
    """Exactly one parent, one lr-search, one compare and one run per training of ``group``, all FINISHED, and
    every metric of every run logged once per step."""
    mine = [r for r in runs if r["tags"].get("ahps.run_group") == group]
    kinds = sorted(r["tags"].get("ahps.kind") for r in mine)
    assert kinds == sorted(["parent", "lr-search", "compare"] + ["train"] * TRAININGS), kinds
    assert {r["status"] for r in mine} == {"FINISHED"}, [(r["tags"].get("ahps.kind"), r["status"]) for r in mine]
    keys = [r["tags"].get("ahps.run_key") for r in mine if r["tags"].get("ahps.kind") != "parent"]
    assert len(keys) == len(set(keys))
    for r in mine:
        for key, points in r["history"].items():
            steps = [s for s, _ in points]
            assert len(steps) == len(set(steps)), (r["tags"].get("ahps.run_key"), key, points)
    for r in mine:
        if r["tags"].get("ahps.kind") == "train":
            assert [s for s, _ in r["history"]["train_loss"]] == list(range(1, epochs + 1))


@pytest.fixture
def mlflow_server(tmp_path):
    d = tmp_path / "server"
    d.mkdir()
    port = free_port()
    args = ["--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with mlflow_server_process(args, port, d, env(), 120) as url:
        yield url


def test_two_runs_of_one_group_against_a_server_log_everything_once(mlflow_server, tmp_path):
    group = "race-server"
    args = ["run", *TINY, "--tracking-uri", mlflow_server, "--run-group", group]
    a, b = start(args, tmp_path / "a"), start(args, tmp_path / "b")
    (ra, oa, ea), (rb, ob, eb) = finish(a), finish(b)
    assert ra == 0 and rb == 0, (ea[-2000:], eb[-2000:])
    check_once_each(server_runs(mlflow_server), group)
    trained = oa.count("-> MLflow run") + ob.count("-> MLflow run")
    assert trained == TRAININGS, (oa, ob)  # each training computed by one of the two
    table = lambda text: [ln for ln in text.splitlines() if ln.startswith(("2_02", "2_22"))]  # noqa: E731
    assert table(oa) == table(ob) and len(table(oa)) == 2


def test_two_runs_of_one_group_on_a_fresh_sqlite_store_log_everything_once(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    args = ["run", *TINY, "--tracking-uri", uri, "--run-group", "race-sqlite"]
    a, b = start(args, tmp_path / "a"), start(args, tmp_path / "b")
    (ra, _, ea), (rb, _, eb) = finish(a), finish(b)
    assert ra == 0 and rb == 0, (ea[-2000:], eb[-2000:])
    assert "duplicate column" not in ea + eb
    check_once_each(sqlite_runs(db), "race-sqlite")


def test_mlflow_outage_mid_run_finishes_the_trainings_then_sync_fills_mlflow_once(tmp_path):
    d = tmp_path / "server"
    d.mkdir()
    port = free_port()
    args = ["--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    budget = "3"
    work = tmp_path / "work"
    group = "outage"
    with mlflow_server_process(args, port, d, env(), 120):
        run = start(["run", *TINY, "-p", "epochs=2", "--tracking-uri", url, "--run-group", group], work,
                    AHPS_TRACKING_TIMEOUT_S=budget)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # stop the server once the LR search is recorded
            try:
                found = [r for r in server_runs(url) if r["tags"].get("ahps.kind") == "lr-search"
                         and r["status"] == "FINISHED"]
            except OSError:
                found = []
            if found or run.poll() is not None:
                break
            time.sleep(0.5)
        assert run.poll() is None, "the run ended before MLflow could be stopped"
    t_stopped = time.monotonic()  # the server's process group is gone now
    code, out, err = finish(run)
    after_s = time.monotonic() - t_stopped
    print(f"MLflow stopped: the run finished its trainings {after_s:.1f} s later (budget {budget} s per call)")
    assert code == 4, (code, err[-3000:])
    assert "Traceback" not in err
    assert "WARNING: MLflow was unavailable" in err and "ahps sync" in err
    assert out.count("not logged, kept in") >= TRAININGS  # each step says what it could not log
    summary = json.loads(next((work / "ahps_outputs").rglob("summary.json")).read_text())
    assert len(summary["rows"]) == 2 and summary["trainings"] == TRAININGS  # every training finished, on disk
    # bounded: each of the remaining steps waits at most the budget once, training itself never waits
    assert after_s < 240, after_s
    journal = work / "ahps_outputs" / "tracking-journal"
    assert list(journal.rglob("*.jsonl"))

    with mlflow_server_process(args, port, d, env(), 120):
        sync = subprocess.run([*ahps_cmd(), "sync", "--tracking-uri", url], cwd=work, env=env(), capture_output=True,
                              text=True, timeout=300)
        assert sync.returncode == 0, sync.stderr[-3000:]
        assert "replayed" in sync.stdout
        assert not list(journal.rglob("*.jsonl"))
        check_once_each(server_runs(url), group)
        again = subprocess.run([*ahps_cmd(), "sync", "--tracking-uri", url], cwd=work, env=env(), capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0 and "nothing to replay" in again.stdout
        rerun = subprocess.run([*ahps_cmd(), "run", *TINY, "-p", "epochs=2", "--tracking-uri", url, "--run-group",
                                group], cwd=work, env=env(), capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert f"trainings: {TRAININGS} ({TRAININGS} reused" in rerun.stdout
        check_once_each(server_runs(url), group)


@pytest.mark.slow
def test_a_killed_owner_is_taken_over_at_once_on_the_same_host(tmp_path):
    """A run left RUNNING by a killed process (same host, its pid gone) is resumed by the next run at once."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    args = ["run", *TINY, "-p", "epochs=40", "-p", "max_steps_per_epoch=50", "--tracking-uri", uri, "--run-group",
            "killed"]
    proc = start(args, tmp_path / "w")
    deadline = time.monotonic() + 300
    db = tmp_path / "store" / "mlflow.db"
    while time.monotonic() < deadline:  # wait until a training is under way: RUNNING, its first epoch logged
        try:
            busy = [r for r in sqlite_runs(db) if r["tags"].get("ahps.kind") == "train" and r["status"] == "RUNNING"
                    and r["history"].get("train_loss")]
        except sqlite3.Error:
            busy = []
        if busy:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its task processes, as a node failure would
    proc.communicate()
    time.sleep(1)
    left = [r for r in sqlite_runs(tmp_path / "store" / "mlflow.db") if r["tags"].get("ahps.kind") == "train"]
    assert any(r["status"] == "RUNNING" for r in left), [r["status"] for r in left]  # killed mid-training
    t0 = time.monotonic()
    again = start([*args], tmp_path / "w", AHPS_CLAIM_LEASE_S="600")
    code, out, err = finish(again)
    assert code == 0, err[-3000:]
    assert time.monotonic() - t0 < 400  # far less than the 600 s lease: the dead owner was seen at once
    assert "(resumed)" in out  # the killed training's run was taken over and resumed, not duplicated
    check_once_each(sqlite_runs(tmp_path / "store" / "mlflow.db"), "killed", epochs=40)

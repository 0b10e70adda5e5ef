"""MLflow tracking against a real ``mlflow server`` on loopback (SQLite backend, proxied artifacts), started by
the test: the Tracker's idempotency and error handling, and a whole ``transfer`` pipeline run -- from the
*compiled* IR YAML, loaded back with kfp and run on the local runner -- checked through MLflow's REST API
(parent run, child runs of both recipes with their tags and params, step metrics, the comparison run)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from ahps_core.errors import ConfigError, TrackingError
from ahps_core.tracking import (
    KIND_TAG,
    RUN_GROUP_TAG,
    RUN_KEY_TAG,
    Tracker,
    check_tracking_uri,
    local_store_uri,
)
from tests.conftest import REPO, ahps_cmd, free_port, mlflow_server_process

STARTUP_DEADLINE_S = 120
TARGETS = ["2_02", "2_22", "2_02_002"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    args = ["--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with mlflow_server_process(args, port, d, {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
                               STARTUP_DEADLINE_S) as url:
        yield url


def rest(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def search_runs(url: str, experiment_id: str, filter_string: str = "") -> list[dict]:
    out, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1000}
        if token:
            body["page_token"] = token
        page = rest(url, "/api/2.0/mlflow/runs/search", body)
        out += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return out


def tags_of(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params_of(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def metrics_of(run: dict) -> dict:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


# --- up-front checks (no server needed) --------------------------------------------------------------------------


def test_unreachable_server_is_one_line_tracking_error(monkeypatch):
    monkeypatch.setenv("AHPS_TRACKING_TIMEOUT_S", "2")  # the pre-check asks again within this budget
    port = free_port()  # nothing listens there
    with pytest.raises(TrackingError) as err:
        check_tracking_uri(f"http://127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in str(err.value) and "cannot be reached" in str(err.value)
    assert "\n" not in str(err.value)


def test_sqlite_store_checks(tmp_path):
    uri = local_store_uri(tmp_path / "store")
    assert check_tracking_uri(uri) == uri
    assert (tmp_path / "store").is_dir()
    (tmp_path / "junk.db").write_text("not a database at all")
    with pytest.raises(TrackingError, match="not a SQLite database"):
        check_tracking_uri(f"sqlite:///{tmp_path / 'junk.db'}")
    with pytest.raises(TrackingError, match="unsupported MLflow tracking URI"):
        check_tracking_uri("ftp://example.org/store")


# --- the Tracker against the server ------------------------------------------------------------------------------


def test_tracker_is_idempotent_and_creates_experiment_once(mlflow_server):
    group = f"unit-{time.time_ns()}"
    experiment = f"race-{time.time_ns()}"
    ids, errors = [], []

    def create():  # parallel creators of one new experiment (the set_experiment race of the cookbook)
        try:
            ids.append(Tracker(mlflow_server, experiment, group).experiment_id)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1 and ids[0] != "0"

    tr = Tracker(mlflow_server, experiment, group)
    parent = tr.ensure_parent(params={"epochs": 2})
    again = Tracker(mlflow_server, experiment, group).ensure_parent(params={"epochs": 2})
    assert again.run_id == parent.run_id and again.reused
    with pytest.raises(ConfigError, match="epochs=2; this run has epochs=3"):
        Tracker(mlflow_server, experiment, group).ensure_parent(params={"epochs": 3})

    key = tr.key("2_02", "autoscaled", 0)
    child = tr.start_run(key, name="c", kind="train", tags={"recipe": "autoscaled"}, config_hash="h1")
    tr.log_history(child.run_id, [{"epoch": 1, "train_loss": 1.5, "eval_acc": None},
                                  {"epoch": 2, "train_loss": 0.5, "eval_acc": 0.9}])
    tr.save_summary(child.run_id, {"eval_acc": 0.9})
    tr.finish(child.run_id)
    reused = tr.start_run(key, name="c", kind="train", config_hash="h1")
    assert reused.run_id == child.run_id and reused.finished
    assert tr.load_summary(reused.run_id) == {"eval_acc": 0.9}
    with pytest.raises(ConfigError, match="another configuration"):
        tr.start_run(key, name="c", kind="train", config_hash="h2")

    runs = search_runs(mlflow_server, ids[0])
    assert len(runs) == 2  # one parent, one child: nothing duplicated
    kid = next(r for r in runs if tags_of(r).get(RUN_KEY_TAG) == key)
    assert tags_of(kid)["mlflow.parentRunId"] == parent.run_id
    hist = rest(mlflow_server,
                f"/api/2.0/mlflow/metrics/get-history?run_id={kid['info']['run_id']}&metric_key=train_loss")
    assert [(m["step"], m["value"]) for m in hist["metrics"]] == [(1, 1.5), (2, 0.5)]


# --- a whole pipeline run, from the compiled YAML ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compiled") / "t.yaml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([*ahps_cmd(), "compile", "transfer", "-o", str(path)], capture_output=True, text=True,
                       env=env, cwd=path.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    return path


def test_compiled_pipeline_reruns_locally_and_tracks_in_mlflow_server(mlflow_server, compiled_yaml, tmp_path,
                                                                      monkeypatch):
    from kfp import components, local

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    group = f"it-{time.time_ns()}"
    experiment = "ahps-it"
    pipeline = components.load_component_from_file(str(compiled_yaml))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "out"))
    task = pipeline(targets=[*TARGETS, "0_02"], seeds=[0], epochs=1, max_steps_per_epoch=8, lr_grid=[0.1, 0.3, 1.0],
                    lr_seeds=1, tracking_uri=mlflow_server, mlflow_experiment=experiment, run_group=group,
                    checkpoint_root=str(tmp_path / "ckpt"))
    summary = json.loads((Path(task.output.path) / "summary.json").read_text())
    assert [r["arch"] for r in summary["rows"]] == TARGETS
    assert [s["arch"] for s in summary["skipped"]] == ["0_02"]

    exp = rest(mlflow_server, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    runs = search_runs(mlflow_server, exp["experiment_id"], f"tags.`{RUN_GROUP_TAG}` = '{group}'")
    kinds = [tags_of(r).get(KIND_TAG) for r in runs]
    assert sorted(kinds) == sorted(["parent", "lr-search", "compare"] + ["train"] * 2 * len(TARGETS))
    parent = next(r for r in runs if tags_of(r)[KIND_TAG] == "parent")
    pid = parent["info"]["run_id"]
    assert parent["info"]["status"] == "FINISHED"
    assert params_of(parent)["family"] == "mlp" and "base_lr" in params_of(parent)
    for r in runs:
        if tags_of(r)[KIND_TAG] != "parent":
            assert tags_of(r)["mlflow.parentRunId"] == pid
            assert r["info"]["status"] == "FINISHED"

    trains = [r for r in runs if tags_of(r)[KIND_TAG] == "train"]
    seen = {(tags_of(r)["arch"], tags_of(r)["recipe"]) for r in trains}
    assert seen == {(a, rec) for a in TARGETS for rec in ("autoscaled", "fixed")}
    for r in trains:
        t, p = tags_of(r), params_of(r)
        for key in ("recipe", "family", "arch", "dataset", "seed", "rule", "convention"):
            assert key in t, key
        assert (t["family"], t["dataset"], t["seed"], t["rule"], t["convention"]) == (
            "mlp", "digits", "0", "sum-cubed", "reference")
        assert p["init"] == ("arch-aware" if t["recipe"] == "autoscaled" else "default")
        assert {"lr", "base_lr", "epochs", "batch_size"} <= set(p)
        assert "final_eval_acc" in metrics_of(r) and "eval_acc" in metrics_of(r)
    base = float(params_of(parent)["base_lr"])
    fixed_lrs = {float(params_of(r)["lr"]) for r in trains if tags_of(r)["recipe"] == "fixed"}
    assert fixed_lrs == {base}
    auto_lrs = {tags_of(r)["arch"]: float(params_of(r)["lr"]) for r in trains if tags_of(r)["recipe"] == "autoscaled"}
    assert auto_lrs["2_02_002"] < auto_lrs["2_02"] < base  # deeper -> smaller transferred LR

    compare = next(r for r in runs if tags_of(r)[KIND_TAG] == "compare")
    m = metrics_of(compare)
    for key in ("kendall_tau_b", "spearman_rho", "mean_accuracy_delta", "autoscaled_wins", "n"):
        assert key in m, key
    assert -1.0 <= m["kendall_tau_b"] <= 1.0 and m["n"] == len(TARGETS)
    arts = rest(mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={compare['info']['run_id']}&path=plots")
    names = {Path(f["path"]).name for f in arts.get("files", [])}
    assert {"accuracy_delta_by_arch.png", "rank_change.png", "predicted_lr_by_arch.png"} <= names
    assert "kendall_tau_b" in metrics_of(parent)

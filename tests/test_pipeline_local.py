"""``ahps run``: the transfer pipeline end to end on kfp's local runner (tiny budget), re-run idempotency, checkpoints
on S3, parameter parsing, and one-line errors for bad parameters. The full default run is marked slow."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from ahps_core.errors import ConfigError
from ahps.orchestration.params import coerce_params, parse_param_args
from ahps_core.steps.params import check_transfer
from pipelines import get_pipeline
from tests.conftest import REPO, ahps_cmd, moto_s3_server, one_line_error

TINY = ["-p", "targets=2_02,2_22,0_02", "-p", "epochs=1", "-p", "max_steps_per_epoch=8",
        "-p", "lr_grid=[0.1,0.3,1.0]", "-p", "lr_seeds=1", "--parallelism", "2"]


def ahps(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*ahps_cmd(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def store_runs(workdir: Path) -> list[dict]:
    """Runs of the local store: kind, status, tags (read with sqlite3: no mlflow import needed)."""
    con = sqlite3.connect(workdir / "mlruns" / "mlflow.db")
    runs = {}
    for run_uuid, status, exp in con.execute("select run_uuid, status, experiment_id from runs"):
        runs[run_uuid] = {"status": status, "experiment_id": exp, "tags": {}}
    for key, value, run_uuid in con.execute("select key, value, run_uuid from tags"):
        runs[run_uuid]["tags"][key] = value
    con.close()
    return list(runs.values())


# --- parameters -------------------------------------------------------------------------------------------------


def test_param_parsing_and_coercion():
    pipe = get_pipeline("transfer")
    raw = parse_param_args(["targets=2_02,2_22", "seeds=[0,1]", "epochs=3", "lr_grid=0.1,1", "base_lr=0.5",
                            "gpu_node_selector={\"a\": \"b\"}", "run_group=123", "data_source="])
    p = coerce_params(pipe, raw)
    assert p == {"targets": ["2_02", "2_22"], "seeds": [0, 1], "epochs": 3, "lr_grid": [0.1, 1], "base_lr": 0.5,
                 "gpu_node_selector": {"a": "b"}, "run_group": "123", "data_source": ""}
    assert coerce_params(pipe, parse_param_args(["targets=2", "seeds=4"])) == {"targets": ["2"], "seeds": [4]}
    with pytest.raises(ConfigError, match="unknown parameter epoch for pipeline 'transfer': accepted are family"):
        coerce_params(pipe, {"epoch": 3})
    with pytest.raises(ConfigError, match=r"epochs='many' is not a valid int"):
        coerce_params(pipe, {"epochs": "many"})
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        parse_param_args(["epochs"])
    with pytest.raises(ConfigError, match="unknown pipeline 'nope': accepted are transfer"):
        get_pipeline("nope")


def test_validation_messages():
    base = get_pipeline("transfer").defaults()
    ok = check_transfer({**base, "targets": ["2_02", "0_02"]}, local=True)
    assert ok["targets"] == ["2_02", "0_02"]
    for change, message in [
        ({"targets": ["0_02"]}, "no target of .* has an input->output path"),
        ({"targets": ["2_0x"]}, "target '2_0x'"),
        ({"seeds": [0, 0]}, "contain duplicates"),
        ({"dataset": "cifar10"}, "needs data_source"),
        ({"data_source": "/data"}, "digits ships with scikit-learn"),
        ({"rule": "linear"}, "unknown rule 'linear': accepted are sum-cubed, effective-depth"),
        ({"s3_secret": "Bad_Name"}, "not a valid Kubernetes secret name"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_transfer({**base, **change}, local=True)
    with pytest.raises(ConfigError, match="tracking_uri is empty"):
        check_transfer(base, local=False)


# --- bad parameters: one line, no traceback, non-zero exit -------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["-p", "family=resnet"], "error: unknown family 'resnet': accepted are mlp, cnn, nb201"),
    (["-p", "dataset=mnist"], "error: unknown dataset 'mnist': accepted are digits, cifar10, cifar10-valid, "
                              "cifar100, ImageNet16-120"),
    (["-p", 'targets=[""]'], "error: targets [''] must be non-empty architecture spec strings"),
    (["-p", "epochs=2", "-p", "lr=0.1"], "error: unknown parameter lr for pipeline 'transfer': accepted are"),
    (["nope"], "error: unknown pipeline 'nope': accepted are transfer"),
])
def test_bad_parameters_are_one_line(tmp_path, args, expected):
    line = one_line_error(ahps("run", *args, cwd=tmp_path))
    assert line.startswith(expected)
    assert not (tmp_path / "ahps_outputs").exists()  # nothing ran


def test_unreachable_tracking_uri_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("AHPS_TRACKING_TIMEOUT_S", "2")  # the pre-check asks again within this budget
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = ahps("run", "--tracking-uri", f"http://127.0.0.1:{port}", *TINY, cwd=tmp_path)
    line = one_line_error(r)
    assert f"MLflow tracking server http://127.0.0.1:{port} cannot be reached" in line
    assert not (tmp_path / "ahps_outputs").exists() and not (tmp_path / "mlruns").exists()


# --- end to end -------------------------------------------------------------------------------------------------


def test_run_end_to_end_then_rerun_reuses_everything(tmp_path):
    t0 = time.perf_counter()
    r = ahps("run", *TINY, cwd=tmp_path)
    first_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    out = r.stdout
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("architecture"))
    assert "predicted LR" in lines[header] and "autoscaled acc %" in lines[header] and "rank fixed" in lines[header]
    assert [ln.split()[0] for ln in lines[header + 2:header + 4]] == ["2_02", "2_22"]
    assert "skipped 0_02: architecture '0_02' has no input->output path" in out
    assert "trainings: 4 (0 reused" in out
    db = (tmp_path / "mlruns" / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in out
    assert "plot accuracy_delta:" in out and "plot rank_change:" in out
    assert "predicted_lr" in out and "comparison run" in out
    assert (tmp_path / "ahps_outputs" / "logs").is_dir()
    assert "note: the local runner ignores the cluster settings" in out

    runs = store_runs(tmp_path)
    kinds = sorted(r["tags"].get("ahps.kind") for r in runs)
    assert kinds == ["compare", "lr-search", "parent", "train", "train", "train", "train"]
    assert {r["status"] for r in runs} == {"FINISHED"}
    assert {r["experiment_id"] for r in runs} != {"0"}  # never the Default experiment
    trains = [r["tags"] for r in runs if r["tags"].get("ahps.kind") == "train"]
    assert {(t["arch"], t["recipe"]) for t in trains} == {(a, rec) for a in ("2_02", "2_22")
                                                          for rec in ("autoscaled", "fixed")}
    assert (tmp_path / "mlruns" / "artifacts").is_dir()
    ckpts = sorted(p.relative_to(tmp_path / "ahps_outputs" / "checkpoints").parts[1:]
                   for p in (tmp_path / "ahps_outputs" / "checkpoints").rglob("checkpoint.pt"))
    assert ckpts == sorted((a, rec, "0", "checkpoint.pt") for a in ("2_02", "2_22") for rec in ("autoscaled", "fixed"))

    r2 = ahps("run", *TINY, cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "trainings: 4 (4 reused from finished MLflow runs)" in r2.stdout
    assert r2.stdout.count("reused the finished MLflow run") == 4
    assert "reused the finished LR search" in r2.stdout and "reused the finished comparison run" in r2.stdout
    assert len(store_runs(tmp_path)) == len(runs)  # no duplicated MLflow run
    table = lambda text: [ln for ln in text.splitlines() if ln.startswith(("2_02", "2_22"))]  # noqa: E731
    assert table(r2.stdout) == table(out)
    print(f"first run {first_s:.1f} s")


def test_checkpoints_sync_to_s3(tmp_path, monkeypatch):
    """CheckpointSync against moto's S3 server: push uploads new/changed files only, pull restores them."""
    boto3 = pytest.importorskip("boto3")
    from ahps_core.storage import CheckpointSync, checkpoint_location

    with moto_s3_server() as url:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL_S3": url}.items():
            monkeypatch.setenv(k, v)
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="ahps-ckpt")
        loc = checkpoint_location("s3://ahps-ckpt/ahps/checkpoints", "g1", "|nor_conv_3x3~0|+|none~0|none~1|",
                                  "autoscaled", 2)
        assert loc.startswith("s3://ahps-ckpt/ahps/checkpoints/g1/") and loc.endswith("/autoscaled/2")
        assert "|" not in loc and "~" not in loc
        a = CheckpointSync(loc, tmp_path / "a")
        assert a.pull() == []
        (tmp_path / "a" / "checkpoint.pt").write_bytes(b"epoch1")
        (tmp_path / "a" / "checkpoint.pt.tmp").write_bytes(b"partial")
        assert a.push() == ["checkpoint.pt"]
        assert a.push() == []  # unchanged: nothing uploaded
        (tmp_path / "a" / "checkpoint.pt").write_bytes(b"epoch2!")
        (tmp_path / "a" / "result.json").write_text("{}")
        assert a.push() == ["checkpoint.pt", "result.json"]
        b = CheckpointSync(loc, tmp_path / "b")  # a new pod after preemption
        assert sorted(b.pull()) == ["checkpoint.pt", "result.json"]
        assert (tmp_path / "b" / "checkpoint.pt").read_bytes() == b"epoch2!"
        assert not (tmp_path / "b" / "checkpoint.pt.tmp").exists()
        assert b.push() == []


@pytest.mark.slow
def test_default_run_finishes_in_five_minutes(tmp_path):
    t0 = time.perf_counter()
    r = ahps("run", cwd=tmp_path, timeout=600)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    runs = store_runs(tmp_path)
    kinds = [r["tags"].get("ahps.kind") for r in runs]
    assert kinds.count("parent") == 1 and kinds.count("compare") == 1 and kinds.count("lr-search") == 1
    from pipelines.transfer import DEFAULT_TARGETS

    trains = {(r["tags"]["arch"], r["tags"]["recipe"]) for r in runs if r["tags"].get("ahps.kind") == "train"}
    assert trains == {(a, rec) for a in DEFAULT_TARGETS for rec in ("autoscaled", "fixed")}
    assert "Kendall tau-b" in r.stdout
    assert elapsed < 300, f"default run took {elapsed:.0f} s"

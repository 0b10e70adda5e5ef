"""MLflow as the report (docs/conventions.md A15), checked through MLflow's REST API on a fresh ``mlflow server``
(SQLite, loopback) after real ``ahps run`` runs (tiny budgets) of both pipelines: the comparison/ranking and parent
runs' descriptions hold a markdown table row for every target, every child training run carries its arm's delta
and rank tags, ``mean_accuracy_delta`` is in percentage points in both experiments (and agrees with the CLI's
"points" line), params keep their integer types, the experiments open on the runs view."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, ahps_cmd, free_port, mlflow_server_process
from tests.test_tracking import metrics_of, params_of, rest, search_runs, tags_of

TRANSFER = ["-p", "targets=2_02,2_22,2_02_002,0_02", "-p", "epochs=1", "-p", "max_steps_per_epoch=8",
            "-p", "lr_grid=[0.1,0.3,1.0]", "-p", "lr_seeds=1", "--parallelism", "2"]
REEVALUATE = ["-p", "epochs=1", "-p", "max_steps_per_epoch=4", "-p", "n_boot=200", "--parallelism", "2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-report")
    port = free_port()
    args = ["--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with mlflow_server_process(args, port, d, {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, 120) as url:
        yield url


def ahps_run(url: str, work: Path, *args: str) -> tuple[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([*ahps_cmd(), "run", *args, "-p", f"tracking_uri={url}"], capture_output=True, text=True,
                       cwd=work, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    path = re.search(r"^summary: (\S+)", r.stdout, re.M)
    assert path, r.stdout[-2000:]
    return r.stdout, json.loads(Path(path.group(1)).read_text())


def group_runs(url: str, experiment: str) -> tuple[dict, list[dict]]:
    exp = rest(url, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    return exp, search_runs(url, exp["experiment_id"])


def kind(runs: list[dict], name: str) -> list[dict]:
    return [r for r in runs if tags_of(r).get("ahps.kind") == name]


@pytest.fixture(scope="module")
def transfer(server, tmp_path_factory):
    out, summary = ahps_run(server, tmp_path_factory.mktemp("transfer"), *TRANSFER)
    return out, summary, *group_runs(server, "ahps")


def test_transfer_runs_are_the_report(transfer):
    out, summary, exp, runs = transfer
    rows = summary["rows"]
    assert [r["arch"] for r in rows] == ["2_02", "2_22", "2_02_002"]  # 0_02 is skipped (no path)
    (compare,), (parent,) = kind(runs, "compare"), kind(runs, "parent")
    for run in (compare, parent):  # the description: one markdown row per target, delta in points
        note = tags_of(run)["mlflow.note.content"]
        for r in rows:
            line = next(ln for ln in note.splitlines() if ln.startswith(f"| `{r['arch']}` |"))
            assert f"| {100 * r['delta']:+.1f} |" in line, line
        assert "skipped `0_02`" in note
    # mean_accuracy_delta in points on both runs, = the CLI's "points" line, = 100 x the fraction of summary.json
    delta = summary["stats"]["mean_accuracy_delta"]
    cli = float(re.search(r"mean accuracy delta \(autoscaled - fixed\) ([+-][\d.]+) points", out).group(1))
    for run in (compare, parent):
        m = metrics_of(run)
        assert m["mean_accuracy_delta"] == pytest.approx(100 * delta, abs=1e-4)
        assert round(m["mean_accuracy_delta"], 2) == pytest.approx(cli, abs=0.006)
        assert m["n"] == 3 and "kendall_tau_b" in m and "autoscaled_wins" in m
    assert not [k for k in metrics_of(compare) if "/" in k]  # no one-bar metric per architecture
    p = params_of(compare)
    assert (p["family"], p["dataset"], p["seeds"], p["n_targets"], p["arms"]) == (
        "mlp", "digits", "[0]", "3", '["autoscaled", "fixed"]')
    assert params_of(parent)["seeds"] == "[0]"  # an integer list stays integers (kfp hands floats over)


def test_every_child_run_has_its_delta_and_rank(transfer):
    _, summary, _, runs = transfer
    by_arch = {r["arch"]: r for r in summary["rows"]}
    trains = kind(runs, "train")
    assert len(trains) == 2 * len(by_arch)  # the tags went on the finished runs: no run was added
    for run in trains:
        t = tags_of(run)
        row = by_arch[t["arch"]]
        assert run["info"]["status"] == "FINISHED"
        assert t["ahps.delta_points"] == f"{100 * row['delta']:+.2f}"
        assert t["ahps.rank"] == str(row[f"rank_{t['recipe']}"])
        assert (t["ahps.rank_autoscaled"], t["ahps.rank_fixed"]) == (str(row["rank_autoscaled"]),
                                                                      str(row["rank_fixed"]))
        assert int(t["ahps.rank_change"]) == row["rank_fixed"] - row["rank_autoscaled"]
        assert (t["ahps.arch_code"], t["ahps.arch_string"]) == (t["arch"], t["arch"])
        assert run["info"]["run_name"] == f"{t['recipe']} {t['arch']} s0"


def test_experiment_opens_on_the_runs_table(transfer, server):
    out, summary, exp, _ = transfer
    tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    url = f"{server}/#/experiments/{exp['experiment_id']}/runs?workflowType=machine_learning"
    assert summary["mlflow"]["runs_url"] == url and f"then the runs table: {url}" in out


def test_table_artifact_has_a_row_per_target(transfer, server, tmp_path):
    _, summary, _, runs = transfer
    (compare,) = kind(runs, "compare")
    run_id = compare["info"]["run_id"]
    with urllib.request.urlopen(f"{server}/get-artifact?path=comparison/by_arch.json&run_uuid={run_id}",
                                timeout=30) as resp:
        table = json.loads(resp.read())
    cols = table["columns"]
    assert cols[:5] == ["architecture", "predicted_lr", "acc_autoscaled_points", "acc_fixed_points", "delta_points"]
    assert [row[0] for row in table["data"]] == [r["arch"] for r in summary["rows"]]
    assert [row[4] for row in table["data"]] == [round(100 * r["delta"], 4) for r in summary["rows"]]


@pytest.mark.slow
def test_reevaluation_is_in_points_too(server, tmp_path):
    out, summary = ahps_run(server, tmp_path, "reevaluate", *REEVALUATE)
    exp, runs = group_runs(server, "ahps-reevaluate")
    (ranking,), (parent,) = kind(runs, "ranking"), kind(runs, "parent")
    delta = summary["stats"]["mean_accuracy_delta"]  # points in the reevaluate summary
    for run in (ranking, parent):
        assert metrics_of(run)["mean_accuracy_delta"] == pytest.approx(delta, abs=1e-4)
        note = tags_of(run)["mlflow.note.content"]
        for r in summary["rows"]:
            assert any(ln.startswith(f"| `{r['code']}` | `{r['arch']}` |") for ln in note.splitlines()), r["code"]
    for run in kind(runs, "train"):
        t = tags_of(run)
        row = next(r for r in summary["rows"] if r["arch"] == t["arch"])
        assert t["ahps.delta_points"] == f"{row['delta']:+.2f}" and t["ahps.rank"] == str(row["rank_new"])
        assert run["info"]["run_name"].split()[1] == row["code"] == t["ahps.arch_code"]
    assert f"{delta:+.2f} points" in out

"""``ahps submit`` / ``ahps schedule`` against a small local HTTP server speaking the KFP v2beta1 REST endpoints
they call (tests/fake_kfp.py), through the real ``kfp.Client``; cron handling; one-line errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from ahps.cli import main
from ahps.orchestration.cron import kfp_cron
from ahps_core.errors import ConfigError
from tests.conftest import REPO, ahps_cmd, one_line_error
from tests.fake_kfp import FakeKFP

TRACKING = "tracking_uri=http://ahps-mlflow.ml.svc.cluster.local:5000"


@pytest.fixture()
def kfp_server():
    with FakeKFP() as server:
        yield server


def ahps(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*ahps_cmd(), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_submit_creates_a_run_with_the_compiled_spec(kfp_server, capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-send-this-secret")
    code = main(["submit", "transfer", "--host", kfp_server.url, "--experiment", "ahps-test", "-p", TRACKING,
                 "-p", 'targets=["2_02","2_22"]', "-p", "epochs=3", "--run-name", "nightly"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(kfp_server.runs) == 1 and len(kfp_server.experiments) == 1
    run = kfp_server.runs[0]
    assert run["display_name"] == "nightly" and run["experiment_id"] == kfp_server.experiments[0]["experiment_id"]
    assert kfp_server.experiments[0]["display_name"] == "ahps-test"
    assert run["runtime_config"]["parameters"] == {"tracking_uri": TRACKING.split("=", 1)[1],
                                                   "targets": ["2_02", "2_22"], "epochs": 3}
    spec = run["pipeline_spec"]  # kfp sends the multi-document YAML as {pipeline_spec, platform_spec}
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "ahps-transfer"
    assert "exec-train" in spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert run["run_id"] in out and "submitted run" in out
    assert "do-not-send-this-secret" not in json.dumps(kfp_server.requests, default=str)
    assert [r["path"] for r in kfp_server.calls("POST")] == ["/apis/v2beta1/experiments", "/apis/v2beta1/runs"]


def _caching(spec: dict) -> dict[str, bool]:
    """``{task: enableCache}`` of every task of a pipeline spec, in every DAG (root, loop, conditions)."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: bool(t.get("cachingOptions", {}).get("enableCache")) for dag in dags
            for name, t in dag["tasks"].items() if "cachingOptions" in t}


def test_submit_options_reach_the_run_request(kfp_server, capsys):
    """--pipeline-root, --service-account and --no-cache are kfp.Client.create_run_from_pipeline_package's
    pipeline_root, service_account and enable_caching: in the request body the real client sends."""
    code = main(["submit", "transfer", "--host", kfp_server.url, "-p", TRACKING, "--pipeline-root",
                 "s3://ahps-artifacts/runs", "--service-account", "ahps-runner", "--no-cache"])
    assert code == 0, capsys.readouterr()
    (run,) = kfp_server.runs
    assert run["runtime_config"]["pipeline_root"] == "s3://ahps-artifacts/runs"
    assert run["service_account"] == "ahps-runner"
    caching = _caching(run["pipeline_spec"]["pipeline_spec"])
    assert {"find-base-lr", "transfer", "train", "compare"} <= set(caching)
    assert not any(caching.values()), caching  # every task, the loop's too (the client alone changes root tasks)


def test_default_caching_is_on_only_where_a_key_can_repeat(kfp_server, capsys):
    assert main(["submit", "transfer", "--host", kfp_server.url, "-p", TRACKING]) == 0
    capsys.readouterr()
    (run,) = kfp_server.runs
    assert "pipeline_root" not in run["runtime_config"] and "service_account" not in run
    caching = _caching(run["pipeline_spec"]["pipeline_spec"])
    assert caching == {"find-base-lr": False, "transfer": True, "train": True, "compare": True}
    find = run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]["find-base-lr"]
    assert find["inputs"]["parameters"]["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_submit_wait_follows_the_run_to_its_end(capsys):
    with FakeKFP(run_states=("PENDING", "RUNNING", "SUCCEEDED")) as server:
        code = main(["submit", "--host", server.url, "-p", TRACKING, "--wait", "--poll-seconds", "0.05"])
        captured = capsys.readouterr()
        assert code == 0, captured
        (run,) = server.runs
        assert f"run {run['run_id']} ended SUCCEEDED" in captured.out
        assert captured.err.splitlines() == ["run state: PENDING", "run state: RUNNING", "run state: SUCCEEDED"]
        assert len(server.calls("GET", f"/runs/{run['run_id']}")) == 3
    with FakeKFP(run_states=("RUNNING", "FAILED")) as server:
        assert main(["submit", "--host", server.url, "-p", TRACKING, "--wait", "--poll-seconds", "0.05"]) == 1
        assert "ended FAILED" in capsys.readouterr().out
    with FakeKFP(run_states=("RUNNING", "CANCELED")) as server:  # kfp's wait_for_run_completion would not stop
        assert main(["submit", "--host", server.url, "-p", TRACKING, "--wait", "--poll-seconds", "0.05"]) == 1
        assert "ended CANCELED" in capsys.readouterr().out
    with FakeKFP(run_states=("RUNNING",)) as server:
        r = ahps("submit", "--host", server.url, "-p", TRACKING, "--wait", "--timeout", "0.3", "--poll-seconds", "0.1")
        assert r.returncode == 2 and "Traceback" not in r.stderr and "submitted run" in r.stdout
        assert r.stderr.strip().splitlines()[-1].startswith(f"error: run {server.runs[0]['run_id']} is still RUNNING "
                                                            "after 0.3 s (--timeout); it goes on running")


def test_dry_run_compiles_and_prints_without_network(tmp_path):
    """--dry-run: the parameters checked and normalized, the package compiled, the request printed; the host is
    never contacted (a port nothing listens on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "pkg.yaml"
    r = ahps("submit", "--host", f"http://127.0.0.1:{port}", "-p", TRACKING, "-p", "family=nas-bench-201",
             "-p", "epochs=3", "--pipeline-root", "s3://b/r", "--service-account", "sa", "--no-cache", "--dry-run",
             "-o", str(out))
    assert r.returncode == 0, r.stderr
    would = json.loads(r.stdout)
    assert would["dry_run"] is True and would["host"] == f"http://127.0.0.1:{port}"
    assert would["arguments"] == {"tracking_uri": TRACKING.split("=", 1)[1], "family": "nb201", "epochs": 3}
    assert (would["pipeline_root"], would["service_account"], would["enable_caching"]) == ("s3://b/r", "sa", False)
    assert would["tasks"] == ["compare", "find-base-lr", "for-loop-1", "transfer"] and would["package"] == str(out)
    assert out.read_text().startswith("# PIPELINE DEFINITION")
    line = one_line_error(ahps("submit", "--host", "http://x:1", "-p", TRACKING, "--service-account", "Bad_SA",
                               "--dry-run"))
    assert "--service-account 'Bad_SA' is not a valid Kubernetes ServiceAccount name" in line
    line = one_line_error(ahps("submit", "--host", "http://x:1", "-p", TRACKING, "--pipeline-root", "/tmp/x",
                               "--dry-run"))
    assert "--pipeline-root '/tmp/x' must be a URI" in line


def test_schedule_is_idempotent_by_name_and_converts_cron(kfp_server, capsys):
    args = ["schedule", "transfer", "--host", kfp_server.url, "--cron", "0 3 * * 0", "--name", "weekly",
            "--experiment", "ahps-sched", "-p", TRACKING]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "created recurring run 'weekly'" in first
    assert len(kfp_server.recurring_runs) == 1
    rr = kfp_server.recurring_runs[0]
    assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert rr["display_name"] == "weekly" and rr["mode"] == "ENABLE" and rr["no_catchup"] is True
    assert rr["runtime_config"]["parameters"] == {"tracking_uri": TRACKING.split("=", 1)[1]}
    ref = rr["pipeline_version_reference"]
    assert ref["pipeline_id"] == kfp_server.pipelines[0]["pipeline_id"]
    assert any(v["pipeline_version_id"] == ref["pipeline_version_id"] for v in kfp_server.versions)
    assert kfp_server.calls("POST", "/pipelines/upload")[0]["files"]["uploadfile"].startswith(b"#")
    # the recurring-run lookup uses the REST list with a name filter, in the experiment
    lookup = kfp_server.calls("GET", "/recurringruns")[0]["query"]
    assert json.loads(lookup["filter"])["predicates"][0]["stringValue"] == "weekly"
    assert lookup["experiment_id"] == kfp_server.experiments[0]["experiment_id"]

    assert main(args) == 0  # again: no duplicate, experiment reused
    again = capsys.readouterr().out
    assert "already exists" in again and "not created again" in again
    assert len(kfp_server.recurring_runs) == 1 and len(kfp_server.experiments) == 1
    uploads = len(kfp_server.versions)

    assert main([*args[:5], "0 4 * * 1", *args[6:], "--replace"]) == 0
    assert "replaced recurring run 'weekly'" in capsys.readouterr().out
    assert len(kfp_server.recurring_runs) == 1
    assert kfp_server.recurring_runs[0]["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 1"
    assert len(kfp_server.pipelines) == 1 and len(kfp_server.versions) == uploads  # same package: version reused
    assert len(kfp_server.calls("DELETE", "/recurringruns/")) == 1


def test_token_file_is_sent(tmp_path, capsys, monkeypatch):
    token = tmp_path / "token"
    token.write_text("s3cr3t-token\n")
    with FakeKFP(token="s3cr3t-token") as server:
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
        assert main(["submit", "--host", server.url, "-p", TRACKING]) == 0
        auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in server.requests]
        assert auth and set(auth) == {"Bearer s3cr3t-token"}
        monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
        r = ahps("submit", "--host", server.url, "-p", TRACKING, env={"KF_PIPELINES_SA_TOKEN_PATH": ""})
        assert "refused the request (HTTP 401)" in one_line_error(r)
    capsys.readouterr()


def test_unreachable_host_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = ahps("submit", "--host", f"http://127.0.0.1:{port}", "-p", TRACKING)
    line = one_line_error(r)
    assert f"KFP host http://127.0.0.1:{port} cannot be reached" in line


def test_bad_parameters_are_one_line(kfp_server):
    line = one_line_error(ahps("submit", "--host", kfp_server.url, "-p", TRACKING, "-p", "epoch=3"))
    assert "unknown parameter epoch" in line and "accepted are family, dataset" in line
    line = one_line_error(ahps("submit", "--host", kfp_server.url))
    assert "tracking_uri is empty" in line
    line = one_line_error(ahps("schedule", "--host", kfp_server.url, "--cron", "0 25 * * *", "-p", TRACKING))
    assert "hour field '25' is out of range 0-23" in line
    assert not kfp_server.runs and not kfp_server.recurring_runs


@pytest.mark.parametrize("expr, expected", [
    ("0 3 * * 0", "0 0 3 * * 0"),
    ("*/15 * * * *", "0 */15 * * * *"),
    ("30 0 9 ? * MON-FRI", "30 0 9 ? * MON-FRI"),
    ("0 3 1,15 JAN-MAR *", "0 0 3 1,15 JAN-MAR *"),
    ("@daily", "@daily"),
])
def test_cron_conversion(expr, expected):
    assert kfp_cron(expr) == expected


@pytest.mark.parametrize("expr, message", [
    ("0 3 * *", "has 4 field(s): expected 5"),
    ("61 3 * * 0", "minute field '61' is out of range 0-59"),
    ("0 3 * 13 0", "month field '13' is out of range 1-12"),
    ("0 3 * * FUNDAY", "day of week field 'FUNDAY' is not valid"),
    ("0 3 * * 5-1", "decreasing range"),
    ("0 3 */0 * *", "bad step"),
    ("", "has 0 field(s)"),
])
def test_bad_cron(expr, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kfp_cron(expr)


def _readme_commands(prefix: str) -> list[str]:
    """The README's shell commands starting with ``prefix`` (backslash continuations joined)."""
    import re

    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd.startswith(prefix):
                commands.append(cmd)
    return commands


def test_the_readme_submit_examples_validate_as_written():
    """Every ``ahps submit`` of the README, run as written with --dry-run (host: nothing listening; $NS set):
    the parameters pass the checks -- ``family=nas-bench-201`` without targets gets NB201's default targets,
    not the mlp ones -- and the package compiles."""
    import shlex

    from ahps_core.steps.params import FAMILY_TARGETS

    commands = [c for c in _readme_commands("ahps submit") if "..." not in c]
    assert any("family=nas-bench-201" in c for c in commands), commands
    for cmd in commands:
        args = shlex.split(cmd.replace("$NS", "ml"))[1:]
        r = ahps(*args, "--dry-run")
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        would = json.loads(r.stdout)
        family = would["parameters"]["family"]
        if "targets" not in would["arguments"]:
            assert would["parameters"]["targets"] == FAMILY_TARGETS[family], cmd
    nb = [c for c in commands if "family=nas-bench-201" in c][0]
    would = json.loads(ahps(*shlex.split(nb.replace("$NS", "ml"))[1:], "--dry-run").stdout)
    assert would["parameters"]["family"] == "nb201"
    assert would["parameters"]["targets"] == ["3_03_003", "3_13_113", "3_33_133", "3_33_333", "2_22_222"]


def test_default_targets_follow_the_family():
    """``targets`` empty (the default) means the family's targets: in the parameter check (what ahps prints and
    plans) and in the steps (a KFP run started with another family and no targets)."""
    from ahps_core.errors import ConfigError as CoreConfigError
    from ahps_core.steps.params import FAMILY_TARGETS, check_transfer, family_targets
    from pipelines import get_pipeline

    pipe = get_pipeline("transfer")
    base = {**pipe.defaults(), "tracking_uri": "http://mlflow:5000", "dataset": "cifar10", "data_source": "s3://d/c"}
    assert pipe.defaults()["targets"] == []
    for family, want in (("mlp", FAMILY_TARGETS["mlp"]), ("cnn", FAMILY_TARGETS["cnn"]),
                         ("nas-bench-201", FAMILY_TARGETS["nb201"])):
        assert check_transfer({**base, "family": family}, local=False)["targets"] == want
    assert check_transfer({**base, "family": "nb201", "targets": ["3_33_133"]}, local=False)["targets"] == ["3_33_133"]
    assert family_targets("nas-bench-201", []) == FAMILY_TARGETS["nb201"] != FAMILY_TARGETS["mlp"]
    assert family_targets("mlp", ["2_02", 3]) == ["2_02", "3"]
    with pytest.raises(CoreConfigError, match="unknown family 'resnet'"):
        family_targets("resnet", [])

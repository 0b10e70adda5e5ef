"""The coordinate check (``ahps check-init``, ``validate --check-init``) and validation logged to MLflow."""

from __future__ import annotations

import json

import pytest
import torch

from ahps.cli import main
from ahps_core.coord_check import coord_check
from ahps_core.data import load_dataset
from ahps_core.lr_search import arch_factory
from ahps_core.specs import parse_arch


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def check(digits, arch: str, degree: str, **kw):
    factory = arch_factory(parse_arch(arch, "mlp"), digits, width=256, degree=degree)
    return coord_check(factory, digits, **kw)


def test_skip_sums_of_one_signal_grow_exactly(digits):
    """``1_11_111_1111``: vertex t holds 2^(t-1) copies of the stem's output (no weight layer), so the second
    moments are exactly 1, 1, 4, 16, 64 at init under every rule: no weight-variance rule can flatten skips."""
    for degree in ("source", "mean-field"):
        c = check(digits, "1_11_111_1111", degree, steps=0, seeds=[0])
        assert c["vertices"] == ["v0", "v1", "v2", "v3", "v4"]
        assert c["init_ratio"] == pytest.approx([1, 1, 4, 16, 64], rel=1e-5) and c["spread"] == pytest.approx(64)


def test_mean_field_keeps_a_dense_skip_free_dag_flat_and_source_does_not(digits):
    """The measured finding the plot shows (docs/conventions.md §1.2): on the skip-free ``2_22_222_2222`` the
    source rule's second moments compound (vertex 4 several times the stem's), mean-field stays near 1."""
    src = check(digits, "2_22_222_2222", "source", steps=0)
    mf = check(digits, "2_22_222_2222", "mean-field", steps=0)
    assert src["output_ratio"] > 4 and src["spread"] > 4
    assert max(abs(v - 1) for v in mf["init_ratio"]) < 0.25 and mf["spread"] < 1.3


def test_steps_change_the_moments_and_the_generic_path(digits):
    c = check(digits, "2_02", "source", steps=3, lr=0.5, seeds=[0, 1])
    assert c["steps"] == 3 and c["after_ratio"] != c["init_ratio"] and len(c["init"]) == 3
    from tests.user_family import make

    user = coord_check(lambda s: make("depth3"), digits, steps=2, seeds=[0])  # any network: module outputs
    assert user["vertices"][0] == "inp" and "out" in user["vertices"] and user["init_ratio"][0] == 1.0
    assert torch.get_num_threads() >= 1


def test_check_init_command(tmp_path, capsys):
    out_png = tmp_path / "cc.png"
    code = main(["check-init", "--family", "mlp", "--arch", "2_22_222_2222,1_10_121_1111", "--dataset", "digits",
                 "--steps", "2", "--seeds", "1", "--out", str(out_png), "--json"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(c["arch"], c["label"]) for c in rep["checks"]] == [
        ("2_22_222_2222", "arch-aware/source"), ("2_22_222_2222", "arch-aware/mean-field"),
        ("1_10_121_1111", "arch-aware/source"), ("1_10_121_1111", "arch-aware/mean-field")]
    assert out_png.stat().st_size > 5000 and rep["plot"] == str(out_png)
    code = main(["check-init", "--family", "mlp", "--model", "tests.user_family:make", "--arch", "depth2",
                 "--dataset", "digits"])
    assert code == 2 and "exactly one of --family" in capsys.readouterr().err


def test_validate_check_init_and_mlflow(tmp_path, capsys):
    from ahps_core.tracking import local_store_uri

    uri = local_store_uri(tmp_path / "store")
    args = ["validate", "--family", "mlp", "--dataset", "digits", "--archs", "2,1_10_121_1111", "--grid",
            "0.03,0.1,0.3,1", "--epochs", "1", "--max-steps", "6", "--width", "16", "--seeds", "2", "--device", "cpu",
            "--resolution", "0", "--n-boot", "100", "--check-init", "--tracking-uri", uri, "--experiment", "val",
            "--out", str(tmp_path / "v"), "--json"]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (tmp_path / "v" / "coord_check.png").exists() and len(rep["check_init"]["checks"]) == 3 * 2
    assert rep["mlflow"]["status"] == "logged"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(rep["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ahps.kind"] == "validate"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.params["dataset"] == "digits"
    assert run.data.metrics["base_lr"] == rep["base"]["lr"] and run.data.metrics["n"] == 2
    assert run.data.metrics["sum-cubed.reference.slope"] == pytest.approx(rep["slope"])
    files = {f.path for f in client.list_artifacts(run.info.run_id, "validate")}
    assert {"validate/validate.json", "validate/points.json", "validate/pred_vs_measured.png",
            "validate/measurements.jsonl", "validate/coord_check.png"} <= files
    assert main(args) == 0  # the same validation again: measurements resumed, the finished run reused
    again = json.loads(capsys.readouterr().out)
    assert again["mlflow"] == {**rep["mlflow"], "status": "reused"} and again["resumed"] == 3

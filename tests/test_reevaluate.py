"""The ``reevaluate`` pipeline: a real local run end to end (kfp's local runner, tiny budget) checked in the MLflow
store; two run groups -> two parent runs in one experiment; the compiled YAML's cluster settings; one-line errors for
bad inputs; ``ahps schedule reevaluate`` against the fake KFP API; the chart hook; the S3 benchmark mirror. The
full default ``ahps run reevaluate`` is marked slow."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ahps_core.benchmarks import open_benchmark
from ahps_core.resources import NATS_TSS_FIXTURE
from tests.conftest import REPO, ahps_cmd, moto_s3_server, one_line_error

TINY = ["-p", "epochs=1", "-p", "max_steps_per_epoch=4", "-p", "n_boot=200", "--parallelism", "2"]
TRACKING = "tracking_uri=http://ahps-mlflow.ml.svc.cluster.local:5000"
CLUSTER = [TRACKING, "data_source=s3://ahps-datasets/cifar10", "benchmark=s3://ahps-bench/NATS-tss-v1_0-3ffb9-simple"]
FAKE_CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000001",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-access-key-do-not-leak",
    "MLFLOW_TRACKING_USERNAME": "fake-mlflow-user-xyz",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-do-not-leak",
}


def ahps(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*ahps_cmd(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


class Store:
    """The local SQLite MLflow store, read with sqlite3 (no mlflow import)."""

    def __init__(self, workdir: Path) -> None:
        con = sqlite3.connect(workdir / "mlruns" / "mlflow.db")
        self.experiments = dict(con.execute("select experiment_id, name from experiments"))
        self.runs: dict[str, dict] = {}
        for run_uuid, status, exp, uri in con.execute("select run_uuid, status, experiment_id, artifact_uri from runs"):
            self.runs[run_uuid] = {"id": run_uuid, "status": status, "experiment": self.experiments[exp],
                                   "artifacts": Path(uri), "tags": {}, "params": {}, "metrics": {}, "history": {}}
        for key, value, run in con.execute("select key, value, run_uuid from tags"):
            self.runs[run]["tags"][key] = value
        for key, value, run in con.execute("select key, value, run_uuid from params"):
            self.runs[run]["params"][key] = value
        for key, value, run in con.execute("select key, value, run_uuid from latest_metrics"):
            self.runs[run]["metrics"][key] = value
        for key, value, step, run in con.execute("select key, value, step, run_uuid from metrics order by step"):
            self.runs[run]["history"].setdefault(key, []).append((step, value))
        con.close()

    def kind(self, kind: str, group: str | None = None) -> list[dict]:
        return [r for r in self.runs.values() if r["tags"].get("ahps.kind") == kind
                and (group is None or r["tags"].get("ahps.run_group") == group)]


#: The generated data's split file of CIFAR-100 (written by the first run, in NB201's format and under its name).
SPLIT = Path("ahps_outputs") / "synthetic-data" / "cifar100-test-split.txt"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny local runs on CIFAR-100 in one working directory: run group g-one without a split file, g-two with
    the generated data's split file (written by the first run)."""
    work = tmp_path_factory.mktemp("reevaluate")
    out = []
    for group, extra in (("g-one", []), ("g-two", ["-p", f"split_file={work / SPLIT}"])):
        t0 = time.perf_counter()
        r = ahps("run", "reevaluate", *TINY, "-p", "dataset=cifar100", *extra, "--run-group", group, cwd=work)
        assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
        out.append((r, time.perf_counter() - t0))
    print(f"tiny runs: {out[0][1]:.1f} s, {out[1][1]:.1f} s")
    return work, [r for r, _ in out]


# --- end to end -------------------------------------------------------------------------------------------------


def test_local_run_records_parent_children_and_ranking(two_runs):
    work, (r, _) = two_runs
    store = Store(work)
    records = open_benchmark(NATS_TSS_FIXTURE)
    (parent,) = store.kind("parent", "g-one")
    assert parent["status"] == "FINISHED" and parent["experiment"] == "ahps-reevaluate"
    assert parent["tags"]["pipeline"] == "reevaluate" and parent["tags"]["budget"] == "reduced"
    assert "NOT a re-evaluation" in parent["tags"]["mlflow.note.content"]
    assert parent["params"]["benchmark"] == "fixture" and parent["params"]["C"] == "4"
    assert parent["params"]["epochs"] == "1" and parent["params"]["seeds"] == "[777]"
    assert "C=4 channels (NB201: 16)" in parent["params"]["budget_reasons"]
    assert "synthetic data" in parent["params"]["budget_reasons"]
    # no split file: the run is tagged deviated, with split among the deviations (and the reduced budget, one seed)
    assert (parent["tags"]["protocol"], parent["tags"]["protocol_deviations"]) == ("deviated", "budget,split,seeds")
    assert parent["params"]["split_file"] == "" and parent["params"]["deviations"] == "budget, split, seeds"
    assert "- split: no NB201 split file (cifar100-test-split.txt)" in parent["tags"]["mlflow.note.content"]

    children = store.kind("train", "g-one")
    assert len(children) == 3
    assert {c["tags"]["arch"] for c in children} == set(records.arch_strs())
    for c in children:
        tags, metrics = c["tags"], c["metrics"]
        assert c["status"] == "FINISHED" and tags["mlflow.parentRunId"] == parent["id"]
        assert (tags["family"], tags["dataset"], tags["seed"], tags["recipe"]) == ("nb201", "cifar100", "777",
                                                                                   "autoscaled")
        assert (tags["rule"], tags["convention"], tags["budget"]) == ("sum-cubed", "reference", "reduced")
        assert (tags["protocol"], tags["protocol_deviations"]) == ("deviated", "budget,split,seeds")
        rec = records.query(tags["arch"], "cifar100")
        assert tags["benchmark_index"] == str(rec.index)
        assert metrics["benchmark_acc"] == pytest.approx(rec.acc_mean, abs=1e-9)  # mean over 777/888/999
        assert metrics["new_acc"] == pytest.approx(100 * metrics["final_eval_acc"])
        assert metrics["delta"] == pytest.approx(metrics["new_acc"] - rec.acc_mean)
        assert [s for s, _ in c["history"]["train_loss"]] == [1]  # step metrics per epoch
        assert c["params"]["C"] == "4" and c["params"]["N"] == "1" and c["params"]["eval_part"] == "test"
        assert c["params"]["train_recipe"] == "nb201" and c["params"]["init"] == "arch-aware"
        assert (c["params"]["cell"], c["params"]["indegree"], c["params"]["amp"]) == ("full", "all", "off")
        assert float(c["params"]["lr"]) < 0.46  # transferred from the base LR 0.46: every cell is deeper

    (ranking,) = store.kind("ranking", "g-one")
    m = ranking["metrics"]
    assert ranking["status"] == "FINISHED" and ranking["tags"]["mlflow.parentRunId"] == parent["id"]
    assert -1 <= m["tau_top100"] <= 1 and m["noise_tau_top100"] == pytest.approx(1.0)  # 3 cells: seeds agree
    assert m["n_top100"] == 3 and m["n_top50"] == 2 and "tau_top50" not in m  # undefined for 2 cells: not logged
    assert "spearman_top100" in m and "mean_accuracy_delta_ci_low" in m and "gap_ratio" in m
    assert (ranking["tags"]["protocol"], ranking["tags"]["protocol_deviations"]) == ("deviated", "budget,split,seeds")
    plots = sorted(p.name for p in (ranking["artifacts"] / "plots").iterdir())
    assert plots == ["cifar100_gaps.png", "cifar100_rank_change.png", "cifar100_scatter.png", "cifar100_topk.png"]
    report = json.loads((ranking["artifacts"] / "ranking" / "ranking_report.json").read_text())
    assert report["n_common"] == 3 and set(report["topk"]) == {"benchmark", "new"}
    assert parent["metrics"]["tau_top100"] == m["tau_top100"]

    out = r.stdout
    assert "REDUCED network/budget" in out and "NOT a re-evaluation of NAS-Bench-201" in out
    assert "!! protocol=deviated: DEVIATED from NAS-Bench-201's protocol (budget, split, seeds):" in out
    assert "!!   split: no NB201 split file (cifar100-test-split.txt)" in out
    assert "!!   seeds: seeds [777] (NB201: 777, 888, 999)" in out
    summary = json.loads(next(Path(ln.split()[1]) for ln in out.splitlines() if ln.startswith("summary:"))
                         .read_text())
    assert summary["protocol"]["label"] == "deviated" and summary["protocol"]["names"] == ["budget", "split", "seeds"]
    assert summary["protocol"]["reference"]["seeds"] == [777, 888, 999] and summary["split"] is None
    header = next(ln for ln in out.splitlines() if ln.startswith("cell (code)"))
    assert "benchmark acc %" in header and "new acc %" in header and "rank new" in header
    for rec in (records.query(i, "cifar100") for i in records.indices()):
        assert f"{rec.acc_mean:.2f}" in out
    assert any(ln.startswith("100  3  ") for ln in out.splitlines())
    assert any(ln.startswith("50   2") and "fewer than 3 cells: undefined" in ln for ln in out.splitlines())
    assert "trainings: 3 (0 reused" in out and "plot topk:" in out
    assert (work / "ahps_outputs" / "synthetic-data" / "ahps-synthetic-md5.json").is_file()


def test_the_split_file_reaches_the_loader_of_every_training(two_runs):
    """g-two gave the generated data's split file: every training was evaluated on exactly its x-test indices (the
    loader's hash of the evaluated part's indices, recorded in the training's result), the file's md5 is recorded,
    and the run is still deviated on the split, because the file is not NB201's (nor is the data); without the
    file (g-one) the evaluated part is the seeded half, other indices."""
    from ahps_core.data.checksums import md5_file
    from ahps_core.data.datasets import indices_hash
    from ahps_core.data.splits import parse_split

    work, (_, r) = two_runs
    store = Store(work)
    split = work / SPLIT
    _, xtest = parse_split(split.read_bytes(), str(split), ("xvalid", "xtest"), None)
    results = {}
    for group in ("g-one", "g-two"):
        runs = store.kind("train", group)
        assert len(runs) == 3
        results[group] = [json.loads((c["artifacts"] / "result.json").read_text())["data"] for c in runs]
    for data in results["g-two"]:
        assert data["split"] == f"file: {split}" and data["split_md5"] == md5_file(split)
        assert (data["eval_part"], data["eval_images"]) == ("test", len(xtest))
        assert data["eval_indices"] == indices_hash(xtest)
        assert (data["split_verified"], data["split_nb201"]) == ("md5", False)
    for data in results["g-one"]:
        assert data["split"].startswith("seeded: stratified halving") and "split_md5" not in data
        assert data["eval_indices"] != indices_hash(xtest)
    (parent,) = store.kind("parent", "g-two")
    assert parent["params"]["split_file"] == str(split)
    assert parent["tags"]["protocol_deviations"] == "budget,split,seeds"
    assert f"split file {split} (md5 {md5_file(split)}) is not NB201's cifar100-test-split.txt" in r.stdout


def test_two_run_groups_are_two_parent_runs_in_one_experiment(two_runs):
    work, _ = two_runs
    store = Store(work)
    parents = store.kind("parent")
    assert sorted(p["tags"]["ahps.run_group"] for p in parents) == ["g-one", "g-two"]
    assert {p["experiment"] for p in parents} == {"ahps-reevaluate"}
    assert len(store.kind("train")) == 6 and len(store.kind("ranking")) == 2
    for group in ("g-one", "g-two"):
        (parent,) = store.kind("parent", group)
        kids = [r for r in store.runs.values() if r["tags"].get("mlflow.parentRunId") == parent["id"]]
        assert sorted(k["tags"]["ahps.kind"] for k in kids) == ["lr-search", "ranking", "train", "train", "train"]


# --- compiled YAML ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "re.yaml"
    r = ahps("compile", "reevaluate", "-o", str(out), env=FAKE_CREDS)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    return text, list(yaml.safe_load_all(text))


def test_compiled_yaml_has_the_cluster_settings(compiled):
    text, (spec, platform) = compiled
    assert spec["pipelineInfo"]["name"] == "ahps-reevaluate"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"sample-cells", "condition-branches-1", "reeval-plan", "for-loop-4", "rank"}
    loop = tasks["for-loop-4"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--reeval-plan-Output"
    assert set(spec["components"]["comp-for-loop-4"]["dag"]["tasks"]) == {"reeval-train"}
    assert tasks["rank"]["inputs"]["parameters"]["results"]["taskOutputParameter"]["producerTask"] == "for-loop-4"
    from pipelines.reevaluate import PARAMS

    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(PARAMS)
    assert inputs["epochs"]["defaultValue"] == 200 and inputs["C"]["defaultValue"] == 16  # NB201's budget
    assert inputs["seeds"]["defaultValue"] == [777, 888, 999] and inputs["base_lr"]["defaultValue"] == 0.46
    assert inputs["data_source"]["defaultValue"] == "" and inputs["benchmark"]["defaultValue"] == ""
    assert inputs["split_file"]["defaultValue"] == "" and inputs["split_file"]["parameterType"] == "STRING"

    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-reeval-train", "exec-reeval-base-lr"):  # the trainings: the cells', the LR search's
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    # the given base LR (base_lr > 0, NB201's 0.46 by default) is recorded on a CPU pod
    for name in ("exec-sample-cells", "exec-reeval-base-lr-2", "exec-reeval-plan", "exec-rank"):
        res = executors[name]["container"]["resources"]
        assert "accelerator" not in res and res["resourceCpuRequest"] == "500m"
    assert executors["exec-reeval-train"]["container"]["resources"]["resourceMemoryRequest"] == "16Gi"
    policy = spec["components"]["comp-for-loop-4"]["dag"]["tasks"]["reeval-train"]["retryPolicy"]
    assert policy["maxRetryCount"] == 3 and policy["backoffDuration"] == "60s" and policy["backoffFactor"] == 2.0
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    assert branches["condition-2"]["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--base_lr'] == 0.0"
    assert branches["condition-3"]["triggerPolicy"]["condition"] == \
        "!(inputs.parameter_values['pipelinechannel--base_lr'] == 0.0)"
    search = spec["components"]["comp-condition-2"]["dag"]["tasks"]["reeval-base-lr"]
    given = spec["components"]["comp-condition-3"]["dag"]["tasks"]["reeval-base-lr-2"]
    assert search["retryPolicy"]["maxRetryCount"] == 3 and "retryPolicy" not in given
    assert (search["taskInfo"]["name"], given["taskInfo"]["name"]) == ("reeval-base-lr (search)",
                                                                       "reeval-base-lr (given)")
    assert tasks["reeval-plan"]["inputs"]["parameters"]["base_lr"]["taskOutputParameter"]["producerTask"] == \
        "condition-branches-1"  # dsl.OneOf of the two branches

    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = k8s["exec-reeval-train"]
    assert train["tolerations"] == [{"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_tolerations"}}]
    assert train["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}}
    assert train["emptyDirMounts"] == [{"mountPath": "/var/cache/ahps/data", "volumeName": "ahps-data-cache"}]
    assert k8s["exec-reeval-base-lr"]["tolerations"][0]["tolerationJson"]["componentInputParameter"] == \
        "pipelinechannel--gpu_tolerations"
    for name, ex in k8s.items():  # every step talks to MLflow (and S3): credentials from the named secrets
        secrets = {s["secretNameParameter"]["componentInputParameter"].split("--")[-1]: s for s in ex["secretAsEnv"]}
        assert set(secrets) == {"s3_secret", "mlflow_secret"}, name
        assert all(s["optional"] is True for s in secrets.values())
        assert {k["envVar"] for k in secrets["s3_secret"]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert {k["envVar"] for k in secrets["mlflow_secret"]["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME",
                                                                              "MLFLOW_TRACKING_PASSWORD"}
    for name in ("exec-sample-cells", "exec-reeval-base-lr-2", "exec-reeval-plan", "exec-rank"):
        assert "tolerations" not in k8s[name] and "nodeSelector" not in k8s[name]
    for value in FAKE_CREDS.values():
        assert value not in text
    assert not [n for n in inputs if any(w in n.lower() for w in ("password", "secret_key", "token", "access_key"))]


def test_compiled_defaults_are_the_nb201_protocol(compiled):
    """The compiled pipeline's defaults equal NAS-Bench-201's protocol object, field by field: each field is a
    pipeline parameter with the protocol's value, or (recipe, evaluated part, fixed arm, split file name) a constant
    the pipeline applies; and the split file reaches every task that loads data."""
    import dataclasses

    from ahps_core.protocol import nb201_protocol
    from ahps_core.steps.reevaluate import HEADLINE_PART, REEVAL_RECIPE

    _, (spec, _) = compiled
    inputs = {name: p.get("defaultValue") for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    protocol = nb201_protocol(inputs["dataset"])
    as_params = protocol.pipeline_params()
    constants = {"name": "nb201", "recipe": REEVAL_RECIPE, "eval_part": HEADLINE_PART[protocol.dataset],
                 "headline_set": "ori-test", "split_file": None, "fixed_arm": protocol.fixed_arm}
    for field in dataclasses.fields(protocol):
        value = getattr(protocol, field.name)
        if field.name in as_params:
            want = list(value) if isinstance(value, tuple) else value
            assert inputs[field.name] == want == as_params[field.name], field.name
        else:
            assert constants[field.name] == value, field.name
    assert inputs["amp"] == "off" and inputs["cell"] == "full" and inputs["indegree"] == "all"
    assert inputs["seeds"] == [777, 888, 999] and inputs["batch_size"] == 256
    task = spec["root"]["dag"]["tasks"]["sample-cells"]
    assert task["inputs"]["parameters"]["split_file"] == {"componentInputParameter": "split_file"}
    for comp, name in (("comp-condition-2", "reeval-base-lr"), ("comp-condition-3", "reeval-base-lr-2")):
        task = spec["components"][comp]["dag"]["tasks"][name]
        assert task["inputs"]["parameters"]["split_file"] == {"componentInputParameter": "pipelinechannel--split_file"}
    train = spec["components"]["comp-for-loop-4"]["dag"]["tasks"]["reeval-train"]
    assert train["inputs"]["parameters"]["split_file"] == {"componentInputParameter": "pipelinechannel--split_file"}
    for dataset in ("cifar10-valid", "cifar100", "ImageNet16-120"):
        other = nb201_protocol(dataset)
        assert other.pipeline_params() == {**as_params, "dataset": dataset}  # one set of defaults fits them all
        assert other.split_file and other.headline_set in ("x-valid", "x-test")


# --- bad inputs: one line, no traceback, non-zero exit ------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["-p", "benchmark=/nonexistent/NAS-Bench-201-v1_1-096897.pth"],
     "error: benchmark '/nonexistent/NAS-Bench-201-v1_1-096897.pth' does not exist; accepted are"),
    (["-p", "dataset=mnist"], "error: unknown dataset 'mnist': accepted are cifar10, cifar10-valid, cifar100, "
                              "ImageNet16-120"),
    (["-p", "sample_size=4"], "error: cannot sample k=4 cells: the benchmark records (3 cells) hold only 3 unique "
                              "cells"),
    (["-p", "family=mlp"], "error: unknown family 'mlp': the reevaluate pipeline re-trains NAS-Bench-201 cells"),
    (["-p", "topk=[100,0]"], "error: topk [100, 0] must be a non-empty list of percentages in (0, 100]"),
])
def test_bad_inputs_are_one_line(tmp_path, args, expected):
    line = one_line_error(ahps("run", "reevaluate", *args, cwd=tmp_path))
    assert line.startswith(expected), line
    assert not (tmp_path / "ahps_outputs").exists()  # refused before anything was written or run


def test_wrong_benchmark_file_is_one_line(tmp_path):
    bad = tmp_path / "records.pickle.pbz2"
    bad.write_bytes(b"not a bz2 stream")
    line = one_line_error(ahps("run", "reevaluate", "-p", f"benchmark={bad}", cwd=tmp_path))
    assert line.startswith(f"error: cannot read NATS-Bench file '{bad}'"), line


# --- schedule and chart ---------------------------------------------------------------------------------------


def test_schedule_creates_a_recurring_run_of_the_reevaluate_package(capsys):
    from ahps.cli import main
    from tests.fake_kfp import FakeKFP

    with FakeKFP() as kfp:
        args = ["schedule", "reevaluate", "--host", kfp.url, "--cron", "0 3 * * 0", "--experiment", "ahps-reevaluate"]
        for p in CLUSTER:
            args += ["-p", p]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "created recurring run 'ahps-reevaluate'" in out
        (rr,) = kfp.recurring_runs
        assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0" and rr["mode"] == "ENABLE"
        assert rr["runtime_config"]["parameters"] == {p.split("=", 1)[0]: p.split("=", 1)[1] for p in CLUSTER}
        assert "run_group" not in rr["runtime_config"]["parameters"]  # each run: a new run group and parent run
        package = kfp.calls("POST", "/pipelines/upload")[0]["files"]["uploadfile"].decode()
        spec = next(yaml.safe_load_all(package))
        assert spec["pipelineInfo"]["name"] == "ahps-reevaluate" and "reeval-train" in package
        assert kfp.pipelines[0]["display_name"] == "ahps-reevaluate"

        # a scheduled run needs the data and the records: refused up front, in one line
        assert main(["schedule", "reevaluate", "--host", kfp.url, "--cron", "@weekly", "-p", TRACKING,
                     "-p", CLUSTER[1]]) == 2
        assert "benchmark is empty" in capsys.readouterr().err


def test_chart_hook_replaces_and_passes_only_accepted_parameters(tmp_path):
    helm = pytest.importorskip("helm_python")
    from ahps.orchestration.params import pipeline_and_params
    from ahps_core.steps.params import check_reevaluate
    from pipelines import get_pipeline

    chart = REPO / "charts" / "ahps"
    production = yaml.safe_load((chart / "values-production.yaml").read_text())
    with helm.Chart.load(str(chart)) as ch:
        # The scheduler is off by default and needs the data and the records when on.
        on = {"enabled": True, "mode": "recurringRun",
              "params": {"data_source": "s3://ahps-datasets/cifar10", "benchmark": "fixture"}}
        recurring = {**production, "scheduler": {**production["scheduler"], "mode": "recurringRun"}}
        for i, values in enumerate(({"scheduler": on}, recurring)):
            docs = [d for path, text in ch.render(values, name="ahps", namespace="ml").items()
                    if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
            (job,) = [d for d in docs if d["kind"] == "Job"]
            args = job["spec"]["template"]["spec"]["containers"][0]["args"]
            assert args[:7] == ["schedule", "reevaluate", "--cron", "0 3 * * 0", "--name", "ahps-reevaluate-weekly",
                                "--replace"]
            assert args[args.index("--params-dir") + 1] == "/etc/ahps/params"
            (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ahps-scheduler"]
            # as --params-dir reads the mounted files (each parsed like --param NAME=VALUE, empty = the default);
            # unknown names would raise
            mounted = tmp_path / f"params-{i}"
            mounted.mkdir()
            for key, value in cm["data"].items():
                (mounted / key).write_text(value)
            _, given = pipeline_and_params("reevaluate", [], mounted)
            assert given["family"] == "nas-bench-201" and given["tracking_uri"].startswith("http://ahps-mlflow.")
    checked = check_reevaluate({**get_pipeline("reevaluate").defaults(), **given}, local=False)
    assert checked["family"] == "nb201" and checked["benchmark"].startswith("s3://")


# --- pieces -------------------------------------------------------------------------------------------------------


def test_budget_marking():
    from ahps_core.steps.reevaluate import budget_info  # the protocol's (ahps_core.protocol), as the steps use it

    assert budget_info(C=16, N=5, epochs=200, batch_size=0, benchmark="s3://b/x")["reduced"] is False
    small = budget_info(C=16, N=5, epochs=50, benchmark="fixture")
    assert small["reduced"] and small["reasons"] == ["50 epochs (NB201: 200)"] and small["label"] == "reduced"
    assert "NOT a re-evaluation" in small["text"] and "fixture" in small["notes"][0]


def test_skipped_cells_are_listed_with_reasons():
    """Cells without an input->output path and isomorphic duplicates among the candidates: both with a reason,
    consistent with the sampler's own counts."""
    from ahps_core.benchmarks.fetch import _Listing
    from ahps_core.sampling import NO_PATH_REASON, all_cells, iso_key, sample_cells

    listing = _Listing(all_cells()[::29])  # 539 cells spread over the space
    drawn = sample_cells(20, 0, records=listing, dedup=True, iso="function")
    dups = drawn.duplicates
    kept = {d["reason"].split(" of ")[1].split(" (dedup")[0] for d in dups}
    assert all(iso_key(d["arch"]) == iso_key(d["reason"].split(" of ")[1].split(" (dedup")[0]) for d in dups)
    assert kept <= set(listing.arch_strs()) and not kept & {d["arch"] for d in dups}  # duplicates of a kept cell
    assert drawn.skipped and all(s["reason"] == NO_PATH_REASON for s in drawn.skipped)
    assert len(dups) == drawn.n_duplicates > 0
    assert all(d["reason"].startswith("isomorphic duplicate of |") for d in dups)
    assert not {d["arch"] for d in dups} & set(drawn.cells)


def test_checksums_manifest_applies_to_its_own_data_source(tmp_path):
    from ahps_core.data.checksums import load_checksums
    from ahps_core.data.synthetic import SYNTHETIC_MANIFEST, write_synthetic_datasets

    manifest = write_synthetic_datasets(tmp_path / "data")
    assert manifest.name == SYNTHETIC_MANIFEST
    md5 = load_checksums(manifest, data_source=str(tmp_path / "data"))
    assert "cifar-10-batches-py/data_batch_1" in md5 and "cifar-100-python/train" in md5 and "val_data" in md5
    assert load_checksums(manifest, data_source=str(tmp_path / "elsewhere")) is None


def test_s3_benchmark_fetches_only_the_sampled_records(tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from ahps_core.benchmarks import open_benchmark_records

    with moto_s3_server() as url:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1", "AHPS_DATA_CACHE": str(tmp_path / "cache")}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="ahps-bench")
        for f in NATS_TSS_FIXTURE.iterdir():
            s3.upload_file(str(f), "ahps-bench", f"nats/{f.name}")
        sample = {"k": 2, "seed": 0, "dataset": "cifar100", "stratify": False, "dedup": True, "iso": "function"}
        records, drawn, candidates = open_benchmark_records("s3://ahps-bench/nats", s3_endpoint=url, sample=sample)
        assert len(candidates.arch_strs()) == 3  # sampled from the listing: every record, fetched or not
        local = tmp_path / "cache" / "benchmarks" / "ahps-bench" / "nats"
        fetched = sorted(p.name for p in local.iterdir() if p.name.endswith(".pickle.pbz2"))
        assert len(drawn.cells) == 2 and len(fetched) == 3  # meta + the 2 sampled records, not the third
        reference = open_benchmark(NATS_TSS_FIXTURE)
        for cell in drawn.cells:
            assert records.query(cell, "cifar100").acc_mean == reference.query(cell, "cifar100").acc_mean
        from ahps_core.errors import BenchmarkError

        with pytest.raises(BenchmarkError, match="has no meta.pickle.pbz2"):
            open_benchmark_records("s3://ahps-bench/missing", s3_endpoint=url, sample=sample)


# --- the default run (slow) ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_run_finishes_in_five_minutes(tmp_path):
    t0 = time.perf_counter()
    r = ahps("run", "reevaluate", cwd=tmp_path, timeout=600)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert elapsed < 300, elapsed
    assert "REDUCED network/budget" in r.stdout and "noise tau-b" in r.stdout
    store = Store(tmp_path)
    (ranking,) = store.kind("ranking")
    assert "tau_top100" in ranking["metrics"] and "noise_tau_top100" in ranking["metrics"]
    assert len(list((ranking["artifacts"] / "plots").glob("*.png"))) == 4
    print(f"default ahps run reevaluate: {elapsed:.1f} s")

"""``ahps compile``: the IR YAML of the transfer pipeline -- DAG, ParallelFor, GPU requests, retry policy,
kfp-kubernetes settings from parameters (tolerations, node selector, secrets as env vars, the dataset cache
volume), the image, and no credential value anywhere. (That the YAML loads back and re-runs locally is tested in
test_tracking.py, against a real MLflow server.)"""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.conftest import REPO, ahps_cmd

FAKE_CREDS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYID0000001",
    "AWS_SECRET_ACCESS_KEY": "fake-secret-access-key-do-not-leak",
    "MLFLOW_TRACKING_USERNAME": "fake-mlflow-user-xyz",
    "MLFLOW_TRACKING_PASSWORD": "fake-mlflow-password-do-not-leak",
    "MLFLOW_TRACKING_TOKEN": "fake-mlflow-token-do-not-leak",
}


def compile_yaml(tmp_path, *args: str, env: dict | None = None, name: str = "t.yaml"):
    out = tmp_path / name
    r = subprocess.run([*ahps_cmd(), "compile", "transfer", "-o", str(out), *args], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO), **FAKE_CREDS, **(env or {})}, timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    return text, list(yaml.safe_load_all(text)), r


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_yaml(tmp_path_factory.mktemp("compile"))


def test_dag_and_parallel_for(compiled):
    _, (spec, _), r = compiled
    assert "wrote" in r.stdout and spec["pipelineInfo"]["name"] == "ahps-transfer"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"find-base-lr", "transfer", "for-loop-1", "compare"}
    assert tasks["transfer"]["dependentTasks"] == ["find-base-lr"]
    assert tasks["for-loop-1"]["dependentTasks"] == ["transfer"]
    assert "for-loop-1" in tasks["compare"]["dependentTasks"]
    loop = tasks["for-loop-1"]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--transfer-Output"
    assert "parallelismLimit" not in loop.get("iteratorPolicy", {})  # unlimited on a cluster by default
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]
    assert set(inner) == {"train"}
    # fan-in: compare collects every train output of the loop
    results = tasks["compare"]["inputs"]["parameters"]["results"]["taskOutputParameter"]
    assert results == {"outputParameterKey": "pipelinechannel--train-Output", "producerTask": "for-loop-1"}
    assert spec["root"]["outputDefinitions"]["artifacts"]["Output"]
    # every pipeline parameter is declared, with the local defaults
    from pipelines.transfer import PARAMS

    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(PARAMS)
    assert inputs["family"]["defaultValue"] == "mlp" and inputs["dataset"]["defaultValue"] == "digits"
    assert inputs["targets"]["parameterType"] == "LIST" and inputs["gpu_node_selector"]["parameterType"] == "STRUCT"


def test_the_split_file_parameter_reaches_the_data_loading_tasks(compiled):
    """``split_file`` (NB201's split file) is a pipeline parameter passed to both tasks that load data: the base-LR
    search and every training of the loop (which hands it to the loader, tests/test_protocol.py)."""
    _, (spec, _), _ = compiled
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["split_file"]["defaultValue"] == "" and inputs["split_file"]["parameterType"] == "STRING"
    search = spec["root"]["dag"]["tasks"]["find-base-lr"]["inputs"]["parameters"]["split_file"]
    assert search == {"componentInputParameter": "split_file"}
    train = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]["inputs"]["parameters"]["split_file"]
    assert train == {"componentInputParameter": "pipelinechannel--split_file"}
    assert inputs["fixed_lr"]["defaultValue"] == 0.0  # 0: the family's fixed arm (ahps_core.protocol.FIXED_ARMS)


def test_gpu_requests_and_retries(compiled):
    _, (spec, _), _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-train", "exec-find-base-lr"):
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    for name in ("exec-transfer", "exec-compare"):  # no GPU, but CPU/memory requests like every task
        res = executors[name]["container"]["resources"]
        assert "accelerator" not in res and (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("500m", "2Gi")
    for name in ("exec-train", "exec-find-base-lr"):
        res = executors[name]["container"]["resources"]
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("4", "16Gi")
        assert "AHPS_STEP_MODE" not in {e["name"] for e in executors[name]["container"].get("env", [])}
    policy = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]["retryPolicy"]
    assert policy["maxRetryCount"] == 3 and policy["backoffDuration"] == "60s" and policy["backoffFactor"] == 2.0
    assert spec["root"]["dag"]["tasks"]["find-base-lr"]["retryPolicy"]["maxRetryCount"] == 3
    for name, ex in executors.items():
        assert ex["container"]["image"] == "registry.example.com/ahps:0.1.0", name
        assert "pip install" not in " ".join(ex["container"]["command"]), name  # install_kfp_package=False
    env = {e["name"]: e["value"] for e in executors["exec-train"]["container"].get("env", [])}
    assert env["AHPS_DATA_CACHE"] == "/var/cache/ahps/data"


def test_kubernetes_settings_from_parameters(compiled):
    _, (_, platform), _ = compiled
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = k8s["exec-train"]
    assert train["tolerations"] == [{"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_tolerations"}}]
    assert train["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}}
    assert train["emptyDirMounts"] == [{"mountPath": "/var/cache/ahps/data", "volumeName": "ahps-data-cache"}]
    secrets = {s["secretNameParameter"]["componentInputParameter"]: s for s in train["secretAsEnv"]}
    s3 = secrets["pipelinechannel--s3_secret"]
    assert s3["optional"] is True
    assert {k["envVar"] for k in s3["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    ml = secrets["pipelinechannel--mlflow_secret"]
    assert ml["optional"] is True
    assert {k["envVar"] for k in ml["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert k8s["exec-find-base-lr"]["tolerations"][0]["tolerationJson"]["componentInputParameter"] == "gpu_tolerations"
    for name in ("exec-transfer", "exec-compare"):  # they talk to MLflow: credentials yes, GPU placement no
        assert len(k8s[name]["secretAsEnv"]) == 2 and "tolerations" not in k8s[name]


def test_no_credential_value_in_yaml(compiled):
    text, (spec, _), _ = compiled
    for value in FAKE_CREDS.values():
        assert value not in text
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert not [n for n in inputs if any(w in n.lower() for w in ("password", "secret_key", "token", "access_key"))]
    assert inputs["s3_secret"]["defaultValue"] == "ahps-s3"
    assert inputs["mlflow_secret"]["defaultValue"] == "ahps-mlflow-auth"


def test_compile_options(tmp_path):
    _, (spec, platform), r = compile_yaml(
        tmp_path, "--image", "registry.example.com/ahps:9.9", "--accelerator", "", "--dataset-pvc", "ahps-data",
        "--cache-dir", "/data/cache", "--parallelism", "4", "--retries", "0", "-p", "epochs=7",
        "-p", 'targets=["2_02","2_22"]', "--step-mode", "graphs",
    )
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-train", "exec-find-base-lr"):  # the training steps' step mode, as env
        env = {e["name"]: e["value"] for e in executors[name]["container"]["env"]}
        assert env["AHPS_STEP_MODE"] == "graphs"
    assert "env" not in executors["exec-compare"]["container"]
    assert {ex["container"]["image"] for ex in executors.values()} == {"registry.example.com/ahps:9.9"}
    assert "accelerator" not in executors["exec-train"]["container"]["resources"]
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"]["parallelismLimit"] == 4
    assert "retryPolicy" not in spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert train["pvcMount"][0]["mountPath"] == "/data/cache"
    assert "ahps-data" in str(train["pvcMount"][0]) and "emptyDirMounts" not in train
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["epochs"]["defaultValue"] == 7 and inputs["targets"]["defaultValue"] == ["2_02", "2_22"]


def test_image_from_environment(tmp_path):
    _, (spec, _), _ = compile_yaml(tmp_path, env={"AHPS_IMAGE": "example.org/ahps:env"})
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {"example.org/ahps:env"}


def test_bad_compile_parameter_is_one_line(tmp_path):
    r = subprocess.run([*ahps_cmd(), "compile", "transfer", "-o", str(tmp_path / "x.yaml"), "-p", "family=resnet"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: unknown family 'resnet': accepted are mlp, cnn, nb201"]
    assert not (tmp_path / "x.yaml").exists()


# --- kfp conventions: descriptions, integer defaults ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_reevaluate(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile-re") / "r.yaml"
    r = subprocess.run([*ahps_cmd(), "compile", "reevaluate", "-o", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr
    return out.read_text(), list(yaml.safe_load_all(out.read_text())), r


@pytest.mark.parametrize("which", ["transfer", "reevaluate"])
def test_every_parameter_and_component_input_has_a_description(which, compiled, compiled_reevaluate):
    """kfp reads the pipeline function's docstring ``Args:`` into the IR: every root parameter carries its help
    from PARAMS, and every component's inputs (parameters and artifacts) a description too."""
    import importlib

    params = importlib.import_module(f"pipelines.{which}").PARAMS
    _, (spec, _), _ = compiled if which == "transfer" else compiled_reevaluate
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(inputs) == set(params)
    missing = [n for n, p in inputs.items() if not str(p.get("description", "")).strip()]
    assert not missing, f"root parameters without a description: {missing}"
    assert {n: p["description"] for n, p in inputs.items()} == {n: " ".join(p.help.split()) for n, p in params.items()}
    undescribed = [f"{c}.{n}" for c, comp in spec["components"].items() if "executorLabel" in comp
                   for kind in ("parameters", "artifacts")
                   for n, p in comp.get("inputDefinitions", {}).get(kind, {}).items() if not p.get("description")]
    assert not undescribed, f"component inputs without a description: {undescribed}"


@pytest.mark.parametrize("which", ["transfer", "reevaluate"])
def test_integer_defaults_compile_as_integers(which, compiled, compiled_reevaluate):
    """kfp 2.17 writes every number as a double (``20.0``, ``seeds: [0.0]``); the YAML ahps writes has the
    pipeline function's defaults: integers (and lists of integers) as integers, floats as floats -- in the spec
    and in kfp's header comment."""
    text, (spec, _), _ = compiled if which == "transfer" else compiled_reevaluate
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    ints = {n: p["defaultValue"] for n, p in inputs.items() if p["parameterType"] == "NUMBER_INTEGER"}
    assert ints and all(type(v) is int for v in ints.values()), ints
    for name, p in inputs.items():
        if p["parameterType"] == "NUMBER_DOUBLE":
            assert type(p["defaultValue"]) is float, name
    assert all(type(s) is int for s in inputs["seeds"]["defaultValue"]), inputs["seeds"]
    if which == "transfer":
        assert (ints["epochs"], inputs["seeds"]["defaultValue"], inputs["base_lr"]["defaultValue"]) == (20, [0], 0.0)
        assert "#    epochs: int [Default: 20]" in text and "#    seeds: list [Default: [0]]" in text
    else:
        assert inputs["seeds"]["defaultValue"] == [777, 888, 999] and ints["C"] == 16
        assert all(type(k) is int for k in inputs["topk"]["defaultValue"])


def test_integer_defaults_given_at_compile_time_stay_integers(tmp_path):
    _, (spec, _), _ = compile_yaml(tmp_path, "-p", "seeds=[3,4]", "-p", "epochs=5", "-p", "lr_grid=[0.1,1.0]")
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["seeds"]["defaultValue"] == [3, 4] and all(type(s) is int for s in inputs["seeds"]["defaultValue"])
    assert type(inputs["epochs"]["defaultValue"]) is int
    assert [type(x) for x in inputs["lr_grid"]["defaultValue"]] == [float, float]  # floats stay floats (1.0)


def test_parallel_for_iterations_are_named_by_their_item(compiled):
    """kfp 2.17 takes only a static display name (``set_display_name`` assigns a string to the IR's
    ``taskInfo.name``; a loop item there is not resolved, kubeflow/pipelines#8564, #14008): the task says what it
    runs ("train pack") and every item -- shown as the iteration's ``pack`` input -- and its model artifact carry a
    ``label`` naming the pack's architectures, arms and seeds."""
    from ahps_core.steps.pack import make_packs

    _, (spec, _), _ = compiled
    assert spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train"]["taskInfo"]["name"] == "train pack"
    items = [{"arch": a, "arm": arm, "seed": s} for a in ("2_02", "2_22") for arm in ("autoscaled", "fixed")
             for s in (0, 1)]
    assert [p["label"] for p in make_packs(items, 1)] == ["2_02: autoscaled, fixed x seeds 0, 1",
                                                           "2_22: autoscaled, fixed x seeds 0, 1"]
    assert make_packs(items, 2)[0]["label"] == ("2_02: autoscaled, fixed x seeds 0, 1; "
                                                "2_22: autoscaled, fixed x seeds 0, 1")
    cell = {"arch": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
            "arch_code": "3_33_133", "arm": "autoscaled", "seed": 777}
    assert make_packs([cell], 1)[0]["label"] == "3_33_133: autoscaled x seed 777"


def test_one_default_image_name_everywhere():
    """The default image of components/ (what ahps compile/submit/schedule use), the CLI's help, the README's and
    the Dockerfile's build/push lines, the Dockerfile's version label, the chart's values (repository; tag: the
    chart's appVersion) and the package version name one image: registry.example.com/ahps:0.1.0."""
    import re
    import tomllib

    from components import DEFAULT_IMAGE

    repo, tag = DEFAULT_IMAGE.rsplit(":", 1)
    assert (repo, tag) == ("registry.example.com/ahps", "0.1.0")
    ref = re.compile(r"[\w.-]+(?:/[\w.-]+)*/ahps:[\w.-]+|REGISTRY/ahps\S*")
    for name in ("README.md", "Dockerfile"):
        found = ref.findall((REPO / name).read_text())
        assert found, name
        bad = [r for r in found if r.split(":")[0] != repo or not re.fullmatch(rf"{re.escape(tag)}(-cu\d+)?",
                                                                              r.split(":", 1)[1])]
        assert not bad, f"{name}: {bad}"
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', (REPO / "Dockerfile").read_text())
    assert label and label.group(1) == tag
    values = yaml.safe_load((REPO / "charts/ahps/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "charts/ahps/Chart.yaml").read_text())
    assert values["image"]["repository"] == repo and (values["image"]["tag"] or chart["appVersion"]) == tag
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"] == tag
    r = subprocess.run([*ahps_cmd(), "compile", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert f"$AHPS_IMAGE or {DEFAULT_IMAGE}" in " ".join(r.stdout.split())


@pytest.mark.slow
def test_compiled_pipeline_without_targets_trains_the_familys(tmp_path, monkeypatch):
    """The steps resolve ``targets`` [] themselves (a run started from the KFP UI skips the CLI's check): the
    compiled YAML, run on kfp's local runner without targets, trains the family's default targets."""
    import json
    from pathlib import Path

    from kfp import components, local

    from ahps_core.steps.params import FAMILY_TARGETS
    from ahps_core.tracking import prepare_store

    text, _, _ = compile_yaml(tmp_path, name="no-targets.yaml")
    assert "#    targets: list [Default: []]" in text
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_store(uri)
    pipeline = components.load_component_from_file(str(tmp_path / "no-targets.yaml"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "out"))
    task = pipeline(epochs=1, max_steps_per_epoch=2, lr_grid=[0.1, 0.3], lr_seeds=1, tracking_uri=uri,
                    run_group="no-targets", pack=0)
    summary = json.loads((Path(task.output.path) / "summary.json").read_text())
    assert [r["arch"] for r in summary["rows"]] == FAMILY_TARGETS["mlp"]

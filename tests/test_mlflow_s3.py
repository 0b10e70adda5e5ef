"""MLflow proxied artifacts on S3, end to end: moto's S3 server (the real S3 HTTP API) on loopback, and a
real `mlflow server` started with the arguments and environment the Helm chart renders for S3
artifacts. Only the server gets S3 credentials; the client logs through the tracking URI alone."""

from __future__ import annotations

import http.client
import os
from pathlib import Path

import pytest
import yaml

boto3 = pytest.importorskip("boto3")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("moto.server")
helm = pytest.importorskip("helm_python")

from tests.conftest import free_port, mlflow_server_process, moto_s3_server  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "charts" / "ahps"
BUCKET, PREFIX = "ahps-mlflow", "proxied"
# Stand-ins for the Kubernetes Secret "ahps-s3" the Deployment references (moto accepts any keys).
SECRETS = {("ahps-s3", "AWS_ACCESS_KEY_ID"): "ahps-test-key-id",
           ("ahps-s3", "AWS_SECRET_ACCESS_KEY"): "ahps-test-secret"}
CLIENT_ENV_TO_CLEAR = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
)
STARTUP_DEADLINE_S = 120
IN_CLUSTER_HOST = "ahps-mlflow.ml.svc.cluster.local:5000"


@pytest.fixture(scope="module")
def s3():
    with moto_s3_server() as url:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id=SECRETS[("ahps-s3", "AWS_ACCESS_KEY_ID")],
                              aws_secret_access_key=SECRETS[("ahps-s3", "AWS_SECRET_ACCESS_KEY")])
        client.create_bucket(Bucket=BUCKET)
        yield url, client


def chart_server_container(s3_url: str) -> dict:
    """The MLflow container as the chart renders it for S3 artifacts with credentials from a Secret."""
    values = {"mlflow": {"workers": 1, "artifacts": {"s3": {
        "enabled": True, "bucket": BUCKET, "prefix": PREFIX, "endpointUrl": s3_url, "existingSecret": "ahps-s3"}}},
        # Egress is restricted by default: the S3 endpoint's peers (here: loopback) must be listed.
        "networkPolicy": {"mlflow": {"egress": {"s3To": [{"ipBlock": {"cidr": "127.0.0.1/32"}}]}}}}
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="ahps", namespace="ml")
    (deployment,) = [d for d in yaml.safe_load_all(out["ahps/templates/mlflow-deployment.yaml"]) if d]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def resolve_env(container: dict) -> dict[str, str]:
    """What the kubelet would put in the environment: literal values and secretKeyRefs."""
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRETS[(ref["name"], ref["key"])]
    return env


@pytest.fixture(scope="module")
def mlflow_server(s3, tmp_path_factory):
    s3_url, _ = s3
    workdir = tmp_path_factory.mktemp("mlflow-server")
    container = chart_server_container(s3_url)
    port = free_port()
    overrides = {"--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    args = []
    for arg in container["args"]:
        flag = arg.split("=", 1)[0]
        if flag in overrides:
            arg = f"{flag}={overrides[flag]}"
        elif flag == "--backend-store-uri":  # the chart's file lives on the PVC at /mlflow
            arg = f"--backend-store-uri=sqlite:///{workdir}/mlflow.db"
        args.append(arg)
    assert f"--artifacts-destination=s3://{BUCKET}/{PREFIX}" in args
    # The S3 settings and credentials go to the server's environment only, never to os.environ.
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV_TO_CLEAR}
    env.update(resolve_env(container))
    assert env["MLFLOW_S3_ENDPOINT_URL"] == s3_url and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    env["HOME"] = str(workdir)
    assert container["command"] == ["mlflow", "server"]
    with mlflow_server_process(args, port, workdir, env, STARTUP_DEADLINE_S) as url:
        yield url


@pytest.fixture
def client_without_credentials(mlflow_server, monkeypatch, tmp_path):
    for name in CLIENT_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    # No credentials from files or instance metadata either.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # so that monkeypatch restores it
    assert boto3.Session().get_credentials() is None
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    mlflow.set_tracking_uri(mlflow_server)
    try:
        yield mlflow_server
    finally:
        mlflow.set_tracking_uri(previous)


def test_artifacts_are_proxied_to_s3(client_without_credentials, s3, tmp_path):
    _, s3_client = s3
    # 9 MB crosses boto3's 8 MB multipart threshold on the server's upload to S3.
    payload = os.urandom(9 * 1024 * 1024)
    blob = tmp_path / "checkpoint.bin"
    blob.write_bytes(payload)

    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("ahps-s3-proxy")
    with mlflow.start_run(experiment_id=experiment_id, run_name="proxy") as run:
        mlflow.log_param("family", "nas-bench-201")
        mlflow.log_metric("val_acc", 0.5, step=1)
        mlflow.log_artifact(str(blob), artifact_path="checkpoints")
        mlflow.log_dict({"lr": 0.1}, "config/recipe.json")
    run_id = run.info.run_id
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri

    base = f"{PREFIX}/{experiment_id}/{run_id}/artifacts"
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix=base)["Contents"]}
    assert keys == {f"{base}/checkpoints/checkpoint.bin", f"{base}/config/recipe.json"}
    stored = s3_client.get_object(Bucket=BUCKET, Key=f"{base}/checkpoints/checkpoint.bin")["Body"].read()
    assert stored == payload
    recipe = s3_client.get_object(Bucket=BUCKET, Key=f"{base}/config/recipe.json")["Body"].read()
    assert yaml.safe_load(recipe) == {"lr": 0.1}

    # And back through the server, still without credentials.
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/checkpoint.bin",
                                                dst_path=str(tmp_path / "download"))
    assert Path(local).read_bytes() == payload
    assert client.get_run(run_id).data.params == {"family": "nas-bench-201"}


def _get(url: str, path: str, host: str) -> int:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_server_accepts_only_the_chart_allowed_hosts(mlflow_server):
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(mlflow_server, api, IN_CLUSTER_HOST) == 200   # pipeline pods via the Service
    assert _get(mlflow_server, api, "localhost:5000") == 200   # kubectl port-forward
    assert _get(mlflow_server, api, "evil.example.com") == 403
    assert _get(mlflow_server, "/health", "10.1.2.3:5000") == 200  # kubelet probes use the pod IP

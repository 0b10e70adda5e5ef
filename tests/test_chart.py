"""The Helm chart charts/ahps, rendered by the real Helm engine (helm-python-sdk) and checked with the
Kubernetes OpenAPI schemas (kubernetes-validate): no cluster and no helm binary needed. Bad values, the schema and
the schedule syntax are in test_chart_values.py."""

from __future__ import annotations

import copy
import os
import re

import pytest
import yaml
from chart_render import (
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    PARAMS_DIR,
    POD_KINDS,
    RELEASE,
    SCENARIOS,
    by_kind,
    container,
    env_map,
    mounts,
    notes,
    one,
    pod_spec,
    production_values,
    render,
    volumes,
)

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate")

SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|BACKEND_STORE_URI", re.I)
PASSWORD_IN_URL = re.compile(r"://[^/?#@\s]*:[^/?#@\s]*@")


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as ch:
        yield ch


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: render(chart, values) for name, values in SCENARIOS.items()}


# --------------------------------------------------------------------------------------------- lint, validity


@pytest.mark.parametrize("values_name", sorted(SCENARIOS))
def test_helm_lint_strict_has_no_errors_or_warnings(values_name):
    report = helm.lint(str(CHART), SCENARIOS[values_name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); 2 = warning, 3 = error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_bad_values_as_errors():
    report = helm.lint(str(CHART), {"mlflow": {"replicaCount": -1}}, strict=True, kube_version=f"v{KUBE_VERSION}")
    errors = [m["error"] for m in report["messages"] if m["severity"] >= 3]
    assert any("/mlflow/replicaCount" in e for e in errors), report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_manifest_is_valid_kubernetes(rendered, scenario):
    docs = rendered[scenario]
    assert docs
    extra_ns = set(SCENARIOS[scenario].get("security", {}).get("policy", {}).get("extraNamespaces", []))
    for doc in docs:
        # strict: unknown fields are errors too (a typo in a template fails here).
        kv.validate(doc, KUBE_VERSION, strict=True)
        ns = doc["metadata"]["namespace"]
        assert ns == NAMESPACE or (doc["metadata"]["name"] == "ahps-policy" and ns in extra_ns), doc["metadata"]
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "ahps-0.1.0"


def test_kubernetes_validation_can_fail(rendered):
    deployment = copy.deepcopy(one(rendered["default"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def test_default_install_has_mlflow_and_no_scheduler(rendered, chart):
    kinds = sorted(d["kind"] for d in rendered["default"])
    assert kinds == sorted(["ConfigMap", "Deployment", "NetworkPolicy", "PersistentVolumeClaim", "Service",
                            "ServiceAccount"])
    assert one(rendered["default"], "ConfigMap")["metadata"]["name"] == "ahps-policy"
    text = notes(chart, {})
    assert "Scheduled re-evaluation: off (scheduler.enabled=false)" in text
    assert "--set scheduler.params.data_source=" in text and "--set scheduler.params.benchmark=" in text


def test_scheduler_install_resources(rendered):
    kinds = sorted(d["kind"] for d in rendered["scheduler"])
    assert kinds == sorted([
        "ConfigMap", "ConfigMap", "CronJob", "Deployment", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim",
        "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceAccount",
    ])


def test_production_resources(rendered):
    docs = rendered["production"]
    assert not by_kind(docs, "PersistentVolumeClaim")  # PostgreSQL + S3: nothing on a volume
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert one(docs, "Ingress")["spec"]["rules"][0]["host"] == "mlflow.example.com"
    assert one(docs, "CronJob")["spec"]["timeZone"] == "Etc/UTC"


# --------------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_pod_is_locked_down(rendered, scenario):
    pods = [d for d in rendered[scenario] if d["kind"] in POD_KINDS]
    assert pods
    for doc in pods:
        spec = pod_spec(doc)
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 1000, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        vols = {v["name"]: v for v in spec["volumes"]}
        containers = spec["containers"] + spec.get("initContainers", [])
        assert containers, where
        for c in containers:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            assert not sc.get("privileged"), where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"], where
            # A read-only root needs writable scratch space where the processes write.
            by_path = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for path in ("/tmp", "/home/ahps/.cache"):
                assert path in by_path and "emptyDir" in vols[by_path[path]], (where, path)


def test_no_secret_objects_and_no_credential_values(rendered):
    checked = set()
    for scenario, docs in rendered.items():
        assert not by_kind(docs, "Secret"), scenario
        # No manifest carries a password in a URL (database URIs are built without one).
        assert not PASSWORD_IN_URL.search(yaml.safe_dump_all(docs)), scenario
        for doc in docs:
            if doc["kind"] not in POD_KINDS:
                continue
            for c in pod_spec(doc)["containers"]:
                for name, e in env_map(c).items():
                    if not SECRETISH_ENV.search(name) or name in ("KF_PIPELINES_SA_TOKEN_PATH",):
                        continue
                    # Anything that looks like a credential comes from a Secret.
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (scenario, name)
                    checked.add(name)
    assert {"PGPASSWORD", "MLFLOW_BACKEND_STORE_URI", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= checked


def test_password_in_url_pattern_can_fail():
    assert PASSWORD_IN_URL.search("postgresql://mlflow:hunter2@db:5432/mlflow")
    assert not PASSWORD_IN_URL.search("postgresql://mlflow@db:5432/mlflow?sslmode=require")


def test_credentials_are_referenced_by_name_and_key(rendered):
    c = container(one(rendered["production"], "Deployment"))
    env = env_map(c)
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-mlflow-db", "key": "password"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-s3",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    c = container(one(rendered["postgresql-uri-secret"], "Deployment"))
    assert env_map(c)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "ahps-mlflow-db-uri", "key": "backend-store-uri"}
    assert not any(a.startswith("--backend-store-uri") or "postgresql" in a for a in c["args"])


def test_pipeline_secret_names_are_distinct_from_the_mlflow_objects(rendered):
    docs = rendered["production"]
    data = one(docs, "ConfigMap", "ahps-scheduler")["data"]
    assert (data["s3_secret"], data["mlflow_secret"]) == ("ahps-s3", "ahps-mlflow-auth")
    object_names = {d["metadata"]["name"] for d in docs}
    assert "ahps-mlflow" in object_names and not {"ahps-s3", "ahps-mlflow-auth"} & object_names
    assert one(rendered["scheduler"], "ConfigMap", "ahps-scheduler")["data"]["mlflow_secret"] == "ahps-mlflow-auth"


def test_secret_env_from_a_secret_ref_is_allowed(chart):
    ref = {"secretKeyRef": {"name": "mlflow-auth", "key": "password"}}
    docs = render(chart, {"mlflow": {"extraEnv": [{"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": ref}]}})
    assert env_map(container(one(docs, "Deployment")))["MLFLOW_TRACKING_PASSWORD"]["valueFrom"] == ref


# --------------------------------------------------------------------------------------------- MLflow


def test_mlflow_small_install_uses_sqlite_and_artifacts_on_the_volume(rendered):
    docs = rendered["default"]
    dep = one(docs, "Deployment")
    c = container(dep)
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in c["args"]
    assert "--artifacts-destination=/mlflow/artifacts" in c["args"]
    assert "--serve-artifacts" in c["args"] and "--workers=2" in c["args"]
    assert not any(a.startswith("--app-name") for a in c["args"])
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    claim = volumes(dep)["data"]["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    env = env_map(c)
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_mlflow_production_proxies_s3_and_postgresql_by_parts(rendered):
    dep = one(rendered["production"], "Deployment")
    c = container(dep)
    assert "--artifacts-destination=s3://ahps-mlflow/artifacts" in c["args"]
    # The external database by parts: the URI has a user but no password (libpq reads PGPASSWORD).
    assert ("--backend-store-uri=postgresql://mlflow@postgres.db.svc.cluster.local:5432/mlflow?sslmode=require"
            in c["args"])
    assert "--workers=4" in c["args"]
    assert "--cors-allowed-origins=https://mlflow.example.com" in c["args"]
    env = env_map(c)
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.minio.svc.cluster.local:9000"
    assert "MLFLOW_BACKEND_STORE_URI" not in env
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"


def test_allowed_hosts_cover_service_names_port_forward_and_ingress(rendered):
    c = container(one(rendered["production"], "Deployment"))
    (arg,) = [a for a in c["args"] if a.startswith("--allowed-hosts=")]
    hosts = arg.split("=", 1)[1].split(",")
    svc = f"{RELEASE}-mlflow"
    for h in (svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local",
              "localhost", "127.0.0.1", "mlflow.example.com"):
        assert h in hosts and f"{h}:*" in hosts
    assert "*" not in hosts and len(hosts) == len(set(hosts))


def test_ingress_routes_the_ui_to_the_service(rendered):
    docs = rendered["production"]
    ing = one(docs, "Ingress")["spec"]
    assert ing["ingressClassName"] == "nginx"
    assert ing["tls"] == [{"hosts": ["mlflow.example.com"], "secretName": "mlflow-example-com-tls"}]
    (path,) = ing["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "ahps-mlflow", "port": {"name": "http"}}
    assert one(docs, "Service")["spec"]["ports"][0]["name"] == "http"
    # Without TLS on the Ingress both origins are allowed (TLS may end in front of it).
    c = container(one(rendered["auth-sqlite-ingress"], "Deployment"))
    assert "--cors-allowed-origins=https://mlflow.lab.example.org,http://mlflow.lab.example.org" in c["args"]
    assert "tls" not in one(rendered["auth-sqlite-ingress"], "Ingress")["spec"]
    assert not by_kind(rendered["default"], "Ingress")


def test_mlflow_basic_auth_reads_its_secrets_at_start(rendered):
    for scenario, database_uri in (
            ("auth-sqlite-ingress", "sqlite:////mlflow/basic_auth.db"),
            ("production", "postgresql://mlflow@postgres.db.svc.cluster.local:5432/mlflow?sslmode=require")):
        docs = rendered[scenario]
        dep = one(docs, "Deployment")
        c = container(dep)
        assert "--app-name=basic-auth" in c["args"], scenario
        env = env_map(c)
        assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "ahps-mlflow-admin", "key": "admin-password"}
        assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "ahps-mlflow-admin", "key": "flask-secret-key"}
        path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
        mount = mounts(c)["auth-config"]
        assert path == mount["mountPath"] + "/basic_auth.ini" and mount["readOnly"] is True
        cm = one(docs, "ConfigMap", volumes(dep)["auth-config"]["configMap"]["name"])
        ini = cm["data"]["basic_auth.ini"]
        assert "admin_username = admin" in ini and f"database_uri = {database_uri}" in ini, ini
        assert "admin_password" not in ini
        assert len(dep["spec"]["template"]["metadata"]["annotations"]["checksum/auth-config"]) == 64


def test_service_targets_the_mlflow_pods(rendered):
    docs = rendered["default"]
    svc = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


# --------------------------------------------------------------------------------------------- scheduler


def scheduler_args(doc: dict) -> list[str]:
    return container(doc)["args"]


def test_cronjob_reads_its_parameters_from_the_mounted_configmap(rendered):
    docs = rendered["scheduler"]
    cron = one(docs, "CronJob")
    cm = one(docs, "ConfigMap", "ahps-scheduler")
    assert cron["spec"]["schedule"] == "0 3 * * 0"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    c = container(cron)
    assert c["command"] == ["ahps"]
    assert scheduler_args(cron) == ["submit", "reevaluate", "--params-dir", PARAMS_DIR, "--host",
                                    "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
                                    "--experiment", "ahps-reevaluate"]
    # The whole ConfigMap is the volume: no `items:` list, so a key added later is a file too.
    vol = volumes(cron)["params"]
    assert vol == {"name": "params", "configMap": {"name": cm["metadata"]["name"]}}
    assert mounts(c)["params"] == {"name": "params", "mountPath": PARAMS_DIR, "readOnly": True}
    assert not [e for e in env_map(c) if e.startswith("AHPS_PARAM_")]
    env = env_map(c)
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    data = cm["data"]
    assert data["tracking_uri"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert data["family"] == "nas-bench-201" and data["epochs"] == "12"
    assert data["data_source"] == "s3://ahps-datasets/cifar10"


def test_a_configmap_edit_reaches_the_next_submit_as_files(rendered, tmp_path):
    """What the kubelet makes of the mounted ConfigMap after `kubectl edit` (a changed value and a NEW key): one
    file per key, read by --params-dir's contract (content stripped, JSON when it parses, else the string)."""
    docs = rendered["production"]
    cm = copy.deepcopy(one(docs, "ConfigMap", "ahps-scheduler"))
    cron = one(docs, "CronJob")
    assert volumes(cron)["params"]["configMap"] == {"name": cm["metadata"]["name"]}  # no items: every key
    cm["data"]["epochs"] = "3"
    cm["data"]["max_steps_per_epoch"] = "20"  # not in the values at render time
    for key, value in cm["data"].items():
        (tmp_path / key).write_text(value)

    from ahps.orchestration.params import read_params_dir

    os.symlink(tmp_path / "epochs", tmp_path / "..data")  # the kubelet's bookkeeping entries are skipped
    params = read_params_dir(tmp_path)
    assert "..data" not in params
    assert params["epochs"] == 3 and params["max_steps_per_epoch"] == 20
    assert params["gpu_tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert params["gpu_node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert params["tracking_uri"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert "--param" not in scheduler_args(cron) and PARAMS_DIR in scheduler_args(cron)


def test_empty_parameters_are_kept_as_empty_keys(chart):
    docs = render(chart, {"scheduler": {**SCENARIOS["scheduler"]["scheduler"],
                                        "params": {**SCENARIOS["scheduler"]["scheduler"]["params"],
                                                   "checkpoint_root": ""}}})
    assert one(docs, "ConfigMap", "ahps-scheduler")["data"]["checkpoint_root"] == ""  # empty file: the default


def test_production_params_pass_gpu_placement_as_json(rendered):
    data = one(rendered["production"], "ConfigMap", "ahps-scheduler")["data"]
    assert yaml.safe_load(data["gpu_node_selector"]) == {"nvidia.com/gpu.present": "true"}
    assert yaml.safe_load(data["gpu_tolerations"]) == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                        "effect": "NoSchedule"}]
    assert data["data_source"] == "s3://ahps-datasets/cifar10"
    assert data["sample_size"] == "200"


def test_recurring_run_mode_creates_it_once_from_a_hook(rendered):
    docs = rendered["recurring-run"]
    assert not by_kind(docs, "CronJob")
    job = one(docs, "Job")
    ann = job["metadata"]["annotations"]
    assert ann["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in ann["helm.sh/hook-delete-policy"]
    args = scheduler_args(job)
    assert args[:7] == ["schedule", "reevaluate", "--cron", "0 3 * * 0", "--name", "ahps-reevaluate-weekly",
                        "--replace"]
    assert args[args.index("--params-dir") + 1] == PARAMS_DIR
    assert "--host" in args and "--experiment" in args and "--param" not in args
    assert volumes(job)["params"] == {"name": "params", "configMap": {"name": "ahps-scheduler"}}


def test_kfp_service_account_token_is_projected_for_the_kfp_audience(rendered):
    job = one(rendered["recurring-run"], "Job")
    source = volumes(job)["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "pipelines.kubeflow.org" and source["path"] == "token"
    c = container(job)
    assert env_map(c)["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == mounts(c)["kfp-token"]["mountPath"] + "/token"


def test_kfp_token_from_a_secret_is_mounted_not_inlined(rendered):
    vol = volumes(one(rendered["token-secret"], "CronJob"))["kfp-token"]
    assert vol["secret"]["secretName"] == "kfp-token"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]


def test_no_kfp_token_without_auth(rendered):
    cron = one(rendered["scheduler"], "CronJob")
    assert "kfp-token" not in volumes(cron)
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in env_map(container(cron))


def test_external_mlflow(rendered):
    docs = rendered["external-mlflow"]
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "Service")
    assert one(docs, "ConfigMap", "ahps-scheduler")["data"]["tracking_uri"] == "https://mlflow.example.com"


# --------------------------------------------------------------------------------------------- NOTES


def test_notes_tell_how_to_open_mlflow_and_where_results_live(chart):
    text = notes(chart, production_values())
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-mlflow 5000:5000" in text
    assert "https://mlflow.example.com/" in text
    assert "s3://ahps-mlflow/artifacts/<experiment-id>/<run-id>/artifacts/" in text
    assert "PostgreSQL" in text and "ahps-mlflow-db" in text
    assert "mounted as files at\n/etc/ahps/params" in text and "a new key included" in text
    assert 'Secret\n"ahps-mlflow-admin"' in text and '"ahps-mlflow-auth"' in text

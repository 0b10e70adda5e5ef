"""The Helm chart charts/ahps, rendered by the real Helm engine (helm-python-sdk) and checked with the
Kubernetes OpenAPI schemas (kubernetes-validate): no cluster and no helm binary needed."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kv = pytest.importorskip("kubernetes_validate")

CHART = Path(__file__).resolve().parents[1] / "charts" / "ahps"
PRODUCTION = CHART / "values-production.yaml"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "ahps", "ml"

SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL|BACKEND_STORE_URI", re.I)
POD_KINDS = {"Deployment", "Job", "CronJob"}


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


# Value sets that must all render to valid, secure manifests.
SCENARIOS = {
    "default": {},
    "production": production_values(),
    "recurring-run": {"scheduler": {"mode": "recurringRun"}, "kfp": {"auth": {"type": "serviceAccountToken"}}},
    "token-secret": {"kfp": {"auth": {"type": "secret", "existingSecret": "kfp-token", "key": "token"}}},
    "external-mlflow": {
        "mlflow": {"enabled": False},
        "scheduler": {"params": {"tracking_uri": "https://mlflow.example.com"}},
    },
    "s3-ambient-credentials": {"mlflow": {"artifacts": {"s3": {"enabled": True, "bucket": "ahps-artifacts"}}}},
    "no-networkpolicy-no-rbac": {"networkPolicy": {"enabled": False}, "rbac": {"create": False}},
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as ch:
        yield ch


def render(chart, values: dict) -> list[dict]:
    """Render like `helm template`; return the parsed manifests (NOTES.txt and empty documents left out)."""
    out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: render(chart, values) for name, values in SCENARIOS.items()}


# --------------------------------------------------------------------------------------------- lint/schema


@pytest.mark.parametrize("values_name", ["default", "production"])
def test_helm_lint_strict_has_no_errors_or_warnings(values_name):
    report = helm.lint(str(CHART), SCENARIOS[values_name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{KUBE_VERSION}")
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
    for doc in docs:
        # strict: unknown fields are errors too (a typo in a template fails here).
        kv.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "ahps-0.1.0"


def test_kubernetes_validation_can_fail(rendered):
    deployment = copy.deepcopy(one(rendered["default"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBE_VERSION, strict=True)


def test_default_install_resources(rendered):
    kinds = sorted(d["kind"] for d in rendered["default"])
    assert kinds == sorted([
        "ConfigMap", "CronJob", "Deployment", "NetworkPolicy", "NetworkPolicy", "PersistentVolumeClaim",
        "Role", "RoleBinding", "Service", "ServiceAccount", "ServiceAccount",
    ])


def test_production_resources(rendered):
    docs = rendered["production"]
    assert not by_kind(docs, "PersistentVolumeClaim")  # PostgreSQL + S3: nothing on a volume
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


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
        volumes = {v["name"]: v for v in spec["volumes"]}
        containers = spec["containers"] + spec.get("initContainers", [])
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
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            for path in ("/tmp", "/home/ahps/.cache"):
                assert path in mounts and "emptyDir" in volumes[mounts[path]], (where, path)


def test_no_secret_objects_and_no_credential_values(rendered):
    for scenario, docs in rendered.items():
        assert not by_kind(docs, "Secret"), scenario
        for doc in docs:
            if doc["kind"] not in POD_KINDS:
                continue
            for c in pod_spec(doc)["containers"]:
                for name, e in env_map(c).items():
                    if not SECRETISH_ENV.search(name) or name == "KF_PIPELINES_SA_TOKEN_PATH":
                        continue
                    assert "value" not in e, (scenario, name)
                    # Pipeline parameters (from the ConfigMap) may carry a Secret's *name*; anything else
                    # that looks like a credential comes from a Secret.
                    source = "configMapKeyRef" if name.startswith("AHPS_PARAM_") else "secretKeyRef"
                    assert source in e["valueFrom"], (scenario, name)


def test_credentials_are_referenced_by_name_and_key(rendered):
    container = pod_spec(one(rendered["production"], "Deployment"))["containers"][0]
    env = env_map(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-mlflow-db", "key": "backend-store-uri"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ahps-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert not any("backend-store-uri" in a or "postgresql" in a for a in container["args"])


FAKE = "FAKE-S3CR3T-VALUE-1234"


@pytest.mark.parametrize("values", [
    {"mlflow": {"artifacts": {"s3": {"secretAccessKey": FAKE}}}},
    {"mlflow": {"artifacts": {"s3": {"accessKeyId": FAKE}}}},
    {"mlflow": {"backendStore": {"postgresql": {"uri": f"postgresql://u:{FAKE}@db/mlflow"}}}},
    {"mlflow": {"backendStore": {"postgresql": {"password": FAKE}}}},
    {"kfp": {"auth": {"token": FAKE}}},
    {"mlflow": {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": FAKE}]}},
    {"scheduler": {"extraEnv": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": FAKE}]}},
    {"createSecret": {"AWS_SECRET_ACCESS_KEY": FAKE}},
], ids=["s3-secret-key", "s3-key-id", "db-uri", "db-password", "kfp-token", "env-secret", "env-password",
        "create-secret"])
def test_there_is_no_place_for_a_credential(chart, values):
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)


def test_secret_env_from_a_secret_ref_is_allowed(chart):
    ref = {"secretKeyRef": {"name": "mlflow-auth", "key": "password"}}
    docs = render(chart, {"scheduler": {"extraEnv": [{"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": ref}]}})
    text = yaml.safe_dump_all(docs)
    assert "mlflow-auth" in text and FAKE not in text


# --------------------------------------------------------------------------------------------- MLflow


def test_mlflow_small_install_uses_sqlite_and_artifacts_on_the_volume(rendered):
    docs = rendered["default"]
    dep = one(docs, "Deployment")
    spec = pod_spec(dep)
    c = spec["containers"][0]
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////mlflow/mlflow.db" in c["args"]
    assert "--artifacts-destination=/mlflow/artifacts" in c["args"]
    assert "--serve-artifacts" in c["args"] and "--workers=2" in c["args"]
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    claim = {v["name"]: v for v in spec["volumes"]}["data"]["persistentVolumeClaim"]["claimName"]
    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim and pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    env = env_map(c)
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_mlflow_production_proxies_s3_and_postgresql(rendered):
    dep = one(rendered["production"], "Deployment")
    c = pod_spec(dep)["containers"][0]
    assert "--artifacts-destination=s3://ahps-mlflow/artifacts" in c["args"]
    assert not any(a.startswith("--backend-store-uri") for a in c["args"])
    assert "--workers=4" in c["args"]
    assert "--cors-allowed-origins=https://mlflow.example.com" in c["args"]
    env = env_map(c)
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.minio.svc.cluster.local:9000"
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"


def test_allowed_hosts_cover_service_names_port_forward_and_ingress(rendered):
    c = pod_spec(one(rendered["production"], "Deployment"))["containers"][0]
    (arg,) = [a for a in c["args"] if a.startswith("--allowed-hosts=")]
    hosts = arg.split("=", 1)[1].split(",")
    svc = f"{RELEASE}-mlflow"
    for h in (svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local",
              "localhost", "127.0.0.1"):
        assert h in hosts and f"{h}:*" in hosts
    assert "mlflow.example.com" in hosts and "*" not in hosts


def test_service_targets_the_mlflow_pods(rendered):
    docs = rendered["default"]
    svc = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


# --------------------------------------------------------------------------------------------- scheduler


def test_cronjob_submits_with_parameters_from_the_configmap(rendered):
    docs = rendered["default"]
    cron = one(docs, "CronJob")
    cm = one(docs, "ConfigMap")
    assert cron["spec"]["schedule"] == "0 3 * * 0"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    c = pod_spec(cron)["containers"][0]
    assert c["command"] == ["ahps"]
    args = c["args"]
    assert args[:6] == ["submit", "reevaluate", "--host", "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
                        "--experiment", "ahps-reevaluate"]
    params = [args[i + 1] for i, a in enumerate(args) if a == "--param"]
    env = env_map(c)
    assert params and len(params) == len(cm["data"])
    for p in params:
        name, ref = p.split("=", 1)
        var = f"AHPS_PARAM_{name.upper()}"
        assert ref == f"$({var})"  # expanded by the kubelet from the env below
        assert env[var]["valueFrom"]["configMapKeyRef"] == {"name": cm["metadata"]["name"], "key": name}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert cm["data"]["tracking_uri"] == f"http://{RELEASE}-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert cm["data"]["family"] == "nas-bench-201" and cm["data"]["epochs"] == "12"
    assert "data_source" not in cm["data"]  # empty: the pipeline's own default applies


def test_production_params_pass_gpu_placement_as_json(rendered):
    data = one(rendered["production"], "ConfigMap")["data"]
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
    args = pod_spec(job)["containers"][0]["args"]
    assert args[:6] == ["schedule", "reevaluate", "--cron", "0 3 * * 0", "--name", "ahps-reevaluate-weekly"]
    assert "--host" in args and "--experiment" in args and "--param" in args


def test_kfp_service_account_token_is_projected_for_the_kfp_audience(rendered):
    spec = pod_spec(one(rendered["recurring-run"], "Job"))
    (vol,) = [v for v in spec["volumes"] if v["name"] == "kfp-token"]
    source = vol["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "pipelines.kubeflow.org" and source["path"] == "token"
    c = spec["containers"][0]
    mount = {m["name"]: m for m in c["volumeMounts"]}["kfp-token"]
    assert env_map(c)["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == mount["mountPath"] + "/token"


def test_kfp_token_from_a_secret_is_mounted_not_inlined(rendered):
    spec = pod_spec(one(rendered["token-secret"], "CronJob"))
    (vol,) = [v for v in spec["volumes"] if v["name"] == "kfp-token"]
    assert vol["secret"]["secretName"] == "kfp-token"
    assert vol["secret"]["items"] == [{"key": "token", "path": "token"}]


def test_no_kfp_token_without_auth(rendered):
    spec = pod_spec(one(rendered["default"], "CronJob"))
    assert "kfp-token" not in {v["name"] for v in spec["volumes"]}
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in env_map(spec["containers"][0])


def test_external_mlflow(rendered):
    docs = rendered["external-mlflow"]
    assert not by_kind(docs, "Deployment") and not by_kind(docs, "Service")
    assert one(docs, "ConfigMap")["data"]["tracking_uri"] == "https://mlflow.example.com"


# --------------------------------------------------------------------------------------------- RBAC, network


def test_rbac_is_least_privilege(rendered):
    for scenario, docs in rendered.items():
        for kind in ("ClusterRole", "ClusterRoleBinding"):
            assert not by_kind(docs, kind), scenario
        for role in by_kind(docs, "Role"):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], scenario
                assert "*" not in rule["apiGroups"], scenario
                assert not {"secrets", "pods", "pods/exec"} & set(rule["resources"]), scenario
    (rule,) = one(rendered["default"], "Role")["rules"]
    assert rule == {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["ahps-scheduler"],
                    "verbs": ["get"]}
    binding = one(rendered["default"], "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ahps-scheduler", "namespace": NAMESPACE}]


def test_rbac_for_multi_user_kfp(rendered):
    rules = one(rendered["recurring-run"], "Role")["rules"]
    kfp_rules = [r for r in rules if r["apiGroups"] == ["pipelines.kubeflow.org"]]
    resources = {res for r in kfp_rules for res in r["resources"]}
    assert resources == {"experiments", "pipelines", "runs", "jobs"}
    assert all("delete" not in r["verbs"] for r in kfp_rules if "runs" in r["resources"])


def test_service_accounts_do_not_automount_api_tokens(rendered):
    for sa in by_kind(rendered["default"], "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


def test_network_policies(rendered):
    docs = rendered["default"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    mlflow, sched = policies["ahps-mlflow"], policies["ahps-scheduler"]
    assert mlflow["policyTypes"] == ["Ingress"]
    (rule,) = mlflow["ingress"]
    peers = rule["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ahps", "app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "scheduler"}}} in peers
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in peers
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert sched["policyTypes"] == ["Ingress", "Egress"] and sched["ingress"] == []
    ports = sorted((p["port"], p["protocol"]) for r in sched["egress"] for p in r["ports"])
    assert ports == [(53, "TCP"), (53, "UDP"), (8888, "TCP")]
    # The policies select the pods they are meant for.
    cron_labels = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert sched["podSelector"]["matchLabels"].items() <= cron_labels.items()
    dep_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert mlflow["podSelector"]["matchLabels"].items() <= dep_labels.items()


# --------------------------------------------------------------------------------------------- bad values


BAD_VALUES = {
    "negative-replicas": ({"mlflow": {"replicaCount": -1}}, "at '/mlflow/replicaCount': minimum: got -1, want 0"),
    "missing-bucket": ({"mlflow": {"artifacts": {"s3": {"enabled": True}}}},
                       "at '/mlflow/artifacts/s3/bucket': minLength"),
    "bucket-with-scheme": ({"mlflow": {"artifacts": {"s3": {"enabled": True, "bucket": "s3://ahps/x"}}}},
                           "at '/mlflow/artifacts/s3/bucket': 's3://ahps/x' does not match pattern"),
    "non-s3-data-uri": ({"scheduler": {"params": {"data_source": "gs://ahps-data/cifar"}}},
                        "at '/scheduler/params/data_source': 'gs://ahps-data/cifar' does not match pattern"),
    "kfp-host-without-scheme": ({"kfp": {"host": "ml-pipeline.kubeflow:8888"}}, "at '/kfp/host'"),
    "bad-cron": ({"scheduler": {"schedule": "every sunday"}}, "at '/scheduler/schedule': 'every sunday'"),
    "cron-4-fields": ({"scheduler": {"schedule": "0 3 * *"}}, "at '/scheduler/schedule'"),
    "bad-mode": ({"scheduler": {"mode": "daily"}}, "at '/scheduler/mode'"),
    "postgresql-without-secret": ({"mlflow": {"backendStore": {"type": "postgresql"}}},
                                  "at '/mlflow/backendStore/postgresql/existingSecret'"),
    "missing-limits": ({"mlflow": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}},
                       "at '/mlflow/resources': missing property 'limits'"),
    "typo-key": ({"mlflow": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
    "sqlite-2-replicas": ({"mlflow": {"replicaCount": 2}},
                          "mlflow.replicaCount=2 is not allowed with mlflow.backendStore.type=sqlite: "
                          "SQLite on a PersistentVolumeClaim supports exactly 1 replica"),
    "local-artifacts-2-replicas": (
        {"mlflow": {"replicaCount": 2, "backendStore": {"type": "postgresql", "postgresql": {"existingSecret": "db"}}}},
        "mlflow.replicaCount=2 needs mlflow.artifacts.s3.enabled=true"),
    "external-mlflow-without-uri": ({"mlflow": {"enabled": False}},
                                    "scheduler.params.tracking_uri is required when mlflow.enabled=false"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected_with_a_clear_message(chart, case):
    # Rendered, not linted: lint mode turns a template `fail` into a log line; install/template fail.
    values, message = BAD_VALUES[case]
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(chart, values)
    assert message in str(err.value)


def test_notes_tell_how_to_open_mlflow_and_where_results_live(chart):
    notes = chart.render(production_values(), name=RELEASE, namespace=NAMESPACE)["ahps/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/{RELEASE}-mlflow 5000:5000" in notes
    assert "s3://ahps-mlflow/artifacts/<experiment-id>/<run-id>/artifacts/" in notes
    assert "PostgreSQL" in notes and "ahps-mlflow-db" in notes
    assert FAKE not in notes

"""The chart's access rules, rendered by the real Helm engine: the tracking-host policy ConfigMap, RBAC and the
NetworkPolicies (ingress and egress)."""

from __future__ import annotations

import pytest
from chart_render import CHART, NAMESPACE, RELEASE, SCENARIOS, by_kind, container, env_map, one, render

helm = pytest.importorskip("helm_python")


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as ch:
        yield ch


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: render(chart, values) for name, values in SCENARIOS.items()}


# --------------------------------------------------------------------------------------------- tracking-host policy


def policy_hosts(docs: list[dict], namespace: str = NAMESPACE) -> list[str]:
    (cm,) = [d for d in by_kind(docs, "ConfigMap")
             if d["metadata"]["name"] == "ahps-policy" and d["metadata"]["namespace"] == namespace]
    return cm["data"]["AHPS_ALLOWED_TRACKING_HOSTS"].split(",")


def test_policy_allows_this_releases_mlflow_service_by_default(rendered):
    svc = f"{RELEASE}-mlflow"
    assert policy_hosts(rendered["default"]) == [f"{svc}.{NAMESPACE}.svc.cluster.local:5000",
                                                 f"{svc}.{NAMESPACE}.svc:5000", f"{svc}.{NAMESPACE}:5000",
                                                 f"{svc}:5000"]
    # An external server given by the values is allowed (the scheme's port), and nothing else.
    assert policy_hosts(rendered["external-mlflow"]) == ["mlflow.example.com:443"]


def test_policy_list_from_values_replaces_the_default(chart):
    docs = render(chart, {"security": {"allowedTrackingHosts": ["mlflow.corp.example:8443", "mlflow-b"]}})
    assert policy_hosts(docs) == ["mlflow.corp.example:8443", "mlflow-b"]
    assert not [d for d in render(chart, {"security": {"policy": {"create": False}}})
                if d["metadata"]["name"] == "ahps-policy"]


def test_policy_is_copied_to_the_pipeline_namespace(rendered):
    docs = rendered["policy-extra-namespace"]
    assert policy_hosts(docs, "kubeflow") == policy_hosts(docs, NAMESPACE)


def test_scheduler_gets_the_policy_as_env(rendered):
    for scenario in ("scheduler", "recurring-run", "production"):
        (pod,) = [d for d in rendered[scenario] if d["kind"] in ("CronJob", "Job")]
        ref = env_map(container(pod))["AHPS_ALLOWED_TRACKING_HOSTS"]["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": "ahps-policy", "key": "AHPS_ALLOWED_TRACKING_HOSTS"}, scenario


# --------------------------------------------------------------------------------------------- RBAC, network


def test_rbac_is_least_privilege(rendered):
    roles = 0
    for scenario, docs in rendered.items():
        for kind in ("ClusterRole", "ClusterRoleBinding"):
            assert not by_kind(docs, kind), scenario
        for role in by_kind(docs, "Role"):
            roles += 1
            assert role["rules"], scenario
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] and "*" not in rule["resources"], scenario
                assert "*" not in rule["apiGroups"], scenario
                assert not {"secrets", "pods", "pods/exec"} & set(rule["resources"]), scenario
    assert roles >= 4
    (rule,) = one(rendered["scheduler"], "Role")["rules"]
    assert rule == {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["ahps-scheduler"],
                    "verbs": ["get"]}
    binding = one(rendered["scheduler"], "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ahps-scheduler", "namespace": NAMESPACE}]
    assert not by_kind(rendered["default"], "Role")  # no scheduler, no Role


def test_rbac_for_multi_user_kfp(rendered):
    rules = one(rendered["recurring-run"], "Role")["rules"]
    kfp_rules = [r for r in rules if r["apiGroups"] == ["pipelines.kubeflow.org"]]
    resources = {res for r in kfp_rules for res in r["resources"]}
    assert resources == {"experiments", "pipelines", "runs", "jobs"}
    assert all("delete" not in r["verbs"] for r in kfp_rules if "runs" in r["resources"])


def test_service_accounts_do_not_automount_api_tokens(rendered):
    accounts = by_kind(rendered["scheduler"], "ServiceAccount")
    assert sorted(sa["metadata"]["name"] for sa in accounts) == ["ahps-mlflow", "ahps-scheduler"]
    for sa in accounts:
        assert sa["automountServiceAccountToken"] is False


DNS_PORTS = [(53, "TCP"), (53, "UDP")]


def egress_ports(policy: dict) -> list[tuple]:
    return sorted((p["port"], p["protocol"]) for r in policy.get("egress", []) for p in r["ports"])


def test_network_policies(rendered):
    docs = rendered["scheduler"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    mlflow, sched = policies["ahps-mlflow"], policies["ahps-scheduler"]
    assert mlflow["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = mlflow["ingress"]
    peers = rule["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ahps", "app.kubernetes.io/instance": RELEASE,
                                            "app.kubernetes.io/component": "scheduler"}}} in peers
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubeflow"}}} in peers
    assert len(peers) == 2  # no Ingress: the controller is not let in
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    # SQLite on a volume: the server needs DNS at most.
    assert egress_ports(mlflow) == DNS_PORTS
    assert sched["policyTypes"] == ["Ingress", "Egress"] and sched["ingress"] == []
    assert egress_ports(sched) == DNS_PORTS + [(8888, "TCP")]
    # The policies select the pods they are meant for.
    cron_labels = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert sched["podSelector"]["matchLabels"].items() <= cron_labels.items()
    dep_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert mlflow["podSelector"]["matchLabels"].items() <= dep_labels.items()


def test_mlflow_egress_reaches_only_dns_the_database_and_s3(rendered):
    docs = rendered["production"]
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    mlflow = policies["ahps-mlflow"]
    assert egress_ports(mlflow) == sorted(DNS_PORTS + [(5432, "TCP"), (9000, "TCP")])
    to = {r["ports"][0]["port"]: r["to"] for r in mlflow["egress"]}
    assert to[5432] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}}}]
    assert to[9000] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in \
        mlflow["ingress"][0]["from"]
    # The scheduler's egress stays DNS + the KFP API.
    assert egress_ports(policies["ahps-scheduler"]) == DNS_PORTS + [(8888, "TCP")]


def test_mlflow_egress_can_be_left_open(chart):
    docs = render(chart, {"networkPolicy": {"mlflow": {"egress": {"enabled": False}}}})
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy

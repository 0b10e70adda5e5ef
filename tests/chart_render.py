"""Rendering helpers shared by the chart tests: charts/ahps rendered by the real Helm engine (helm-python-sdk), the
value sets every test module uses, and small accessors for the rendered manifests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "ahps"
PRODUCTION = CHART / "values-production.yaml"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "ahps", "ml"
POD_KINDS = {"Deployment", "Job", "CronJob"}
PARAMS_DIR = "/etc/ahps/params"

#: The scheduler on, with the two parameters the reevaluate pipeline has no cluster default for.
SCHEDULER_ON: dict[str, Any] = {
    "enabled": True,
    "params": {"data_source": "s3://ahps-datasets/cifar10", "benchmark": "s3://ahps-benchmarks/NATS-tss-v1_0-3ffb9-simple"},
}


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated recursively by ``extra`` (a fresh dict; the inputs are not changed)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scheduler(**extra: Any) -> dict:
    """Values with the scheduler on, plus ``extra`` merged into ``scheduler``."""
    return {"scheduler": merge(SCHEDULER_ON, extra)}


# Value sets that must all render to valid, secure manifests.
SCENARIOS: dict[str, dict] = {
    "default": {},
    "scheduler": scheduler(),
    "production": production_values(),
    "recurring-run": merge(scheduler(mode="recurringRun"), {"kfp": {"auth": {"type": "serviceAccountToken"}}}),
    "token-secret": merge(scheduler(),
                          {"kfp": {"auth": {"type": "secret", "existingSecret": "kfp-token", "key": "token"}}}),
    "external-mlflow": merge(scheduler(params={"tracking_uri": "https://mlflow.example.com"}),
                             {"mlflow": {"enabled": False}}),
    "s3-ambient-credentials": {
        "mlflow": {"artifacts": {"s3": {"enabled": True, "bucket": "ahps-artifacts"}}},
        "networkPolicy": {"mlflow": {"egress": {"s3To": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}}},
    },
    "no-networkpolicy-no-rbac": merge(scheduler(), {"networkPolicy": {"enabled": False}, "rbac": {"create": False}}),
    "postgresql-uri-secret": {
        "mlflow": {"backendStore": {"type": "postgresql", "postgresql": {"uriSecret": {"name": "ahps-mlflow-db-uri"}}}},
        "networkPolicy": {"mlflow": {"egress": {"databaseTo": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]}}},
    },
    "auth-sqlite-ingress": {"mlflow": {"auth": {"enabled": True},
                                       "ingress": {"enabled": True, "host": "mlflow.lab.example.org"}}},
    "policy-extra-namespace": {"security": {"policy": {"extraNamespaces": ["kubeflow"]}}},
}


def render_raw(chart, values: dict) -> dict[str, str]:
    """Render like ``helm template``: template path -> text."""
    return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def render(chart, values: dict) -> list[dict]:
    """The parsed manifests of a render (NOTES.txt and empty documents left out)."""
    docs: list[dict] = []
    for path, text in sorted(render_raw(chart, values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(chart, values: dict) -> str:
    return render_raw(chart, values)["ahps/templates/NOTES.txt"]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    names = [d["metadata"]["name"] for d in by_kind(docs, kind)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {names}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def container(doc: dict) -> dict:
    (c,) = pod_spec(doc)["containers"]
    return c


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def volumes(doc: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod_spec(doc)["volumes"]}


def mounts(c: dict) -> dict[str, dict]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}

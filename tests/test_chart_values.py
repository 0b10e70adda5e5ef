"""Values the chart refuses, each with the one message a user sees (schema or template `fail`), the schema's
documentation, and the schedule syntax, checked against the real `ahps schedule` parser."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from chart_render import CHART, SCENARIOS, container, env_map, merge, one, production_values, render, scheduler
from tests.conftest import free_port, mlflow_server_process

helm = pytest.importorskip("helm_python")

REPO = Path(__file__).resolve().parents[1]
FAKE = "FAKE-S3CR3T-VALUE-1234"
PW_URL_MSG = "value must be '(a value without user:password@"
USERINFO_MSG = "value must be '(a URL without user info"
SECRET_ENV_MSG = "value must be '(no literal value for a credential-looking name: use valueFrom.secretKeyRef)'"
SECRET_PARAM_MSG = "value must be '(a parameter name that is not a credential"


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(str(CHART)) as ch:
        yield ch


def failure(chart, values: dict) -> str:
    """The error of a render that must fail (schema or template), as one string."""
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as err:
        render(chart, values)
    return str(err.value)


def env(*entries: dict) -> dict:
    return {"mlflow": {"extraEnv": list(entries)}}


def params(**kv) -> dict:
    return {"scheduler": {"params": kv}}


PG = {"type": "postgresql", "postgresql": {"host": "db.example.com", "passwordSecret": {"name": "db"}}}
DB_PEERS = {"networkPolicy": {"mlflow": {"egress": {"databaseTo": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}}}}

BAD_VALUES = {
    "negative-replicas": ({"mlflow": {"replicaCount": -1}}, "at '/mlflow/replicaCount': minimum: got -1, want 0"),
    "missing-bucket": ({"mlflow": {"artifacts": {"s3": {"enabled": True}}}},
                       "at '/mlflow/artifacts/s3/bucket': minLength"),
    "bucket-with-scheme": ({"mlflow": {"artifacts": {"s3": {"enabled": True, "bucket": "s3://ahps/x"}}}},
                           "at '/mlflow/artifacts/s3/bucket': 's3://ahps/x' does not match pattern"),
    "non-s3-data-uri": (params(data_source="gs://ahps-data/cifar"),
                        "at '/scheduler/params/data_source': 'gs://ahps-data/cifar' does not match pattern"),
    "kfp-host-without-scheme": ({"kfp": {"host": "ml-pipeline.kubeflow:8888"}}, "at '/kfp/host'"),
    "bad-cron": ({"scheduler": {"schedule": "every sunday"}},
                 "at '/scheduler/schedule': value must be '(a cron expression: 5 fields"),
    "cron-4-fields": ({"scheduler": {"schedule": "0 3 * *"}}, "at '/scheduler/schedule'"),
    "bad-mode": ({"scheduler": {"mode": "daily"}}, "at '/scheduler/mode'"),
    "missing-limits": ({"mlflow": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": None}}},
                       "at '/mlflow/resources': missing property 'limits'"),
    "typo-key": ({"mlflow": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
    "sqlite-2-replicas": ({"mlflow": {"replicaCount": 2}},
                          "mlflow.replicaCount=2 is not allowed with mlflow.backendStore.type=sqlite: "
                          "SQLite on a PersistentVolumeClaim supports exactly 1 replica"),
    "local-artifacts-2-replicas": (merge({"mlflow": {"replicaCount": 2, "backendStore": PG}}, DB_PEERS),
                                   "mlflow.replicaCount=2 needs mlflow.artifacts.s3.enabled=true"),
    "external-mlflow-without-uri": (merge({"mlflow": {"enabled": False}}, scheduler()),
                                    "scheduler.params.tracking_uri is required when mlflow.enabled=false"),
    # Issue 15: the scheduler needs the parameters the pipeline has no cluster default for.
    "scheduler-without-data": ({"scheduler": {"enabled": True}},
                               "scheduler.enabled=true needs scheduler.params.data_source and "
                               "scheduler.params.benchmark (empty now, so every scheduled run would be refused)"),
    "scheduler-without-benchmark": (scheduler(params={"benchmark": ""}),
                                    "scheduler.enabled=true needs scheduler.params.benchmark (empty now"),
    "transfer-without-data": (scheduler(pipeline="transfer", params={"data_source": "", "benchmark": ""}),
                              "pipeline=transfer and dataset cifar10 needs scheduler.params.data_source"),
    "cronjob-every": (scheduler(schedule="@every 6h"),
                      'scheduler.schedule="@every 6h" cannot run as a Kubernetes CronJob'),
    "cronjob-6-fields": (scheduler(schedule="0 0 3 * * 0"),
                         'scheduler.schedule="0 0 3 * * 0" has 6 fields: a Kubernetes CronJob '
                         "(scheduler.mode=cronjob) takes 5"),
    "cron-decreasing-range": (scheduler(mode="recurringRun", schedule="0 3 * * FRI-MON"),
                              'scheduler.schedule="0 3 * * FRI-MON": day of week field "fri-mon" has a '
                              "decreasing range"),
    "cron-out-of-range": (scheduler(schedule="0 24 * * *"), "at '/scheduler/schedule'"),
    # External database.
    "postgresql-without-database": ({"mlflow": {"backendStore": {"type": "postgresql"}}},
                                    "mlflow.backendStore.type=postgresql needs mlflow.backendStore.postgresql.host"),
    "postgresql-host-without-password": (
        merge({"mlflow": {"backendStore": {"type": "postgresql", "postgresql": {"host": "db"}}}}, DB_PEERS),
        "mlflow.backendStore.postgresql.passwordSecret.name is required with mlflow.backendStore.postgresql.host"),
    "postgresql-both-forms": (
        merge({"mlflow": {"backendStore": merge(PG, {"postgresql": {"uriSecret": {"name": "u"}}})}}, DB_PEERS),
        "set either host (with port, database, user, sslmode and passwordSecret) or uriSecret.name, not both"),
    "postgresql-bad-sslmode": ({"mlflow": {"backendStore": merge(PG, {"postgresql": {"sslmode": "on"}})}},
                               "at '/mlflow/backendStore/postgresql/sslmode'"),
    "postgresql-without-egress-peers": ({"mlflow": {"backendStore": PG}},
                                        "networkPolicy.mlflow.egress.databaseTo is empty but "
                                        "mlflow.backendStore.type=postgresql"),
    "s3-without-egress-peers": ({"mlflow": {"artifacts": {"s3": {"enabled": True, "bucket": "ahps-artifacts"}}}},
                                "networkPolicy.mlflow.egress.s3To is empty but mlflow.artifacts.s3.enabled=true"),
    # Ingress, auth.
    "ingress-without-host": ({"mlflow": {"ingress": {"enabled": True}}}, "at '/mlflow/ingress/host': minLength"),
    "auth-with-uri-secret": (
        merge({"mlflow": {"auth": {"enabled": True},
                          "backendStore": {"type": "postgresql", "postgresql": {"uriSecret": {"name": "u"}}}}},
              DB_PEERS),
        "mlflow.auth.enabled=true with mlflow.backendStore.postgresql.uriSecret"),
    "auth-without-secret": ({"mlflow": {"auth": {"enabled": True, "existingSecret": ""}}},
                            "mlflow.auth.existingSecret is required when mlflow.auth.enabled=true"),
    "auth-bad-permission": ({"mlflow": {"auth": {"defaultPermission": "ALL"}}},
                            "at '/mlflow/auth/defaultPermission'"),
    "policy-host-with-scheme": ({"security": {"allowedTrackingHosts": ["https://mlflow"]}},
                                "at '/security/allowedTrackingHosts/0'"),
    # Issue 11: credential-looking literal values (the README says the schema rejects them).
    "env-pgpass": (env({"name": "PGPASS", "value": FAKE}), f"at '/mlflow/extraEnv/0/value': {SECRET_ENV_MSG}"),
    "env-pgpassword": (env({"name": "PGPASSWORD", "value": FAKE}), SECRET_ENV_MSG),
    "env-api-key": (env({"name": "API_KEY", "value": FAKE}), SECRET_ENV_MSG),
    "env-suffix-key": (env({"name": "OPENAI_API_KEY", "value": FAKE}), SECRET_ENV_MSG),
    "env-suffix-pass": (env({"name": "SMTP_PASS", "value": FAKE}), SECRET_ENV_MSG),
    "env-token": (env({"name": "HF_TOKEN", "value": FAKE}), SECRET_ENV_MSG),
    "env-credential": (env({"name": "GCP_CREDENTIALS", "value": FAKE}), SECRET_ENV_MSG),
    "env-secret": (env({"name": "AWS_SECRET_ACCESS_KEY", "value": FAKE}), SECRET_ENV_MSG),
    "env-scheduler-password": ({"scheduler": {"extraEnv": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": FAKE}]}},
                               f"at '/scheduler/extraEnv/0/value': {SECRET_ENV_MSG}"),
    "env-database-url": (env({"name": "DATABASE_URL", "value": f"postgresql://mlflow:{FAKE}@db:5432/mlflow"}),
                         f"at '/mlflow/extraEnv/0/value': {PW_URL_MSG}"),
    "env-any-uri": (env({"name": "MY_STORE_URI", "value": f"https://u:{FAKE}@store.example.com"}), PW_URL_MSG),
    "param-tracking-uri-password": (params(tracking_uri=f"http://admin:{FAKE}@mlflow.example.com"),
                                    f"at '/scheduler/params/tracking_uri': {USERINFO_MSG}"),
    "param-any-password-in-url": (params(checkpoint_root=f"s3://u:{FAKE}@bucket/ckpt"),
                                  f"at '/scheduler/params/checkpoint_root': {PW_URL_MSG}"),
    "param-aws-secret-access-key": (params(aws_secret_access_key=FAKE),
                                    f"invalid propertyName 'aws_secret_access_key'\n  - at '': {SECRET_PARAM_MSG}"),
    "param-password": (params(db_password=FAKE), "invalid propertyName 'db_password'"),
    "param-token": (params(kfp_token=FAKE), "invalid propertyName 'kfp_token'"),
    "param-secret": (params(client_secret=FAKE), "invalid propertyName 'client_secret'"),
    "s3-endpoint-userinfo": ({"mlflow": {"artifacts": {"s3": {"endpointUrl": f"http://minio:{FAKE}@minio:9000"}}}},
                             f"at '/mlflow/artifacts/s3/endpointUrl': {USERINFO_MSG}"),
    "kfp-host-userinfo": ({"kfp": {"host": f"http://u:{FAKE}@ml-pipeline:8888"}}, f"at '/kfp/host': {USERINFO_MSG}"),
    "cors-origin-userinfo": ({"mlflow": {"corsAllowedOrigins": [f"https://u:{FAKE}@x.example"]}},
                             f"at '/mlflow/corsAllowedOrigins/0': {USERINFO_MSG}"),
    # Keys the chart has no place for.
    "s3-secret-key-value": ({"mlflow": {"artifacts": {"s3": {"secretAccessKey": FAKE}}}},
                            "additional properties 'secretAccessKey' not allowed"),
    "db-password-value": ({"mlflow": {"backendStore": {"postgresql": {"password": FAKE}}}},
                          "additional properties 'password' not allowed"),
    "auth-password-value": ({"mlflow": {"auth": {"adminPassword": FAKE}}},
                            "additional properties 'adminPassword' not allowed"),
    "kfp-token-value": ({"kfp": {"auth": {"token": FAKE}}}, "additional properties 'token' not allowed"),
    "create-secret": ({"createSecret": {"AWS_SECRET_ACCESS_KEY": FAKE}},
                      "additional properties 'createSecret' not allowed"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_rejected_with_a_clear_message(chart, case):
    # Rendered, not linted: lint mode turns a template `fail` into a log line; install/template fail.
    values, message = BAD_VALUES[case]
    text = failure(chart, values)
    assert message in text, text
    assert FAKE not in text  # the rejected credential is not echoed


@pytest.mark.parametrize("values", [
    env({"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": "/var/run/secrets/eks/token"}),
    env({"name": "PGPASSFILE", "value": "/etc/pg/pgpass"}),
    env({"name": "DATABASE_URL", "value": "postgresql://mlflow@db:5432/mlflow"}),
    env({"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}),
    params(s3_secret="team-s3", mlflow_secret="team-mlflow", s3_endpoint="http://minio.minio:9000"),
], ids=["token-file-path", "pgpassfile-path", "uri-without-password", "password-from-secret", "secret-names"])
def test_credential_rules_let_paths_names_and_references_through(chart, values):
    assert render(chart, values)


# --------------------------------------------------------------------------------------------- schema


def property_nodes(node: dict, path: str = ""):
    """Every node that describes a value: the children of every `properties` map, in the values tree and in the
    shared definitions."""
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), child
        yield from property_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from property_nodes(node["items"], f"{path}[]")
    for name, child in node.get("definitions", {}).items():
        yield from property_nodes(child, f"#{name}")


def test_every_value_in_the_schema_has_a_description():
    schema = json.loads((CHART / "values.schema.json").read_text())
    nodes = list(property_nodes(schema))
    assert len(nodes) > 150
    assert [p for p, n in nodes if not str(n.get("description", "")).strip()] == []


def test_chart_readme_documents_every_secret_the_values_name():
    readme = (CHART / "README.md").read_text()
    names = set()
    for values in (yaml.safe_load((CHART / "values.yaml").read_text()), production_values()):
        p = values["scheduler"]["params"]
        names |= {p["s3_secret"], p["mlflow_secret"], values["mlflow"]["auth"]["existingSecret"]}
        names |= {s["name"] for s in values.get("imagePullSecrets", [])}
        names |= {values["mlflow"]["backendStore"]["postgresql"]["passwordSecret"]["name"],
                  values["mlflow"]["artifacts"]["s3"]["existingSecret"]} - {""}
    assert names >= {"ahps-s3", "ahps-mlflow-auth", "ahps-mlflow-admin", "ahps-mlflow-db", "ahps-registry"}
    for name in sorted(names):
        assert re.search(rf"kubectl -n \"\$NS\" create secret [a-z-]+ {name} ", readme), name
        assert f"| `{name}` |" in readme, name
    assert "**`ahps-policy`**" in readme and "**`AHPS_ALLOWED_TRACKING_HOSTS`**" in readme


# --------------------------------------------------------------------------------------------- schedule syntax


CRON_OK = ["0 3 * * 0", "*/15 * * * *", "0 0 1 1 *", "0 3 * * SUN", "0 3 * jan-mar mon-fri", "0 3 ? * 0",
           "00 03 * * 0", "0 3 1-5/2 * *", "5/10 * * * *", "0  3 * * 0", " 0 3 * * 0 ", "59 23 31 12 6",
           "0 9 * * 1,3,5", "@daily", "@WEEKLY", "@yearly", "@annually", "@monthly", "@midnight", "@hourly",
           "0 0 3 * * 0", "30 0 3 * * ?", "59 59 23 31 12 6"]
CRON_EVERY = ["@every 1h", "@every 90m", "@every 1h30m", "@every 45s"]
CRON_BAD = ["0 3 * *", "0 3 * * * * *", "60 * * * *", "0 24 * * *", "0 3 0 * *", "0 3 32 * *", "0 3 * 13 *",
            "0 3 * * 7", "0 3 * * MON-SUN", "5-1 * * * *", "*/0 * * * *", "a b c d e", "every sunday", "",
            "@weekly2", "@every", "1,,2 * * * *", "0 3 * ? *", "? * * * *", "*-5 * * * *", "0 3 L * *",
            "TZ=UTC 0 3 * * *", "0 3 * * 1-5/0"]
# Junk that KFP would refuse after submission: `ahps schedule` and the chart refuse it at once.
CRON_STRICTER = ["@every soon", "1/ * * * *"]


def chart_accepts(chart, schedule: str, mode: str) -> bool:
    try:
        render(chart, scheduler(mode=mode, schedule=schedule))
    except (helm.HelmValuesError, helm.HelmRenderError):
        return False
    return True


@pytest.mark.parametrize("schedule", CRON_OK + CRON_EVERY + CRON_BAD + CRON_STRICTER)
def test_schedule_is_accepted_by_the_modes_that_can_run_it(chart, schedule):
    valid = schedule in CRON_OK or schedule in CRON_EVERY
    five_or_macro = valid and (schedule.startswith("@") and schedule not in CRON_EVERY
                               or len(schedule.split()) == 5)
    assert chart_accepts(chart, schedule, "recurringRun") == valid
    assert chart_accepts(chart, schedule, "cronjob") == five_or_macro


def test_cronjob_gets_the_normalized_schedule(chart):
    for given, rendered in (("@WEEKLY", "@weekly"), (" 0  3 * JAN-MAR MON-FRI ", "0 3 * jan-mar mon-fri")):
        docs = render(chart, scheduler(schedule=given))
        assert one(docs, "CronJob")["spec"]["schedule"] == rendered
        assert one(render(chart, scheduler(schedule=given, mode="recurringRun")), "Job")["spec"]


def test_schedule_syntax_is_exactly_what_ahps_schedule_accepts(chart):
    from ahps.orchestration.cron import kfp_cron
    from ahps_core.errors import AhpsError

    for schedule in CRON_OK + CRON_EVERY + CRON_BAD + CRON_STRICTER:
        try:
            kfp_cron(schedule)
            cli = True
        except AhpsError:
            cli = False
        assert chart_accepts(chart, schedule, "recurringRun") == cli, schedule


# --------------------------------------------------------------------------------------------- MLflow basic-auth


def test_the_image_can_run_mlflows_basic_auth_app():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG FLASK_WTF_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    assert '"Flask-WTF==${FLASK_WTF_VERSION}"' in dockerfile and "flask_wtf" in dockerfile


@pytest.mark.slow
def test_rendered_basic_auth_config_runs_a_real_mlflow_server(chart, tmp_path):
    """The server's rendered command line, auth config and env (Secrets filled in) start MLflow's basic-auth app:
    /health stays open for the probes, the API needs the admin's password, which the config file never holds."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    values = merge(SCENARIOS["auth-sqlite-ingress"], {"mlflow": {"persistence": {"mountPath": str(tmp_path)}}})
    docs = render(chart, values)
    c = container(one(docs, "Deployment"))
    ini = one(docs, "ConfigMap", "ahps-mlflow-auth-config")["data"]["basic_auth.ini"]
    (tmp_path / "basic_auth.ini").write_text(ini)
    password = "S3cr%t:pw@" + FAKE  # characters an ini file or a URL would mangle
    secrets = {("ahps-mlflow-admin", "admin-password"): password, ("ahps-mlflow-admin", "flask-secret-key"): "k" * 32}
    server_env = dict(os.environ)
    for name, e in env_map(c).items():
        if "value" in e:
            server_env[name] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            server_env[name] = secrets[(ref["name"], ref["key"])]
    server_env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp_path / "basic_auth.ini")
    port = free_port()
    overrides = {"--host": "127.0.0.1", "--port": str(port), "--workers": "1"}
    args = [f"{a.split('=')[0]}={overrides[a.split('=')[0]]}" if a.split("=")[0] in overrides else a
            for a in c["args"]]
    assert "--app-name=basic-auth" in args
    with mlflow_server_process(args, port, tmp_path, server_env) as url:
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"

        def status(user: str | None, pw: str = "") -> int:
            req = urllib.request.Request(search)
            if user:
                req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as err:
                return err.code

        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            assert r.status == 200
        assert status(None) == 401
        assert status("admin", "wrong") == 401
        assert status("admin", password) == 200
    assert password not in ini and FAKE not in (tmp_path / "server.log").read_text()

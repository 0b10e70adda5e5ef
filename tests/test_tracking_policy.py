"""The tracking safeguards one by one, against real stores (a SQLite MLflow store, a small HTTP server on
loopback): redaction, the credential host policy, the pre-check's retries, the time budget and offline journal,
replay without duplicates, and the run-group claims (one owner, followers reuse, dead owners taken over)."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time

import pytest

from ahps_core.errors import ConfigError, TrackingError, TrackingUnavailableError, redact_secrets
from ahps_core.tracking import Tracker, check_tracking_uri, local_store_uri, pending_files, replay, tracked_step
from ahps_core.tracking import claim, policy
from tests.conftest import free_port


@pytest.mark.parametrize("text, shown, hidden", [
    ("http://user:PW1@host:5000/x", "http://user:***@host:5000/x", "PW1"),
    ("https://u:p@ss@h/?token=T0K&x=1", "https://u:***@h/?token=***&x=1", "T0K"),
    ("postgresql://a:PW2@db/x?sslmode=require&password=PW3", "postgresql://a:***@db/x?sslmode=require&password=***",
     "PW"),
    ("GET https://s3/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=beef HTTP", "X-Amz-Signature=***", "beef"),
    ("line one\nhttp://a:PW4@b", "http://a:***@b", "PW4"),
])
def test_redaction(text, shown, hidden):
    out = redact_secrets(text)
    assert shown in out and hidden not in out
    assert str(TrackingError(text)).count("\n") == 0 and hidden not in str(TrackingError(text))


def test_credential_host_policy(monkeypatch):
    uri = "http://ahps-mlflow.ml.svc:5000"
    for name in policy.CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(policy.ALLOWED_HOSTS_ENV, "")
    policy.check_credential_host(uri)  # no credentials in the environment: nothing to protect
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t")
    with pytest.raises(TrackingError, match="ahps-mlflow.ml.svc:5000.*none"):
        policy.check_credential_host(uri)  # present but empty: no host at all
    monkeypatch.setenv(policy.ALLOWED_HOSTS_ENV, "other:1, ahps-mlflow.ml.svc:5000")
    policy.check_credential_host(uri)
    with pytest.raises(TrackingError, match="refusing to send MLflow credentials to ahps-mlflow.ml.svc:5001"):
        policy.check_credential_host("http://ahps-mlflow.ml.svc:5001")
    monkeypatch.setenv(policy.ALLOWED_HOSTS_ENV, "ahps-mlflow.ml.svc")  # a bare host: any port
    policy.check_credential_host("http://AHPS-mlflow.ml.svc:5001/")
    policy.check_credential_host("sqlite:///x/mlflow.db")  # no HTTP: no credential is sent
    monkeypatch.delenv(policy.ALLOWED_HOSTS_ENV)
    policy.check_credential_host("http://anywhere:1")  # no ConfigMap: no restriction
    monkeypatch.setenv(policy.ALLOWED_HOSTS_ENV, "host:notaport")
    with pytest.raises(ConfigError, match="'host:notaport' is not host:port"):
        policy.check_credential_host(uri)
    monkeypatch.setenv(policy.BUDGET_ENV, "-3")
    with pytest.raises(ConfigError, match="AHPS_TRACKING_TIMEOUT_S '-3'"):
        policy.budget_s()


class _Health(http.server.BaseHTTPRequestHandler):
    """Answers like an MLflow server: 503 for the first ``busy`` requests, then 200; records Authorization."""

    busy = 0
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append(self.headers.get("Authorization", ""))
        if type(self).busy > 0:
            type(self).busy -= 1
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def _serve(port: int, delay: float = 0.0):
    def run():
        time.sleep(delay)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        holder.append(server)

    holder: list = []
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return holder, thread


def test_precheck_waits_for_a_restarting_or_busy_server(monkeypatch):
    monkeypatch.setenv(policy.BUDGET_ENV, "20")
    port = free_port()
    holder, thread = _serve(port, delay=1.5)  # nothing listens for 1.5 s (a restart)
    _Health.busy, _Health.seen = 2, []  # then it is busy twice
    try:
        assert check_tracking_uri(f"http://user:pw@127.0.0.1:{port}") == f"http://user:pw@127.0.0.1:{port}"
        assert _Health.seen and all(h.startswith("Basic ") for h in _Health.seen)  # user:password from the URI
    finally:
        thread.join()
        holder[0].shutdown()


def test_precheck_gives_up_after_the_budget(monkeypatch):
    monkeypatch.setenv(policy.BUDGET_ENV, "2")
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match=r"u:\*\*\*@127.0.0.1.*cannot be reached.*asked for") as err:
        check_tracking_uri(f"http://u:SECRET@127.0.0.1:{port}")
    assert "SECRET" not in str(err.value)
    assert 1.5 < time.monotonic() - t0 < 15


# --- the offline journal and its replay ----------------------------------------------------------------------------


def _down_tracker(tmp_path, monkeypatch, group: str) -> Tracker:
    monkeypatch.setenv(policy.BUDGET_ENV, "0.5")
    monkeypatch.setenv("AHPS_TRACKING_JOURNAL", str(tmp_path / "journal"))
    return Tracker(f"http://127.0.0.1:{free_port()}", "ahps", group)


def _runs(uri: str, group: str) -> list:
    tr = Tracker(uri, "ahps", group)
    return tr.group_runs()


def test_outage_is_journaled_then_replayed_once(tmp_path, monkeypatch):
    down = _down_tracker(tmp_path, monkeypatch, "g1")
    t0 = time.monotonic()
    with tracked_step(down, down.key("a"), name="a", kind="train", identity="h1", params={"lr": 0.1}) as run:
        assert run.offline and not run.reused
        run.log_history_async([{"epoch": 1, "train_loss": 2.0}, {"epoch": 2, "train_loss": 1.0}])
        run.log_metrics({"final": 0.5})
        (tmp_path / "r.json").write_text("{}")
        run.log_file(tmp_path / "r.json")
        run.summary = {"acc": 0.5}
    down.finish(down.parent_id)
    assert time.monotonic() - t0 < 10  # one budget, then everything goes to the journal at once
    assert down.journaled >= 5 and len(pending_files(tmp_path / "journal", "g1")) == 1
    (tmp_path / "r.json").unlink()  # the journal keeps its own copy

    uri = local_store_uri(tmp_path / "store")
    monkeypatch.setenv(policy.BUDGET_ENV, "30")
    kept = tmp_path / "copy"
    shutil.copytree(tmp_path / "journal", kept)
    report = replay(uri, tmp_path / "journal")
    assert report.runs == 2 and not report.failed and not pending_files(tmp_path / "journal")
    again = replay(uri, kept)  # the same journal once more: already complete in MLflow, nothing doubled
    assert again.skipped_runs == 1

    runs = _runs(uri, "g1")
    assert sorted(r.tags.get("ahps.kind") for r in runs) == ["parent", "train"]
    assert {r.status for r in runs} == {"FINISHED"}
    child = next(r for r in runs if r.tags.get("ahps.kind") == "train")
    tr = Tracker(uri, "ahps", "g1")
    history = tr.client.get_metric_history(child.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 2.0), (2, 1.0)]
    assert tr.load_summary(child.run_id) == {"acc": 0.5} and child.params == {"lr": "0.1"}
    assert [a.path for a in tr.client.list_artifacts(child.run_id)] == ["ahps", "r.json"]


def test_an_unreachable_store_costs_one_budget_per_process(tmp_path, monkeypatch):
    down = _down_tracker(tmp_path, monkeypatch, "g2")
    monkeypatch.setenv(policy.BUDGET_ENV, "1.5")  # attempts at 0 and 0.5 s, then the next pause would overrun it
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError):
        down.find("g2/x")
    first = time.monotonic() - t0
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match="skipped"):
        down.find("g2/y")
    assert time.monotonic() - t0 < 0.2 and first >= 0.3


# --- claims -------------------------------------------------------------------------------------------------------


def test_concurrent_steps_compute_once_and_the_others_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv(claim.POLL_ENV, "0.2")
    monkeypatch.setenv("AHPS_CLAIM_SETTLE_S", "0.3")
    uri = local_store_uri(tmp_path / "store")
    Tracker(uri).client  # noqa: B018 - the schema, once
    computed, results, errors = [], [], []

    def step(i: int) -> None:
        tr = Tracker(uri, "ahps", "race")
        tr.ensure_parent(params={"n": 1})
        try:
            with tracked_step(tr, tr.key("x"), name="x", kind="train", identity="h") as run:
                if run.reused:
                    results.append(run.summary)
                    return
                computed.append(i)
                time.sleep(1.0)
                run.log_metrics({"m": 1.0}, step=1)
                run.summary = {"by": i}
                results.append(run.summary)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(computed) == 1
    assert results == [{"by": computed[0]}] * 3
    runs = _runs(uri, "race")
    assert sorted(r.tags.get("ahps.kind") for r in runs) == ["parent", "train"]


def test_a_dead_owner_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv(claim.POLL_ENV, "0.2")
    monkeypatch.setenv(claim.LEASE_ENV, "1")
    uri = local_store_uri(tmp_path / "store")
    tr = Tracker(uri, "ahps", "dead")
    key = tr.key("x")
    ref = tr.create_child(key, name="x", kind="train", config_hash="h")
    assert claim.take(tr, key, 0, ref.run_id, f"{socket.gethostname()}-elsewhere/1/abcd")  # another host
    assert not claim.take(tr, key, 0, ref.run_id, "someone/2/else")  # generation 0 is taken, atomically
    t0 = time.monotonic()
    got = claim.acquire(tr, key, name="x", kind="train", tags={}, config_hash="h", identity_tag="ahps.config_hash",
                        identity="h")
    assert got.ref.run_id == ref.run_id and got.resumed and not got.reused
    assert 0.5 < time.monotonic() - t0 < 10  # waited for the lease of the silent owner, then took over
    assert claim.current(tr, key).gen == 1
    with pytest.raises(ConfigError, match="another configuration"):
        claim.acquire(tr, key, name="x", kind="train", tags={}, config_hash="other", identity_tag="ahps.config_hash",
                      identity="other")

"""A small in-process HTTP server that speaks the Kubeflow Pipelines v2beta1 REST endpoints ``ahps submit`` and
``ahps schedule`` call (through the real ``kfp.Client``), and records every request.

Endpoints (JSON in snake_case, as KFP's grpc-gateway serves them; the recurring-run list uses ``recurringRuns``,
as ``kfp_server_api`` expects):

* ``GET  /apis/v2beta1/healthz``
* ``GET  /apis/v2beta1/experiments?filter=...`` / ``POST /apis/v2beta1/experiments``
* ``POST /apis/v2beta1/runs``, ``GET /apis/v2beta1/runs/{id}`` (each GET moves the run one step along
  ``run_states``, e.g. ``["RUNNING", "SUCCEEDED"]``, and stays at the last)
* ``GET  /apis/v2beta1/pipelines?filter=...``, ``POST /apis/v2beta1/pipelines/upload`` (multipart),
  ``POST /apis/v2beta1/pipelines/upload_version``, ``GET /apis/v2beta1/pipelines/{id}/versions?filter=...``
* ``GET  /apis/v2beta1/recurringruns?filter=...`` / ``POST /apis/v2beta1/recurringruns`` /
  ``DELETE /apis/v2beta1/recurringruns/{id}``

Filters: JSON ``{"predicates": [{"key": "display_name", "operation": "EQUALS", "stringValue": ...}]}``.
Anything else answers 404 (and is recorded), so a test sees unexpected calls.

Usage::

    with FakeKFP() as kfp:
        ... run ``ahps submit --host {kfp.url}`` ...
        kfp.requests      # [{"method", "path", "query", "headers", "json", "files"}]
        kfp.runs, kfp.recurring_runs, kfp.experiments, kfp.pipelines, kfp.versions
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API = "/apis/v2beta1"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: dict, filter_json: str | None) -> bool:
    if not filter_json:
        return True
    spec = json.loads(filter_json)
    for p in spec.get("predicates", []):
        value = p.get("stringValue", p.get("string_value"))
        op = p.get("operation", p.get("op"))
        if op not in ("EQUALS", 1) or obj.get(p.get("key")) != value:
            return False
    return True


def _multipart_files(content_type: str, body: bytes) -> dict[str, bytes]:
    """``{field name: content}`` of a multipart/form-data body (enough for kfp's uploads)."""
    boundary = None
    for part in content_type.split(";"):
        part = part.strip()
        if part.startswith("boundary="):
            boundary = part[len("boundary="):].strip('"')
    if not boundary:
        return {}
    files = {}
    for chunk in body.split(b"--" + boundary.encode()):
        if b"\r\n\r\n" not in chunk:
            continue
        head, _, content = chunk.partition(b"\r\n\r\n")
        name = None
        for line in head.decode(errors="replace").split("\r\n"):
            if line.lower().startswith("content-disposition"):
                for item in line.split(";"):
                    item = item.strip()
                    if item.startswith("name="):
                        name = item[len("name="):].strip('"')
        if name:
            files[name] = content[:-2] if content.endswith(b"\r\n") else content
    return files


class FakeKFP:
    """The fake server (see the module docstring); a context manager that starts and stops it."""

    def __init__(self, *, multi_user: bool = False, token: str | None = None,
                 run_states: tuple[str, ...] = ("RUNNING", "SUCCEEDED")) -> None:
        self.multi_user = multi_user
        self.run_states = run_states
        self.token = token  # when set, requests without "Authorization: Bearer <token>" get 401
        self.requests: list[dict[str, Any]] = []
        self.experiments: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.recurring_runs: list[dict[str, Any]] = []
        self.pipelines: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> FakeKFP:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _handle(self, method: str) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                record: dict[str, Any] = {"method": method, "path": parsed.path, "query": query,
                                          "headers": dict(self.headers.items()), "json": None, "files": {}}
                if raw and ctype.startswith("application/json"):
                    record["json"] = json.loads(raw)
                elif raw and ctype.startswith("multipart/form-data"):
                    record["files"] = _multipart_files(ctype, raw)
                with fake.lock:
                    fake.requests.append(record)
                    if fake.token and self.headers.get("Authorization") != f"Bearer {fake.token}":
                        status, payload = 401, {"error": "unauthenticated", "code": 16, "message": "no valid token"}
                    else:
                        status, payload = fake._route(method, parsed.path, query, record)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeKFP:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[dict[str, Any]]:
        """Recorded requests, optionally by method and path prefix (relative to /apis/v2beta1)."""
        return [r for r in self.requests if (method is None or r["method"] == method)
                and r["path"].startswith(API + path_prefix)]

    # -- routing ----------------------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, str], record: dict[str, Any]) -> tuple[int, Any]:
        if not path.startswith(API):
            return 404, {"error": f"not found: {path}"}
        rest = path[len(API):]
        body = record["json"] or {}
        if method == "GET" and rest == "/healthz":
            return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
        if rest == "/experiments":
            if method == "GET":
                found = [e for e in self.experiments if _matches(e, query.get("filter"))]
                return 200, ({"experiments": found, "total_size": len(found)} if found else {})
            if method == "POST":
                exp = {"experiment_id": str(uuid.uuid4()), "display_name": body.get("display_name"),
                       "description": body.get("description"), "namespace": body.get("namespace"),
                       "created_at": _now(), "storage_state": "AVAILABLE"}
                self.experiments.append(exp)
                return 200, exp
        if rest == "/runs" and method == "POST":
            run = {**body, "run_id": str(uuid.uuid4()), "created_at": _now(), "state": "PENDING"}
            self.runs.append(run)
            return 200, run
        if rest.startswith("/runs/") and method == "GET":
            rid = rest[len("/runs/"):]
            for run in self.runs:
                if run["run_id"] == rid:
                    polls = run.setdefault("_polls", 0)
                    run["_polls"] += 1
                    run["state"] = self.run_states[min(polls, len(self.run_states) - 1)]
                    return 200, {k: v for k, v in run.items() if not k.startswith("_")}
            return 404, {"error": f"run {rid} not found", "code": 5}
        if rest == "/pipelines" and method == "GET":
            found = [p for p in self.pipelines if _matches(p, query.get("filter"))]
            return 200, ({"pipelines": found, "total_size": len(found)} if found else {})
        if rest == "/pipelines/upload" and method == "POST":
            name = query.get("name") or query.get("display_name")
            pipe = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "name": name,
                    "description": query.get("description"), "created_at": _now()}
            self.pipelines.append(pipe)
            self._add_version(pipe["pipeline_id"], name, record)
            return 200, pipe
        if rest == "/pipelines/upload_version" and method == "POST":
            pid = query.get("pipelineid")
            if not any(p["pipeline_id"] == pid for p in self.pipelines):
                return 404, {"error": f"pipeline {pid} not found", "code": 5}
            return 200, self._add_version(pid, query.get("name"), record)
        if rest.startswith("/pipelines/") and rest.endswith("/versions") and method == "GET":
            pid = rest[len("/pipelines/"):-len("/versions")]
            found = [v for v in self.versions if v["pipeline_id"] == pid and _matches(v, query.get("filter"))]
            return 200, ({"pipeline_versions": found, "total_size": len(found)} if found else {})
        if rest == "/recurringruns":
            if method == "GET":
                found = [r for r in self.recurring_runs if _matches(r, query.get("filter"))
                         and (not query.get("experiment_id") or r.get("experiment_id") == query["experiment_id"])]
                return 200, ({"recurringRuns": found, "total_size": len(found)} if found else {})
            if method == "POST":
                rr = {**body, "recurring_run_id": str(uuid.uuid4()), "created_at": _now(), "status": "ENABLED"}
                self.recurring_runs.append(rr)
                return 200, rr
        if rest.startswith("/recurringruns/") and method == "DELETE":
            rid = rest[len("/recurringruns/"):]
            before = len(self.recurring_runs)
            self.recurring_runs = [r for r in self.recurring_runs if r["recurring_run_id"] != rid]
            return (200, {}) if len(self.recurring_runs) < before else (404, {"error": "not found", "code": 5})
        return 404, {"error": f"not found: {method} {path}", "code": 5}

    def _add_version(self, pipeline_id: str, name: str | None, record: dict[str, Any]) -> dict[str, Any]:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "display_name": name,
                   "name": name, "created_at": _now(),
                   "package_size": len(record["files"].get("uploadfile", b""))}
        self.versions.append(version)
        return version

"""A Kubeflow Pipelines host: compile a pipeline to IR YAML, check the host, submit a run, create (or replace)
a recurring run. kfp's client is imported lazily; its errors become one-line
:class:`~ahps_core.errors.OrchestrationError` s, and its own console output is kept off stdout.

Authentication: ``KF_PIPELINES_SA_TOKEN_PATH`` names a token file (multi-user Kubeflow), re-read on every request
so projected service-account tokens refresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError, OrchestrationError
from pipelines import PipelineDef
from pipelines.cluster import TaskSettings

from ahps.orchestration.params import check_no_credentials, validated

KFP_TIMEOUT_S = 10.0


# An OCI image reference: [registry[:port]/]path[:tag][@digest] (distribution's reference grammar, simplified).
_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)


def check_image(image: str | None) -> str | None:
    """``image`` when it is a valid image reference (``REGISTRY[:PORT]/PATH[:TAG][@DIGEST]``, no spaces or line
    breaks), or None (the default image)."""
    if image is None:
        return None
    if len(image) > 512 or not _IMAGE.fullmatch(image):
        raise ConfigError(f"--image {image!r} is not an image reference: expected REGISTRY[:PORT]/PATH[:TAG][@DIGEST], "
                          "e.g. registry.example.com/ahps:0.1.0")
    return image


def build(pipe: PipelineDef, settings: TaskSettings, image: str | None):
    """The pipeline function of ``pipe`` with these compile-time settings, on ``image``."""
    return pipe.load().build(settings, base_image=image)


def check_host(host: str) -> str:
    host = host.rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise ConfigError(f"KFP host {host!r} must be a URL like http://ml-pipeline.kubeflow.svc.cluster.local:8888")
    req = urllib.request.Request(f"{host}/apis/v2beta1/healthz", headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=KFP_TIMEOUT_S) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise OrchestrationError(f"KFP host {host} refused the request (HTTP {exc.code}): set "
                                     "KF_PIPELINES_SA_TOKEN_PATH to a token file") from None
        raise OrchestrationError(f"KFP host {host} answered HTTP {exc.code} {exc.reason} on /apis/v2beta1/healthz; "
                                 "is it a Kubeflow Pipelines v2 API endpoint?") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OrchestrationError(f"KFP host {host} cannot be reached: {reason}") from None
    return host


def _token() -> str | None:
    path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise OrchestrationError(f"cannot read the KFP token file {path} (KF_PIPELINES_SA_TOKEN_PATH): "
                                 f"{exc.strerror}") from None


def _auth_headers() -> dict[str, str]:
    token = _token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(host: str, namespace: str | None):
    """A ``kfp.Client`` for ``host``; with ``KF_PIPELINES_SA_TOKEN_PATH`` the token file is sent (and re-read on
    every request, so projected service-account tokens refresh). kfp's own console noise is kept off stdout."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    credentials = ServiceAccountTokenVolumeCredentials(os.environ["KF_PIPELINES_SA_TOKEN_PATH"]) \
        if os.environ.get("KF_PIPELINES_SA_TOKEN_PATH") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with kfp_errors(host):
            return kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials)


@contextlib.contextmanager
def kfp_errors(host: str):
    """kfp/HTTP exceptions -> one-line :class:`OrchestrationError`."""
    try:
        yield
    except (ConfigError, OrchestrationError):
        raise
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status is not None:
            body = getattr(exc, "body", "") or ""
            try:
                detail = json.loads(body).get("message") or json.loads(body).get("error") or body
            except (ValueError, AttributeError):
                detail = body
            detail = str(detail).strip().splitlines()[0][:300] if detail else getattr(exc, "reason", "")
            raise OrchestrationError(f"KFP host {host} refused the request: HTTP {status} {detail}") from None
        mod = type(exc).__module__.split(".")[0]
        if mod in ("urllib3", "kfp_server_api", "requests") or isinstance(exc, (OSError, TimeoutError)):
            raise OrchestrationError(f"KFP host {host} failed: {str(exc).splitlines()[0][:300]}") from None
        raise


def quiet():
    """kfp.Client prints links ('Experiment details: ...') itself: keep them out of our output."""
    return contextlib.redirect_stdout(io.StringIO())


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _upload(kfp_client, package: Path, pipeline_name: str, namespace: str | None) -> tuple[str, str]:
    """Upload ``package`` as pipeline ``pipeline_name`` (created when missing) with a version named after its
    content hash (reused when that version exists); returns ``(pipeline_id, version_id)``."""
    import yaml

    # hash the content, not the text: the compiler's header comment lists struct defaults in random key order
    docs = list(yaml.safe_load_all(package.read_text()))
    digest = hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    version_name = f"{pipeline_name}-{digest}"
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        kfp_client.upload_pipeline(str(package), pipeline_name=pipeline_name, namespace=namespace,
                               description="ahps pipeline (uploaded by ahps schedule)")
        pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            raise OrchestrationError(f"pipeline {pipeline_name!r} was uploaded but cannot be found")
    versions = kfp_client.list_pipeline_versions(pipeline_id, filter=_name_filter(version_name), page_size=100)
    for v in versions.pipeline_versions or []:
        if v.display_name == version_name:
            return pipeline_id, v.pipeline_version_id
    version = kfp_client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _same_number(a: Any, b: Any) -> bool:
    """``a == b`` where kfp's protobuf round trip may have turned ints into floats (also inside lists/dicts)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_number(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_number(a[k], b[k]) for k in a)
    return bool(a == b)


def integer_defaults(docs: list[dict[str, Any]], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The compiled documents with the root parameters' defaults as the pipeline function has them.

    kfp 2.17 keeps a default in a protobuf ``Value``, whose numbers are doubles: ``epochs: int = 20`` compiles to
    ``defaultValue: 20.0`` and ``seeds = [0]`` to ``[0.0]``. Every ``NUMBER_INTEGER``, ``LIST`` and ``STRUCT``
    default is put back to its Python value (``defaults``) when the two are numerically equal (they always are:
    anything else is left as kfp wrote it)."""
    params = docs[0].get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, spec in params.items():
        if name not in defaults or "defaultValue" not in spec:
            continue
        if spec.get("parameterType") not in ("NUMBER_INTEGER", "LIST", "STRUCT"):
            continue
        want = json.loads(json.dumps(defaults[name]))
        if _same_number(spec["defaultValue"], want):
            spec["defaultValue"] = want
    return docs


def compile_to(pipeline_func, path: str | os.PathLike[str], pipeline_parameters: dict[str, Any] | None = None) -> Path:
    """Compile ``pipeline_func`` to the IR YAML ``path`` (``pipeline_parameters``: defaults baked in), integer
    defaults as integers (:func:`integer_defaults`; kfp's header comment is written again from the fixed spec)."""
    import yaml
    from kfp import compiler
    from kfp.compiler.pipeline_spec_builder import extract_comments_from_pipeline_spec

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ConfigError(f"output directory {path.parent} does not exist")
    try:
        compiler.Compiler().compile(pipeline_func, str(path), pipeline_parameters=pipeline_parameters or None)
        defaults = {k: spec.default for k, spec in (pipeline_func.component_spec.inputs or {}).items()}
        docs = integer_defaults(list(yaml.safe_load_all(path.read_text(encoding="utf-8"))),
                                {**defaults, **(pipeline_parameters or {})})
        header = extract_comments_from_pipeline_spec(docs[0], docs[0]["pipelineInfo"].get("description"))
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(header)
            yaml.safe_dump_all(docs, fh, sort_keys=True, allow_unicode=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _prepared(pipe: PipelineDef, given: dict[str, Any], host: str, settings: TaskSettings, image: str | None,
              tmp: str) -> tuple[dict[str, Any], str, Path]:
    """``(arguments, host, package)`` of a remote run: the given parameters checked and normalized (e.g. family
    aliases: the normalized values are what the run gets), the host checked, the pipeline compiled."""
    check_no_credentials(given, "the run's arguments in Kubeflow Pipelines")
    check_image(image)
    checked = validated(pipe, given, local=False)
    arguments = {k: checked[k] for k in given}
    host = check_host(host)
    package = compile_to(build(pipe, settings, image), Path(tmp) / f"ahps-{pipe.name}.yaml")
    return arguments, host, package


_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
#: KFP v2 run states that end a run (``kfp.Client.wait_for_run_completion`` misses CANCELED: it would wait forever).
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


@dataclass(frozen=True)
class RunOptions:
    """What ``kfp.Client.create_run_from_pipeline_package`` takes beyond the package and arguments:
    ``pipeline_root`` (the run's artifact root, e.g. ``s3://bucket/ahps``; None: the KFP default),
    ``service_account`` (the pods' Kubernetes ServiceAccount; None: KFP's default), ``enable_caching`` (False:
    no task of the run reads KFP's cache; None: the compile-time settings)."""

    pipeline_root: str | None = None
    service_account: str | None = None
    enable_caching: bool | None = None

    def __post_init__(self) -> None:
        if self.pipeline_root is not None:
            if not _URI.match(self.pipeline_root):
                raise ConfigError(f"--pipeline-root {self.pipeline_root!r} must be a URI like s3://bucket/ahps, "
                                  "gs://bucket/ahps or minio://mlpipeline/v2/artifacts")
            check_no_credentials({"pipeline_root": self.pipeline_root}, "the KFP run")
        if self.service_account is not None and (not _K8S_NAME.match(self.service_account)
                                                 or len(self.service_account) > 253):
            raise ConfigError(f"--service-account {self.service_account!r} is not a valid Kubernetes ServiceAccount "
                              "name (lower-case letters, digits, '-' and '.')")

    def kwargs(self) -> dict[str, Any]:
        return {"pipeline_root": self.pipeline_root, "service_account": self.service_account,
                "enable_caching": self.enable_caching}


@dataclass
class Submitted:
    run_id: str
    run_name: str
    host: str
    state: str | None = None  #: the final state with ``wait``


def _run_name(pipe: PipelineDef, run_name: str | None) -> str:
    return run_name or f"ahps-{pipe.name} {datetime.now():%Y-%m-%d %H:%M:%S}"


def dry_run(pipe: PipelineDef, given: dict[str, Any], *, host: str, experiment: str, namespace: str | None,
            run_name: str | None, settings: TaskSettings, image: str | None, options: RunOptions,
            output: str | None = None) -> dict[str, Any]:
    """What :func:`submit` would send, without any network: the parameters checked, the pipeline compiled (to
    ``output`` when given); returns the request's fields (the package by path and task list) and ``parameters``,
    the full checked parameter set the run will use (defaults resolved, e.g. the family's targets)."""
    import yaml

    from components import make_components

    check_no_credentials(given, "the run's arguments in Kubeflow Pipelines")
    check_image(image)
    checked = validated(pipe, given, local=False)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_to(build(pipe, settings, image), output or Path(tmp) / f"ahps-{pipe.name}.yaml")
        spec = next(yaml.safe_load_all(package.read_text()))
    return {"host": host.rstrip("/"), "experiment": experiment, "namespace": namespace,
            "run_name": _run_name(pipe, run_name), "pipeline": spec["pipelineInfo"]["name"],
            "package": str(package) if output else None, "image": make_components(image).image,
            "tasks": sorted(spec["root"]["dag"]["tasks"]), "arguments": {k: checked[k] for k in given},
            **options.kwargs(), "parameters": checked}


def submit(pipe: PipelineDef, given: dict[str, Any], *, host: str, experiment: str, namespace: str | None,
           run_name: str | None, settings: TaskSettings, image: str | None, options: RunOptions | None = None,
           wait: float | None = None, poll_s: float = 15.0, on_submitted=None, on_state=None) -> Submitted:
    """Start a run of ``pipe`` on ``host`` in KFP experiment ``experiment`` (``options``: pipeline root, service
    account, caching); ``on_submitted(Submitted)`` once it is created. ``wait``: then wait up to that many seconds
    (0: no limit) for the run to end, calling ``on_state(state)`` at every state change; the final state is in
    the result."""
    options = options or RunOptions()
    with tempfile.TemporaryDirectory() as tmp:
        arguments, host, package = _prepared(pipe, given, host, settings, image, tmp)
        kfp_client = client(host, namespace)
        name = _run_name(pipe, run_name)
        with kfp_errors(host), quiet():
            result = kfp_client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=name, experiment_name=experiment, namespace=namespace,
                **options.kwargs(),
            )
    done = Submitted(result.run_id, name, host)
    if on_submitted is not None:
        on_submitted(done)
    if wait is not None:
        done.state = wait_for(kfp_client, host, result.run_id, timeout_s=wait, poll_s=poll_s, on_state=on_state)
    return done


def wait_for(kfp_client, host: str, run_id: str, *, timeout_s: float, poll_s: float, on_state=None) -> str:
    """Poll the run until it is in a :data:`FINAL_STATES` state (returned); ``timeout_s`` 0: no limit."""
    import time

    started, last = time.monotonic(), None
    while True:
        with kfp_errors(host), quiet():
            state = str(kfp_client.get_run(run_id).state or "PENDING").upper()
        if state != last and on_state is not None:
            on_state(state)
        last = state
        if state in FINAL_STATES:
            return state
        if timeout_s and time.monotonic() - started + poll_s > timeout_s:
            raise OrchestrationError(f"run {run_id} is still {state} after {timeout_s:g} s (--timeout); it goes on "
                                     f"running: {host}/#/runs/details/{run_id}")
        time.sleep(poll_s)


@dataclass
class Scheduled:
    recurring_run_id: str
    name: str
    cron: str
    host: str
    action: str  #: "created", "replaced", or "kept" (one of that name exists and replace was not asked)


def schedule(pipe: PipelineDef, given: dict[str, Any], *, host: str, experiment: str, namespace: str | None,
             cron: str, name: str, replace: bool, max_concurrency: int, catchup: bool, settings: TaskSettings,
             image: str | None) -> Scheduled:
    """Create the recurring run ``name`` of ``pipe`` (``cron``: KFP's 6-field form). Idempotent by name: an
    existing one is kept, or with ``replace`` deleted and created again with the new schedule and parameters."""
    with tempfile.TemporaryDirectory() as tmp:
        arguments, host, package = _prepared(pipe, given, host, settings, image, tmp)
        kfp_client = client(host, namespace)
        with kfp_errors(host), quiet():
            exp = kfp_client.create_experiment(name=experiment, namespace=namespace)  # gets it when it exists
            found = kfp_client.list_recurring_runs(experiment_id=exp.experiment_id, filter=_name_filter(name),
                                                   page_size=100).recurring_runs or []
        found = [r for r in found if r.display_name == name]
        if found and not replace:
            old = found[0]
            old_cron = getattr(getattr(old.trigger, "cron_schedule", None), "cron", None) if old.trigger else None
            return Scheduled(old.recurring_run_id, name, str(old_cron), host, "kept")
        with kfp_errors(host), quiet():
            for old in found:
                kfp_client.delete_recurring_run(old.recurring_run_id)
            pipeline_id, version_id = _upload(kfp_client, package, f"ahps-{pipe.name}", namespace)
            created = kfp_client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=name, cron_expression=cron, params=arguments,
                pipeline_id=pipeline_id, version_id=version_id, max_concurrency=max_concurrency,
                no_catchup=not catchup, enabled=True,
                description=f"ahps {pipe.name} pipeline, scheduled by ahps schedule",
            )
    return Scheduled(created.recurring_run_id, name, cron, host, "replaced" if found else "created")

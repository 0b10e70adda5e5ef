"""``ahps run | compile | submit | schedule``: the pipelines of :mod:`pipelines`, locally or on Kubeflow Pipelines.

* ``ahps run [PIPELINE]`` runs the pipeline on kfp's local runner (SubprocessRunner in this interpreter, no venv
  per task), tracks it in MLflow (default: a SQLite store under ``./mlruns``) and prints a summary;
* ``ahps compile [PIPELINE] -o FILE`` writes the IR YAML for Kubeflow Pipelines;
* ``ahps submit [PIPELINE] --host URL`` starts a run on a KFP host;
* ``ahps schedule [PIPELINE] --host URL --cron EXPR`` creates a recurring run (idempotent by name).

Parameters: ``--param NAME=VALUE`` (repeatable), VALUE parsed as JSON when it parses (``targets='["2_02","2_22"]'``,
``epochs=3``), a comma list is a list (``targets=2_02,2_22``). Unknown names are errors listing the accepted ones.
Errors are one line (``error: ...``), see :mod:`ahps_core.cli`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ahps_core.errors import ConfigError, OrchestrationError

PARAM_HELP = "Pipeline parameter NAME=VALUE (repeatable; VALUE is JSON or a comma list)."
DEFAULT_OUTPUT_DIR = "ahps_outputs"
DEFAULT_STORE_DIR = "mlruns"
DEFAULT_KFP_EXPERIMENT = "ahps"
KFP_TIMEOUT_S = 10.0


# --- shared -----------------------------------------------------------------------------------------------------


def _pipeline_and_params(name: str, param_args: tuple[str, ...]):
    from pipelines import coerce_params, get_pipeline, parse_param_args

    pipe = get_pipeline(name)
    given = coerce_params(pipe, parse_param_args(param_args))
    return pipe, given


def _compile_options(f):
    """Compile-time options shared by compile/submit/schedule."""
    f = click.option("--image", default=None, metavar="IMAGE",
                     help="Base image of the components (default: $AHPS_IMAGE or ghcr.io/ahps-project/ahps:0.1.0).")(f)
    f = click.option("--accelerator", default="nvidia.com/gpu", show_default=True, metavar="TYPE",
                     help="Accelerator resource the training steps request ('' for none).")(f)
    f = click.option("--gpus", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Accelerators per training step.")(f)
    f = click.option("--dataset-pvc", default="", metavar="NAME",
                     help="PVC holding the dataset cache (default: an emptyDir per pod).")(f)
    f = click.option("--cache-dir", default=None, metavar="PATH",
                     help="Mount path of the dataset cache in the pods (default /var/cache/ahps/data).")(f)
    f = click.option("--parallelism", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Concurrent training steps (0: unlimited).")(f)
    f = click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Retries of a training step (preemption), 60 s backoff doubling.")(f)
    return f


def _build(pipe, *, image, accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries):
    module = pipe.load()
    kwargs: dict[str, Any] = dict(base_image=image, accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc,
                                  parallelism=parallelism, retries=retries)
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    return module.build(**kwargs)


def _compile_to(pipeline_func, path: str | os.PathLike[str], pipeline_parameters: dict[str, Any] | None = None) -> Path:
    from kfp import compiler

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise ConfigError(f"output directory {path.parent} does not exist")
    try:
        compiler.Compiler().compile(pipeline_func, str(path), pipeline_parameters=pipeline_parameters or None)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return path


def _validated(pipe, given: dict[str, Any], *, local: bool, extra: dict[str, Any] | None = None,
               require_tracking: bool = True) -> dict[str, Any]:
    module = pipe.load()
    params = {**pipe.defaults(), **(extra or {}), **given}
    if not require_tracking:
        # compile: the tracking URI (and what the module lists in SUBMIT_TIME_PLACEHOLDERS, e.g. a data source
        # without a default) comes at submit time: validate with a placeholder, keep it empty in the YAML
        deferred = {"tracking_uri": "unset", **getattr(module, "SUBMIT_TIME_PLACEHOLDERS", {})}
        empty = {k: v for k, v in deferred.items() if not params.get(k)}
        checked = module.validate({**params, **empty}, local=local)
        checked.update({k: "" for k in empty})
        return checked
    return module.validate(params, local=local)


# --- ahps run ---------------------------------------------------------------------------------------------------


class _FilteredStdout(io.TextIOBase):
    """Tees kfp's local-runner output to a log file; echoes only ahps' own progress lines (``[ahps ...]``) and
    task failures to the terminal. Thread-safe (ParallelFor iterations run in threads)."""

    _keep = re.compile(r"\[ahps |ERROR|finished with status .*FAILURE")
    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, real, log_file) -> None:
        super().__init__()
        self.real, self.log = real, log_file
        self.buf = ""
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self.lock:
            self.log.write(text)
            self.buf += text
            while "\n" in self.buf:
                line, self.buf = self.buf.split("\n", 1)
                clean = self._ansi.sub("", line).strip()
                if self._keep.search(clean) and "Traceback" not in clean:
                    self.real.write(clean + "\n")
            return len(text)

    def flush(self) -> None:
        with self.lock:
            self.log.flush()
            self.real.flush()


def _default_run_group(pipe_name: str, params: dict[str, Any]) -> str:
    """``local-<pipeline>-<family>-<dataset>-<hash of the parameters>``: re-running the same command reuses its
    finished trainings; any parameter change starts a new group."""
    ignore = {"run_group", "checkpoint_root", "tracking_uri", "s3_secret", "mlflow_secret", "gpu_tolerations",
              "gpu_node_selector", "mlflow_experiment"}
    key = json.dumps({k: v for k, v in sorted(params.items()) if k not in ignore}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    parts = [p for p in (params.get("family"), params.get("dataset")) if p]
    return "-".join(["local", pipe_name, *parts, digest])


def _failure_message(log_path: Path) -> str:
    """The last error line of a failed task (e.g. ``TrackingError: ...``) from the run's log."""
    ansi = _FilteredStdout._ansi
    try:
        lines = [ansi.sub("", ln).strip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for line in reversed(lines):
        m = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception))(?::\s*(.*))?$", line)
        if m and not line.startswith(("RuntimeError: Pipeline", "RuntimeError: Task")):
            return f"{m.group(1)}: {m.group(2) or ''}".strip()
    return ""


@click.command("run")
@click.argument("pipeline", default="transfer")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@click.option("--tracking-uri", default=None, metavar="URI",
              help="MLflow tracking URI (default: sqlite:///<cwd>/mlruns/mlflow.db, artifacts in ./mlruns/artifacts).")
@click.option("--run-group", default=None, metavar="KEY",
              help="Run-group key (default: derived from the parameters, so re-running a command reuses its "
                   "finished trainings).")
@click.option("--output-dir", default=DEFAULT_OUTPUT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Pipeline root of the local runner (artifacts, checkpoints, logs).")
@click.option("--parallelism", type=click.IntRange(min=1), default=None,
              help="Concurrent training tasks (default: the number of CPU cores, at most 4).")
@click.option("--verbose", "-v", is_flag=True, help="Show the local runner's full task logs.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (after the run).")
@click.option("--list-params", is_flag=True, help="List the pipeline's parameters with defaults and exit.")
def run_cmd(pipeline: str, params: tuple[str, ...], tracking_uri: str | None, run_group: str | None,
            output_dir: str, parallelism: int | None, verbose: bool, as_json: bool, list_params: bool) -> None:
    """Run PIPELINE (default: transfer) on kfp's local runner and print its summary.

    The default run needs nothing but this install: scikit-learn's digits, five mlp DAG targets of different
    depths and topologies, 1 seed, MLflow in a SQLite store under ./mlruns.
    """
    from ahps_core.tracking import check_tracking_uri, local_store_uri, ui_command

    started = time.perf_counter()
    pipe, given = _pipeline_and_params(pipeline, params)
    if list_params:
        for name, spec in pipe.params.items():
            click.echo(f"{name} = {json.dumps(spec.default)}\n    {spec.help}")
        return
    module = pipe.load()
    out_dir = Path(output_dir).resolve()
    if tracking_uri is None:
        tracking_uri = given.get("tracking_uri") or local_store_uri(DEFAULT_STORE_DIR)
    given["tracking_uri"] = tracking_uri
    extra = module.local_defaults(out_dir)
    merged = {**pipe.defaults(), **extra, **given}
    if run_group:
        given["run_group"] = run_group
    elif not given.get("run_group"):
        given["run_group"] = _default_run_group(pipe.name, merged)
    args = _validated(pipe, given, local=True, extra=extra)  # full, normalized parameter set
    args["tracking_uri"] = check_tracking_uri(args["tracking_uri"])  # before anything is trained
    cores = os.cpu_count() or 1
    parallelism = parallelism or max(1, min(cores, 4))
    if parallelism > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // parallelism)))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MPLBACKEND", "Agg")

    from kfp import local

    func = module.build(parallelism=parallelism, retries=0, cache_dir="")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = out_dir / "logs"
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / f"{pipe.name}-{datetime.now():%Y%m%d-%H%M%S}.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out_dir), raise_on_error=True)
    click.echo(f"running pipeline {pipe.name!r} on kfp's local runner (run group {args['run_group']}, "
               f"{parallelism} parallel tasks); log: {log_path}")
    ignored: list[str] = []

    def on_warning(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "have no effect in the current local runner" in text or "non-Python base image" in text:
            ignored.append(text)
            return
        print(f"{category.__name__}: {text}", file=sys.stdout)

    with open(log_path, "w") as log_file, warnings.catch_warnings():
        warnings.showwarning = on_warning
        warnings.simplefilter("always")
        stream = sys.stdout if verbose else _FilteredStdout(sys.stdout, log_file)
        try:
            with contextlib.redirect_stdout(stream):
                task = func(**args)
        except RuntimeError as exc:
            log_file.flush()
            cause = _failure_message(log_path) if not verbose else ""
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0]
            raise OrchestrationError(f"{first}{' ' + cause if cause else ''} (full log: {log_path})") from None
        finally:
            stream.flush()
    if ignored:
        click.echo("note: the local runner ignores the cluster settings of the training steps (GPU request, node "
                   "placement, secrets, volumes); every task ran on CPU")
    summary_dir = Path(task.output.path)
    summary = json.loads((summary_dir / "summary.json").read_text())
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    ml = summary.get("mlflow", {})
    click.echo("")
    click.echo(module.format_summary(summary))
    click.echo("")
    reused = summary.get("reused_trainings", 0)
    click.echo(f"trainings: {summary.get('trainings', 0)} ({reused} reused from finished MLflow runs)")
    for name, path in summary.get("plots", {}).items():
        click.echo(f"plot {name}: {path}")
    click.echo(f"summary: {summary_dir / 'summary.json'} (+ summary.md)")
    click.echo(f"MLflow: {ml.get('tracking_uri')} experiment {ml.get('experiment')!r} (id {ml.get('experiment_id')}), "
               f"parent run {ml.get('parent_run_id')}, comparison run {ml.get('compare_run_id')}")
    click.echo(f"open the MLflow UI: {ui_command(ml.get('tracking_uri', tracking_uri))}")
    click.echo(f"done in {elapsed:.1f} s")


# --- ahps compile -----------------------------------------------------------------------------------------------


@click.command("compile")
@click.argument("pipeline", default="transfer")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Output YAML (default: ahps-PIPELINE.yaml).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Default of a pipeline parameter baked into the YAML (repeatable).")
@_compile_options
def compile_cmd(pipeline: str, output: str | None, params: tuple[str, ...], image, accelerator, gpus, dataset_pvc,
                cache_dir, parallelism, retries) -> None:
    """Compile PIPELINE to Kubeflow Pipelines IR YAML."""
    pipe, given = _pipeline_and_params(pipeline, params)
    checked = _validated(pipe, given, local=False, require_tracking=False)
    given = {k: checked[k] for k in given if k != "tracking_uri"} | (
        {"tracking_uri": given["tracking_uri"]} if "tracking_uri" in given else {})
    func = _build(pipe, image=image, accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc,
                  cache_dir=cache_dir, parallelism=parallelism, retries=retries)
    path = _compile_to(func, output or f"ahps-{pipe.name}.yaml", given)
    from components import make_components

    click.echo(f"wrote {path} (pipeline {pipe.name!r}, image {make_components(image).image}, "
               f"accelerator {accelerator or 'none'} x{gpus if accelerator else 0})")


# --- KFP client -------------------------------------------------------------------------------------------------


def _check_host(host: str) -> str:
    host = host.rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise ConfigError(f"KFP host {host!r} must be a URL like http://ml-pipeline.kubeflow.svc.cluster.local:8888")
    req = urllib.request.Request(f"{host}/apis/v2beta1/healthz", headers=_auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=KFP_TIMEOUT_S) as resp:  # noqa: S310 - user-given KFP host
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


def _client(host: str, namespace: str | None):
    """A ``kfp.Client`` for ``host``; with ``KF_PIPELINES_SA_TOKEN_PATH`` the token file is sent (and re-read on
    every request, so projected service-account tokens refresh). kfp's own console noise is kept off stdout."""
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    credentials = ServiceAccountTokenVolumeCredentials(os.environ["KF_PIPELINES_SA_TOKEN_PATH"]) \
        if os.environ.get("KF_PIPELINES_SA_TOKEN_PATH") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _kfp_errors(host):
            return kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials)


@contextlib.contextmanager
def _kfp_errors(host: str):
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


def _quiet():
    """kfp.Client prints links ('Experiment details: ...') itself: keep them out of our output."""
    return contextlib.redirect_stdout(io.StringIO())


def _kfp_options(f):
    f = click.option("--host", required=True, metavar="URL", envvar="KF_PIPELINES_ENDPOINT",
                     help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888 "
                          "($KF_PIPELINES_ENDPOINT).")(f)
    f = click.option("--experiment", default=DEFAULT_KFP_EXPERIMENT, show_default=True, metavar="NAME",
                     help="KFP experiment (created when missing).")(f)
    f = click.option("--namespace", default=None, metavar="NS", help="Kubernetes namespace (multi-user KFP).")(f)
    f = click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)(f)
    return f


def _prepare_remote(pipeline: str, params: tuple[str, ...], host: str, compile_kwargs: dict[str, Any], tmp: str):
    pipe, given = _pipeline_and_params(pipeline, params)
    checked = _validated(pipe, given, local=False)
    given = {k: checked[k] for k in given}  # normalized values (e.g. family aliases) are what the run gets
    host = _check_host(host)
    func = _build(pipe, **compile_kwargs)
    package = _compile_to(func, Path(tmp) / f"ahps-{pipe.name}.yaml")
    return pipe, given, host, package


@click.command("submit")
@click.argument("pipeline", default="transfer")
@_kfp_options
@click.option("--run-name", default=None, metavar="NAME", help="Display name of the run (default: PIPELINE + time).")
@_compile_options
def submit_cmd(pipeline: str, host: str, experiment: str, namespace: str | None, params: tuple[str, ...],
               run_name: str | None, image, accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries) -> None:
    """Submit a run of PIPELINE to a Kubeflow Pipelines host."""
    compile_kwargs = dict(image=image, accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc,
                          cache_dir=cache_dir, parallelism=parallelism, retries=retries)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, given, host, package = _prepare_remote(pipeline, params, host, compile_kwargs, tmp)
        client = _client(host, namespace)
        name = run_name or f"ahps-{pipe.name} {datetime.now():%Y-%m-%d %H:%M:%S}"
        with _kfp_errors(host), _quiet():
            result = client.create_run_from_pipeline_package(
                str(package), arguments=given, run_name=name, experiment_name=experiment, namespace=namespace,
            )
    click.echo(f"submitted run {result.run_id} ({name!r}) of pipeline {pipe.name!r} to {host}, experiment "
               f"{experiment!r}")
    click.echo(f"run details: {host}/#/runs/details/{result.run_id}")


# --- ahps schedule ----------------------------------------------------------------------------------------------

_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_FIELDS = (  # (name, low, high, names)
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


def kfp_cron(expr: str) -> str:
    """A cron expression for KFP (robfig/cron, 6 fields with seconds first) from a standard 5-field one (a
    ``0`` second is prepended), a 6-field one (kept) or a descriptor (``@daily``...). ConfigError naming the bad
    field otherwise."""
    text = " ".join((expr or "").split())
    if text.lower() in _CRON_DESCRIPTORS or text.lower().startswith("@every "):
        return text.lower()
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(f"cron expression {expr!r} has {len(fields)} field(s): expected 5 (minute hour "
                          "day-of-month month day-of-week, e.g. '0 3 * * 0') or 6 (seconds first)")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        _check_cron_field(expr, value, name, low, high, names)
    return " ".join(fields)


def _check_cron_field(expr: str, value: str, name: str, low: int, high: int, names: tuple[str, ...] | None) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"cron expression {expr!r}: {name} field {value!r} {why}")

    if value == "?" and name in ("day of month", "day of week"):
        return
    for part in value.split(","):
        rng, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            raise bad(f"has a bad step {step!r}")
        if rng == "*":
            continue
        ends = rng.split("-")
        if len(ends) > 2 or not all(ends):
            raise bad("is not a number, range (a-b), list (a,b), step (*/n) or *")
        nums = []
        for e in ends:
            if e.isdigit():
                n = int(e)
            elif names and e.upper() in names:
                n = names.index(e.upper()) + low
            else:
                accepted = f"{low}-{high}" + (f" or {names[0]}-{names[-1]}" if names else "")
                raise bad(f"is not valid: expected {accepted}")
            if not low <= n <= high:
                raise bad(f"is out of range {low}-{high}")
            nums.append(n)
        if len(nums) == 2 and nums[0] > nums[1]:
            raise bad("has a decreasing range")


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


@click.command("schedule")
@click.argument("pipeline", default="transfer")
@_kfp_options
@click.option("--cron", required=True, metavar="EXPR",
              help="Schedule: standard 5-field cron ('0 3 * * 0' = Sundays 03:00), 6 fields (seconds first) or @daily.")
@click.option("--name", default=None, metavar="NAME", help="Recurring-run name (default: ahps-PIPELINE).")
@click.option("--replace", is_flag=True, help="Replace an existing recurring run of this name (default: keep it).")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runs of this schedule allowed at once.")
@click.option("--catchup/--no-catchup", default=False, show_default=True,
              help="Backfill missed intervals after a pause.")
@_compile_options
def schedule_cmd(pipeline: str, host: str, experiment: str, namespace: str | None, params: tuple[str, ...], cron: str,
                 name: str | None, replace: bool, max_concurrency: int, catchup: bool, image, accelerator, gpus,
                 dataset_pvc, cache_dir, parallelism, retries) -> None:
    """Create a recurring run of PIPELINE on a Kubeflow Pipelines host (idempotent by --name)."""
    cron6 = kfp_cron(cron)
    compile_kwargs = dict(image=image, accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc,
                          cache_dir=cache_dir, parallelism=parallelism, retries=retries)
    with tempfile.TemporaryDirectory() as tmp:
        pipe, given, host, package = _prepare_remote(pipeline, params, host, compile_kwargs, tmp)
        job_name = name or f"ahps-{pipe.name}"
        client = _client(host, namespace)
        with _kfp_errors(host), _quiet():
            exp = client.create_experiment(name=experiment, namespace=namespace)  # gets it when it exists
            found = client.list_recurring_runs(experiment_id=exp.experiment_id, filter=_name_filter(job_name),
                                               page_size=100).recurring_runs or []
        found = [r for r in found if r.display_name == job_name]
        if found and not replace:
            old = found[0]
            old_cron = getattr(getattr(old.trigger, "cron_schedule", None), "cron", None) if old.trigger else None
            click.echo(f"recurring run {job_name!r} already exists in experiment {experiment!r} (id "
                       f"{old.recurring_run_id}, cron {old_cron!r}): not created again; pass --replace to replace it")
            return
        with _kfp_errors(host), _quiet():
            for old in found:
                client.delete_recurring_run(old.recurring_run_id)
            pipeline_id, version_id = _upload(client, package, f"ahps-{pipe.name}", namespace)
            created = client.create_recurring_run(
                experiment_id=exp.experiment_id, job_name=job_name, cron_expression=cron6, params=given,
                pipeline_id=pipeline_id, version_id=version_id, max_concurrency=max_concurrency,
                no_catchup=not catchup, enabled=True,
                description=f"ahps {pipe.name} pipeline, scheduled by ahps schedule",
            )
    verb = "replaced" if found else "created"
    click.echo(f"{verb} recurring run {job_name!r} (id {created.recurring_run_id}) of pipeline {pipe.name!r}: cron "
               f"{cron6!r} (KFP format, seconds first), experiment {experiment!r}, host {host}")


def _upload(client, package: Path, pipeline_name: str, namespace: str | None) -> tuple[str, str]:
    """Upload ``package`` as pipeline ``pipeline_name`` (created when missing) with a version named after its
    content hash (reused when that version exists); returns ``(pipeline_id, version_id)``."""
    import yaml

    # hash the content, not the text: the compiler's header comment lists struct defaults in random key order
    docs = list(yaml.safe_load_all(package.read_text()))
    digest = hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    version_name = f"{pipeline_name}-{digest}"
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        client.upload_pipeline(str(package), pipeline_name=pipeline_name, namespace=namespace,
                               description="ahps pipeline (uploaded by ahps schedule)")
        pipeline_id = client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            raise OrchestrationError(f"pipeline {pipeline_name!r} was uploaded but cannot be found")
    versions = client.list_pipeline_versions(pipeline_id, filter=_name_filter(version_name), page_size=100)
    for v in versions.pipeline_versions or []:
        if v.display_name == version_name:
            return pipeline_id, v.pipeline_version_id
    version = client.upload_pipeline_version(str(package), version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id

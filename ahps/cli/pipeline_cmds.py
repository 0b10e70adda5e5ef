"""``ahps run | compile | submit | schedule``: the pipelines of :mod:`pipelines`, locally or on Kubeflow Pipelines.

* ``ahps run [PIPELINE]`` runs the pipeline on kfp's local runner, tracks it in MLflow (default: a SQLite store
  under ``./mlruns``) and prints a summary;
* ``ahps compile [PIPELINE] -o FILE`` writes the IR YAML for Kubeflow Pipelines;
* ``ahps submit [PIPELINE] --host URL`` starts a run on a KFP host;
* ``ahps schedule [PIPELINE] --host URL --cron EXPR`` creates a recurring run (idempotent by name).

Parameters: ``--param NAME=VALUE`` (repeatable), VALUE parsed as JSON when it parses (``targets='["2_02","2_22"]'``,
``epochs=3``), a comma list is a list (``targets=2_02,2_22``). Unknown names are errors listing the accepted ones.
This module parses and prints; the work is done by :mod:`ahps.orchestration`.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

PARAM_HELP = "Pipeline parameter NAME=VALUE (repeatable; VALUE is JSON or a comma list)."
PARAMS_DIR_HELP = ("Read parameters from the files of DIR (file name = NAME, content = VALUE, e.g. a mounted "
                   "ConfigMap); --param wins.")


def _params_dir_option(f):
    return click.option("--params-dir", default=None, metavar="DIR", type=click.Path(file_okay=False),
                        help=PARAMS_DIR_HELP)(f)
DEFAULT_OUTPUT_DIR = "ahps_outputs"
DEFAULT_STORE_DIR = "mlruns"
DEFAULT_KFP_EXPERIMENT = "ahps"


def _compile_options(f):
    """Compile-time options shared by compile/submit/schedule (they make a :class:`TaskSettings`)."""
    f = click.option("--image", default=None, metavar="IMAGE",
                     help="Base image of the components (default: $AHPS_IMAGE or registry.example.com/ahps:0.1.0).")(f)
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
    f = click.option("--step-mode", type=click.Choice(["", "eager", "graphs", "compile"]), default="",
                     help="Training step on the GPU: graphs (CUDA graphs), compile (torch.compile), eager; "
                          "default: the image's (eager).")(f)
    f = click.option("--no-cache", is_flag=True,
                     help="Turn KFP's result cache off for every task (default: on for the tasks whose inputs can "
                          "repeat; find-base-lr and sample-cells take the job id and are never cached).")(f)
    return f


def _settings(accelerator: str, gpus: int, dataset_pvc: str, cache_dir: str | None, parallelism: int, retries: int,
              step_mode: str = "", no_cache: bool = False):
    from pipelines.cluster import DEFAULT_CACHE_DIR, TaskSettings

    return TaskSettings(accelerator=accelerator, gpus=gpus, dataset_pvc=dataset_pvc, parallelism=parallelism,
                        retries=retries, cache_dir=DEFAULT_CACHE_DIR if cache_dir is None else cache_dir,
                        step_mode=step_mode, caching=not no_cache)


# --- ahps run ---------------------------------------------------------------------------------------------------


@click.command("run")
@click.argument("pipeline", default="transfer")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)
@_params_dir_option
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
def run_cmd(pipeline: str, params: tuple[str, ...], params_dir: str | None, tracking_uri: str | None,
            run_group: str | None, output_dir: str, parallelism: int | None, verbose: bool, as_json: bool,
            list_params: bool) -> None:
    """Run PIPELINE (default: transfer) on kfp's local runner and print its summary.

    The default run needs nothing but this install: scikit-learn's digits, five mlp DAG targets of different
    depths and topologies, 1 seed, MLflow in a SQLite store under ./mlruns.
    """
    from ahps.orchestration.local import RunInterrupted, default_parallelism, local_params, run_locally
    from ahps.orchestration.params import pipeline_and_params
    from ahps_core.tracking import local_store_uri, ui_command

    started = time.perf_counter()
    pipe, given = pipeline_and_params(pipeline, params, params_dir)
    if list_params:
        for name, spec in pipe.params.items():
            click.echo(f"{name} = {json.dumps(spec.default)}\n    {spec.help}")
        return
    out_dir = Path(output_dir).resolve()
    uri = tracking_uri if tracking_uri is not None else (given.get("tracking_uri")
                                                          or local_store_uri(DEFAULT_STORE_DIR))
    parallelism = parallelism or default_parallelism()
    args = local_params(pipe, given, output_dir=out_dir, tracking_uri=uri, run_group=run_group,
                        parallelism=parallelism)
    # --json: stdout carries the JSON document only; every progress line goes to stderr
    def echo(line: str) -> None:
        click.echo(line, err=as_json)

    try:
        done = run_locally(pipe, args, output_dir=out_dir, parallelism=parallelism, verbose=verbose, echo=echo,
                           out=sys.stderr if as_json else sys.stdout)
    except RunInterrupted as exc:
        _report_interrupted(pipeline, args, exc.log_path)
    if done.ignored_cluster_settings:
        echo("note: the local runner ignores the cluster settings of the training steps (GPU request, node "
             "placement, secrets, volumes); every task ran on CPU")
    summary = done.summary
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        _report_journal(done.journal, uri, args["run_group"])
        return
    ml = summary.get("mlflow", {})
    click.echo("")
    click.echo(pipe.format_summary(summary))
    click.echo("")
    click.echo(f"trainings: {summary.get('trainings', 0)} ({summary.get('reused_trainings', 0)} reused from finished "
               "MLflow runs)")
    for name, path in summary.get("plots", {}).items():
        click.echo(f"plot {name}: {path}")
    click.echo(f"summary: {done.summary_dir / 'summary.json'} (+ summary.md)")
    click.echo(f"MLflow: {ml.get('tracking_uri')} experiment {ml.get('experiment')!r} (id {ml.get('experiment_id')}), "
               f"parent run {ml.get('parent_run_id')}, comparison run {ml.get('compare_run_id')}")
    click.echo(f"open the MLflow UI: {ui_command(ml.get('tracking_uri', uri))}")
    if ml.get("runs_url"):
        click.echo(f"then the runs table: {ml['runs_url']}")
    click.echo(f"done in {time.perf_counter() - started:.1f} s")
    hint = path_hint()
    if hint:
        click.echo(hint)
    _report_journal(done.journal, uri, args["run_group"])


#: Exit code of an interrupted ``ahps run`` (128 + SIGINT, the shell's convention).
INTERRUPTED_EXIT = 130


def _report_interrupted(pipeline: str, args: dict, log_path: Path) -> NoReturn:
    """Ctrl-C: what to run to resume and what that reuses; exit :data:`INTERRUPTED_EXIT`."""
    argv = [a for a in sys.argv[1:] if a != "--"]
    again = "ahps " + shlex.join(argv if argv[:1] == ["run"] else ["run", pipeline])
    ckpt = args.get("checkpoint_root") or ""
    click.echo(f"\ninterrupted: the run of pipeline {pipeline!r} (run group {args['run_group']!r}) stopped before "
               "it finished.", err=True)
    click.echo(f"to resume, run the same command again: {again}\n  it reuses every training that finished (its MLflow "
               f"run in run group {args['run_group']!r}) and resumes the interrupted ones from their last epoch "
               f"checkpoint{' under ' + ckpt if ckpt else ''}; output so far: {log_path}", err=True)
    raise click.exceptions.Exit(INTERRUPTED_EXIT)


def path_hint() -> str:
    """How to get ``ahps`` and ``mlflow`` on PATH when they are not (e.g. after ``make run``: they are in .venv)."""
    import shutil

    bindir = Path(sys.executable).parent
    if all(shutil.which(name) and Path(shutil.which(name) or "").parent == bindir for name in ("ahps", "mlflow")):
        return ""
    try:
        shown = bindir.relative_to(Path.cwd())
    except ValueError:
        shown = bindir
    return (f"ahps and mlflow are in {shown}/ but not on PATH: run `. {shown}/activate` (or call {shown}/ahps and "
            f"{shown}/mlflow)")


#: ``ahps run``: the pipeline finished, but MLflow did not get everything (it is journaled, see ``ahps sync``).
TRACKING_INCOMPLETE_EXIT = 4


def _report_journal(files: list[Path], uri: str, run_group: str) -> None:
    """Say what did not reach MLflow, and exit with :data:`TRACKING_INCOMPLETE_EXIT` if anything."""
    if not files:
        return
    from ahps_core.tracking import redact

    ops = sum(max(0, len(f.read_text().splitlines()) - 1) for f in files if f.is_file())
    click.echo(f"WARNING: MLflow was unavailable: {ops} tracking operation(s) of run group {run_group!r} were not "
               f"logged; they are kept in {files[0].parent}. Replay them with `ahps sync --tracking-uri "
               f"{redact(uri)} --journal {files[0].parent.parent}` (or run this command again)", err=True)
    raise click.exceptions.Exit(TRACKING_INCOMPLETE_EXIT)


# --- ahps compile -----------------------------------------------------------------------------------------------


@click.command("compile")
@click.argument("pipeline", default="transfer")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="Output YAML (default: ahps-PIPELINE.yaml).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Default of a pipeline parameter baked into the YAML (repeatable).")
@_params_dir_option
@_compile_options
def compile_cmd(pipeline: str, output: str | None, params: tuple[str, ...], params_dir: str | None, image,
                accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries, step_mode, no_cache) -> None:
    """Compile PIPELINE to Kubeflow Pipelines IR YAML."""
    from ahps.orchestration.kfp_client import build, check_image, compile_to
    from ahps.orchestration.params import check_no_credentials, pipeline_and_params, validated
    from components import make_components

    pipe, given = pipeline_and_params(pipeline, params, params_dir)
    check_no_credentials(given, "the compiled YAML")
    check_image(image)
    checked = validated(pipe, given, local=False, require_tracking=False)
    defaults = {k: checked[k] for k in given if k != "tracking_uri"} | (
        {"tracking_uri": given["tracking_uri"]} if "tracking_uri" in given else {})
    settings = _settings(accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries, step_mode, no_cache)
    path = compile_to(build(pipe, settings, image), output or f"ahps-{pipe.name}.yaml", defaults)
    click.echo(f"wrote {path} (pipeline {pipe.name!r}, image {make_components(image).image}, "
               f"accelerator {accelerator or 'none'} x{gpus if accelerator else 0})")


# --- ahps submit / schedule -------------------------------------------------------------------------------------


def _kfp_options(f):
    f = click.option("--host", required=True, metavar="URL", envvar="KF_PIPELINES_ENDPOINT",
                     help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow.svc.cluster.local:8888 "
                          "($KF_PIPELINES_ENDPOINT).")(f)
    f = click.option("--experiment", default=DEFAULT_KFP_EXPERIMENT, show_default=True, metavar="NAME",
                     help="KFP experiment (created when missing).")(f)
    f = click.option("--namespace", default=None, metavar="NS", help="Kubernetes namespace (multi-user KFP).")(f)
    f = click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help=PARAM_HELP)(f)
    return _params_dir_option(f)


@click.command("submit")
@click.argument("pipeline", default="transfer")
@_kfp_options
@click.option("--run-name", default=None, metavar="NAME", help="Display name of the run (default: PIPELINE + time).")
@click.option("--pipeline-root", default=None, metavar="URI",
              help="Artifact root of the run, e.g. s3://bucket/ahps (default: the KFP installation's).")
@click.option("--service-account", default=None, metavar="NAME",
              help="Kubernetes ServiceAccount of the run's pods (default: KFP's, e.g. pipeline-runner).")
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 0 only if it SUCCEEDED.")
@click.option("--timeout", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
              help="With --wait: give up waiting after this long (0: no limit); the run goes on.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.01), default=15.0, show_default=True, hidden=True)
@click.option("--dry-run", is_flag=True,
              help="Check the parameters, compile, and print what would be submitted (JSON); no network.")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False),
              help="With --dry-run: keep the compiled package here.")
@_compile_options
def submit_cmd(pipeline: str, host: str, experiment: str, namespace: str | None, params: tuple[str, ...],
               params_dir: str | None, run_name: str | None, pipeline_root: str | None, service_account: str | None,
               wait: bool, timeout: float, poll_seconds: float, dry_run: bool, output: str | None, image, accelerator,
               gpus, dataset_pvc, cache_dir, parallelism, retries, step_mode, no_cache) -> None:
    """Submit a run of PIPELINE to a Kubeflow Pipelines host.

    --no-cache compiles every task with caching off and passes enable_caching=False to kfp's client (which on
    its own changes only the pipeline's top-level tasks, not those inside the ParallelFor or a condition).
    """
    from ahps.orchestration.kfp_client import RunOptions, dry_run as plan, submit
    from ahps.orchestration.params import pipeline_and_params
    from ahps_core.errors import ConfigError

    if output and not dry_run:
        raise ConfigError("--output applies to --dry-run (a submitted package is sent, not kept); use ahps compile")
    pipe, given = pipeline_and_params(pipeline, params, params_dir)
    options = RunOptions(pipeline_root=pipeline_root, service_account=service_account,
                         enable_caching=False if no_cache else None)
    settings = _settings(accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries, step_mode, no_cache)
    if dry_run:
        would = plan(pipe, given, host=host, experiment=experiment, namespace=namespace, run_name=run_name,
                     settings=settings, image=image, options=options, output=output)
        click.echo(json.dumps({"dry_run": True, **would}, indent=1))
        return
    def submitted(run) -> None:
        click.echo(f"submitted run {run.run_id} ({run.run_name!r}) of pipeline {pipe.name!r} to {run.host}, "
                   f"experiment {experiment!r}")
        click.echo(f"run details: {run.host}/#/runs/details/{run.run_id}")

    run = submit(pipe, given, host=host, experiment=experiment, namespace=namespace, run_name=run_name,
                 settings=settings, image=image, options=options, wait=timeout if wait else None,
                 poll_s=poll_seconds, on_submitted=submitted,
                 on_state=lambda state: click.echo(f"run state: {state}", err=True))
    if run.state is not None:
        click.echo(f"run {run.run_id} ended {run.state}")
        if run.state != "SUCCEEDED":
            raise click.exceptions.Exit(1)


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
def schedule_cmd(pipeline: str, host: str, experiment: str, namespace: str | None, params: tuple[str, ...],
                 params_dir: str | None, cron: str, name: str | None, replace: bool, max_concurrency: int,
                 catchup: bool, image, accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries,
                 step_mode, no_cache) -> None:
    """Create a recurring run of PIPELINE on a Kubeflow Pipelines host (idempotent by --name)."""
    from ahps.orchestration.cron import kfp_cron
    from ahps.orchestration.kfp_client import schedule
    from ahps.orchestration.params import pipeline_and_params

    cron6 = kfp_cron(cron)
    pipe, given = pipeline_and_params(pipeline, params, params_dir)
    job = schedule(pipe, given, host=host, experiment=experiment, namespace=namespace, cron=cron6,
                   name=name or f"ahps-{pipe.name}", replace=replace, max_concurrency=max_concurrency, catchup=catchup,
                   settings=_settings(accelerator, gpus, dataset_pvc, cache_dir, parallelism, retries, step_mode,
                                      no_cache), image=image)
    if job.action == "kept":
        click.echo(f"recurring run {job.name!r} already exists in experiment {experiment!r} (id "
                   f"{job.recurring_run_id}, cron {job.cron!r}): not created again; pass --replace to replace it")
        return
    click.echo(f"{job.action} recurring run {job.name!r} (id {job.recurring_run_id}) of pipeline {pipe.name!r}: cron "
               f"{cron6!r} (KFP format, seconds first), experiment {experiment!r}, host {job.host}")

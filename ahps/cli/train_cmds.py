"""``ahps find-lr``, ``ahps validate`` and ``ahps train``: thin click commands over the library.

Bad input (unknown family or dataset, missing data, LR <= 0, empty grid, ...) raises
:class:`~ahps_core.errors.ConfigError` / :class:`~ahps_core.errors.DataError`, which the ``ahps`` entry point
prints as one line (``error: ...``) with a non-zero exit code. Human output is short tables; ``--json`` prints
one JSON document on stdout. Progress goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from ahps_core.checks import check_lr, check_writable_dir
from ahps_core.errors import ConfigError
from ahps_core.jsonio import json_safe

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit
    from ahps_core.presets import ProbeBudget

family_or_model_opt = click.option("--family", default=None, help="Model family: mlp, cnn or nb201 (not with --model).")
dataset_opt = click.option(
    "--dataset", required=True,
    help="digits, cifar10, cifar10-valid, cifar100, ImageNet16-120; or your own: npz:PATH (also npz:s3://...) "
         "or module:function returning x_train, y_train, x_test, y_test.",
)
model_opt = click.option("--model", "model_ref", metavar="MODULE:FACTORY", default=None,
                         help="Your own network: factory(name) (or factory()) returning a torch.nn.Module.")
proxy_opt = click.option("--proxy", default=None, metavar="NAME|MODULE:FACTORY",
                         help="With --model: the proxy the base LR is measured on (a name for the --model factory, "
                              "or another factory).")
resolution_opt = click.option("--resolution", type=int, default=None, metavar="N",
                              help="Refine around the optimum to 1/N decade (bracketing search).")
data_root_opt = click.option(
    "--data-root", default=None, help="Directory or s3://bucket/prefix holding the dataset files (not for digits).",
)
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
split_file_opt = click.option(
    "--split-file", default=None,
    help="NB201's split file of the dataset (cifar-split.txt, cifar100-test-split.txt, "
         "imagenet-16-120-test-split.txt), a path or s3://bucket/key; default: a seeded half (not NB201's).",
)


def grid_options(f):
    f = click.option("--grid", "grid_list", default=None,
                     help="Explicit comma-separated LRs (instead of --grid-min/--grid-max/--grid-points).")(f)
    f = click.option("--grid-points", type=int, default=None, help="Points of the log-spaced grid [default: 25].")(f)
    f = click.option("--grid-max", type=float, default=None, help="Largest LR of the grid [default: 10^0.5].")(f)
    f = click.option("--grid-min", type=float, default=None, help="Smallest LR of the grid [default: 10^-2.5].")(f)
    return f


def probe_options(f):
    f = click.option("--threads", type=int, default=None,
                     help="torch threads while probing (default: 1 for stacked MLP probes, else unchanged).")(f)
    f = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")(f)
    f = click.option("--refine/--no-refine", default=True, show_default=True,
                     help="Coarse-to-fine search (fewer runs, same answer within one grid step).")(f)
    f = click.option("--init", default="arch-aware", show_default=True, help="arch-aware or default.")(f)
    f = click.option("--width", type=int, default=None, help="Hidden width of mlp/cnn (default: per dataset).")(f)
    f = click.option("--max-steps", type=int, default=None, help="Truncate every probe epoch to this many steps.")(f)
    f = click.option("--batch-size", type=int, default=None, help="Probe batch size (default: per dataset).")(f)
    f = click.option("--epochs", type=int, default=None, help="Probe epochs (default: per dataset).")(f)
    f = click.option("--seeds", type=int, default=3, show_default=True, help="Number of seeds (0..N-1).")(f)
    return f


def _grid(grid_min, grid_max, grid_points, grid_list) -> list[float] | None:
    from ahps_core.lr_search import DEFAULT_GRID, check_grid, log_grid

    if grid_list is not None:
        if any(v is not None for v in (grid_min, grid_max, grid_points)):
            raise ConfigError("give either --grid or --grid-min/--grid-max/--grid-points, not both")
        try:
            values = [float(t) for t in grid_list.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--grid {grid_list!r}: expected comma-separated numbers like 0.01,0.1,1") from None
        return check_grid(values)
    if all(v is None for v in (grid_min, grid_max, grid_points)):
        return None
    lo, hi, n = DEFAULT_GRID
    return log_grid(lo if grid_min is None else grid_min, hi if grid_max is None else grid_max,
                    n if grid_points is None else grid_points)


def _seeds(n: int) -> list[int]:
    if n < 1:
        raise ConfigError(f"--seeds {n}: need at least 1 seed (the protocol uses 3)")
    return list(range(n))


def _budget(dataset: str, epochs: int | None, batch_size: int | None, max_steps: int | None,
            device: str, family: str | None = None) -> ProbeBudget:
    from ahps_core.presets import default_budget

    return default_budget(dataset, family, epochs=epochs, batch_size=batch_size, max_steps_per_epoch=max_steps,
                          device=device)


def _load(dataset: str, data_root: str | None, split_file: str | None = None) -> DatasetSplit:
    from ahps_core.data import load_dataset

    return load_dataset(dataset, data_root, split_file=split_file)


def _family(family: str | None, model_ref: str | None) -> str:
    """The family of a command: ``--family`` (checked), or ``graph`` with ``--model`` (not both)."""
    from ahps_core.lr_search import check_family

    if model_ref is not None:
        if family is not None:
            raise ConfigError("give either --family (a built-in family) or --model (your own networks), not both")
        return "graph"
    if family is None:
        raise ConfigError("missing --family: mlp, cnn or nb201 (or --model MODULE:FACTORY for your own networks)")
    return check_family(family)


def _user_models(model_ref: str | None, proxy: str | None, width: int | None = None):
    if model_ref is not None and width is not None:
        raise ConfigError(f"--width {width} does not apply to --model: the factory builds the network")
    if model_ref is None:
        if proxy is not None:
            raise ConfigError("--proxy applies to --model (a built-in family's proxy is fixed)")
        return None
    from ahps_core.user_models import UserModels

    return UserModels(model_ref, proxy=proxy)


def _fmt(v: Any, spec: str = ".4g") -> str:
    """A table cell: ``-`` for None, non-finite floats as ``inf``/``-inf``/``nan`` (as in the JSON output)."""
    if v is None:
        return "-"
    v = json_safe(v)
    return v if isinstance(v, str) else format(v, spec)


def _echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2))


# --- find-lr -------------------------------------------------------------------------------------------------


def _find_lr_start(grid: list[float] | None, seeds: list[int], refine: bool, what: str, dataset: str) -> None:
    """find-lr's first line (stderr, so ``--json`` keeps stdout to the JSON document)."""
    click.echo(f"[ahps find-lr] probing {len(grid) if grid else 'the default'} learning rates x {len(seeds)} "
               f"seed(s) on {what} ({dataset}){', then a refinement around the best' if refine else ''}; a "
               "progress bar on a terminal", err=True)


@click.command("find-lr")
@family_or_model_opt
@dataset_opt
@data_root_opt
@grid_options
@probe_options
@resolution_opt
@model_opt
@click.option("--arch", default=None, help="With --model: the name passed to the factory (default: factory()).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Save the curve as PNG.")
@json_opt
def find_lr_cmd(family, dataset, data_root, grid_min, grid_max, grid_points, grid_list, seeds, epochs, batch_size,
                max_steps, width, init, refine, device, threads, resolution, model_ref, arch, plot_path,
                as_json) -> None:
    """Find the base (maximal) learning rate on the family's one-hidden-layer proxy (or on --model)."""
    from ahps_core.lr_search import find_base_lr, find_max_lr

    family = _family(family, model_ref)
    if arch is not None and model_ref is None:
        raise ConfigError("--arch applies to --model (the base LR of a built-in family is found on its proxy)")
    if plot_path:  # before the search: its result must not be lost to an unwritable path
        check_writable_dir(os.path.dirname(plot_path) or ".", "--plot directory")
    grid = _grid(grid_min, grid_max, grid_points, grid_list)
    seed_list = _seeds(seeds)
    budget = _budget(dataset, epochs, batch_size, max_steps, device, family)
    models = _user_models(model_ref, None, width)
    data = _load(dataset, data_root)
    if models is not None:
        from ahps_core.user_models import check_fits

        label = f"{model_ref}" + (f" {arch!r}" if arch is not None else "")
        check_fits(models.build(arch, 0), data, label)
    _find_lr_start(grid, seed_list, refine, model_ref if models is not None else f"the {family} proxy", dataset)
    if models is not None:
        result = find_max_lr(models.seeded(arch), data, grid, seed_list, budget, refine=refine, threads=threads,
                             label=label, resolution=resolution)
    else:
        result = find_base_lr(family, dataset, data=data, grid=grid, seeds=seed_list, budget=budget, width=width,
                              init=init, refine=refine, threads=threads, resolution=resolution)
    payload = {"family": family, "dataset": dataset, "base_lr": result.best_lr, **result.to_dict()}
    if models is not None:
        payload["model"], payload["arch"] = model_ref, arch
    if plot_path:
        from ahps_core.plots import plot_lr_curve

        payload["plot"] = str(plot_lr_curve(result, plot_path, title=f"{family} proxy on {dataset}"))
    if as_json:
        _echo_json(payload)
        return
    click.echo(f"{'lr':>10} {'mean loss':>10}  per seed")
    for p in result.curve:
        mark = " <- base LR" if p.lr == result.best_lr else ""
        click.echo(f"{p.lr:>10.4g} {_fmt(p.mean_loss):>10}  {' '.join(_fmt(v) for v in p.losses)}{mark}")
    edge = " (at the grid's edge: widen the grid)" if result.at_edge else ""
    b = result.bracket or {}
    inside = f" (optimum in [{b['lower']:.4g}, {b['upper']:.4g}])" if b.get("lower") and b.get("upper") else ""
    what = model_ref if model_ref else family
    click.echo(f"base LR {result.best_lr:.4g}{inside} for {what} on {dataset}{edge}: {result.runs_used} runs of "
               f"{len(result.grid)}-point grid x {len(result.seeds)} seeds, {result.seconds:.1f}s")
    if plot_path:
        click.echo(f"plot: {payload['plot']}")


# --- validate ------------------------------------------------------------------------------------------------


@click.command("validate")
@family_or_model_opt
@dataset_opt
@data_root_opt
@click.option("--depths", default=None, help="Depth sweep: hidden layers of a plain chain, e.g. 1,2,4.")
@click.option("--archs", default=None, help="Comma-separated specs of target architectures (names with --model).")
@click.option("--sample", type=int, default=None,
              help="N topologies of the family, stratified over depth and number of paths [default: 32, two per "
                   "stratum, when no --depths/--archs].")
@click.option("--sampling", default="stratified", show_default=True, help="stratified or uniform (over DAG codes).")
@click.option("--seed", "sample_seed", type=int, default=0, show_default=True, help="Seed of --sample.")
@click.option("--rule", "rules", default="sum-cubed", show_default=True,
              help="Comma-separated transfer rules: sum-cubed, effective-depth.")
@click.option("--convention", "conventions", default=None,
              help="Comma-separated depth conventions: reference, paper, wu [default: each rule's own: reference "
                   "for sum-cubed, wu for effective-depth].")
@click.option("--kernel-size", type=int, default=None, help="cnn kernel side (default 3).")
@split_file_opt
@grid_options
@probe_options
@click.option("--resolution", type=int, default=24, show_default=True, metavar="N",
              help="Refine every measured maximal LR to 1/N decade (0: the grid's own resolution).")
@click.option("--n-boot", type=int, default=2000, show_default=True, help="Bootstrap resamples of the CIs.")
@model_opt
@proxy_opt
@click.option("--check-init", is_flag=True, help="Also a coordinate check of the proxy and every target.")
@click.option("--tracking-uri", default=None, help="Log the validation to this MLflow tracking URI.")
@click.option("--experiment", default="ahps", show_default=True, help="MLflow experiment (with --tracking-uri).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="ahps_outputs/validate",
              show_default=True, help="Results (measurements.jsonl, validate.json, plot); a re-run resumes.")
@click.option("--plot/--no-plot", default=True, show_default=True)
@json_opt
def validate_cmd(family, dataset, data_root, depths, archs, sample, sampling, sample_seed, rules, conventions,
                 kernel_size, split_file, grid_min, grid_max, grid_points, grid_list, seeds, epochs, batch_size,
                 max_steps, width, init, refine, device, threads, resolution, n_boot, model_ref, proxy, check_init,
                 tracking_uri, experiment, out_dir, plot, as_json) -> None:
    """Predicted (transferred) vs measured maximal LRs over a set of target architectures."""
    from ahps_core.validate import parse_depths, resolve_targets, validate
    from ahps_core.validate_stats import DEFAULT_SAMPLE

    family = _family(family, model_ref)
    models = _user_models(model_ref, proxy, width)
    if models is not None and (depths is not None or sample is not None or archs is None):
        raise ConfigError("with --model give the targets by name: --archs NAME,NAME,... (and --proxy NAME)")
    if depths is None and archs is None and sample is None:
        sample = DEFAULT_SAMPLE
    if tracking_uri is not None:
        from ahps_core.tracking import check_tracking_uri

        tracking_uri = check_tracking_uri(tracking_uri)  # fails now, before anything is trained
    targets = resolve_targets(
        family, depths=parse_depths(depths) if depths is not None else None,
        archs=archs.split(",") if archs is not None else None, sample=sample, seed=sample_seed, sampling=sampling,
    )
    sampling_info = {"how": sampling if sample is not None else ("depths" if depths is not None else "archs"),
                     "sample": sample, "seed": sample_seed if sample is not None else None, "targets": targets}
    if models is None:
        from ahps_core.specs import parse_arch

        for spec in targets:  # a malformed spec is an error now, not after minutes of LR searches
            parse_arch(spec, family, kernel_size=kernel_size)
    check_writable_dir(out_dir, "--out")
    grid = _grid(grid_min, grid_max, grid_points, grid_list)
    seed_list = _seeds(seeds)
    budget = _budget(dataset, epochs, batch_size, max_steps, device, family)
    data = _load(dataset, data_root, split_file)

    from ahps.orchestration.progress import TaskProgress

    # validate's first line says what it measures, then one line per measured architecture with the overall
    # count and ETA; on stderr, with --json too (stdout then holds the JSON document only)
    progress = TaskProgress(len(targets) + 1, sys.stderr, label="ahps validate", unit="architectures")
    started: list[bool] = []

    def log(line: str) -> None:
        if not started:
            started.append(True)
            click.echo(f"[ahps validate] {line}", err=True)
        else:
            progress.task_done(line)

    report = validate(
        family, dataset, targets, rules=[r.strip() for r in rules.split(",") if r.strip()],
        conventions=None if conventions is None else [c.strip() for c in conventions.split(",") if c.strip()],
        data=data, grid=grid,
        seeds=seed_list, budget=budget, width=width, kernel_size=kernel_size, init=init, refine=refine,
        resolution=resolution or None, n_boot=n_boot, models=models, sampling=sampling_info,
        threads=threads, out_dir=out_dir, plot=plot, log=log, progress=False,
    )
    if check_init:
        from ahps_core.coord_check import coord_checks

        report["check_init"] = coord_checks(report, data, models=models, width=width, init=init,
                                            kernel_size=kernel_size, out_dir=out_dir)
    if tracking_uri is not None:
        from ahps_core.steps.validation import log_validation

        report["mlflow"] = log_validation(report, tracking_uri, experiment, out_dir=out_dir)
    if as_json:
        _echo_json(report)
        return
    _print_validation(report, dataset)


def _ci_text(ci: Any) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"


def _print_validation(report: dict[str, Any], dataset: str) -> None:
    base = report["base"]
    click.echo(f"base LR {base['lr']:.4g} ({report['family']}:{base['arch']} on {dataset}); "
               f"{report['distinct_measured']} distinct measured values over {report['n_targets']} targets, "
               f"resolution {_fmt(report['resolution']['decades'], '.3g')} decade")
    click.echo(f"{'rule':<16} {'convention':<10} {'n':>3} {'r':>6} {'95% CI':>14} {'p':>8} {'CI seeds':>14} "
               f"{'slope':>6} {'95% CI':>14}")
    for c in report["comparisons"]:
        click.echo(f"{c['rule']:<16} {c['convention']:<10} {c['n']:>3} {_fmt(c['pearson_log'], '.3f'):>6} "
                   f"{_ci_text(c['pearson_ci']):>14} {_fmt(c['p_value'], '.2g'):>8} "
                   f"{_ci_text(c.get('pearson_ci_seeds')):>14} {_fmt(c['slope'], '.2f'):>6} "
                   f"{_ci_text(c['slope_ci']):>14}")
    click.echo(f"\n{'arch':<36} {'measured':>9} {'seed CI':>17} {'predicted':>9}   "
               f"({report['rule']}, {report['convention']})")
    for p in report["points"]:
        ci = p.get("measured_ci")
        ci_text = f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "-"
        click.echo(f"{p['arch']:<36} {p['measured_lr']:>9.4g} {ci_text:>17} {p['predicted_lr']:>9.4g}")
    for t in report["proxy_targets"]:
        click.echo(f"{t['arch']:<36} {t['measured_lr']:>9.4g} (the proxy: not fitted)")
    for s in report["skipped"]:
        click.echo(f"{s['arch']:<36} skipped: {s['reason']}")
    click.echo(f"\n{report['seconds']:.1f}s; results in {report['out_dir']}"
               + (f"; plot {report['plot']}" if report.get("plot") else ""))
    if report.get("check_init"):
        click.echo(f"coordinate check: {report['check_init']['plot']}")
    if report.get("mlflow"):
        click.echo(f"MLflow run {report['mlflow']['run_id']} ({report['mlflow']['status']})")


# --- train ---------------------------------------------------------------------------------------------------


@click.command("train")
@family_or_model_opt
@click.option("--arch", default=None,
              help="Architecture spec (DAG code, NB201 cell, FAMILY:SPEC); with --model the name for its factory.")
@model_opt
@proxy_opt
@dataset_opt
@data_root_opt
@split_file_opt
@click.option("--lr", type=float, default=None,
              help="Fixed learning rate: the fixed recipe, with PyTorch's default init unless --init says otherwise.")
@click.option("--base-lr", type=float, default=None,
              help="Base LR of the proxy: autoscale to this architecture, with the arch-aware init.")
@click.option("--rule", default="sum-cubed", show_default=True, help="Transfer rule of --base-lr.")
@click.option("--convention", default=None,
              help="Depth convention of --base-lr [default: reference for sum-cubed, wu for effective-depth].")
@click.option("--recipe", default="nb201", show_default=True,
              help="Training preset: nb201, probe or reference (options below override it).")
@click.option("--epochs", type=int, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--momentum", type=float, default=None)
@click.option("--weight-decay", type=float, default=None)
@click.option("--warmup-epochs", type=float, default=None)
@click.option("--schedule", default=None, help="cosine or constant.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--width", type=int, default=None, help="Hidden width (mlp/cnn).")
@click.option("--C", "C", type=int, default=16, show_default=True, help="nb201 channels of the first stage.")
@click.option("--N", "N", type=int, default=5, show_default=True, help="nb201 cells per stage.")
@click.option("--kernel-size", type=int, default=None, help="cnn kernel side.")
@click.option("--init", default=None,
              help="arch-aware or default [default: default with --lr (the fixed recipe), arch-aware with --base-lr].")
@click.option("--degree", default="source", show_default=True,
              help="In-degree rule of arch-aware init: source, destination or mean-field.")
@click.option("--indegree", default=None, help="In-degrees the arch-aware init counts: all or live [default: live].")
@click.option("--cell", default=None, help="nb201 cells: full (NB201's exact network) or pruned [default: pruned].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--amp", default=None,
              help="auto (bf16 on CUDA), bf16 or off [default: the recipe's: off (fp32) for nb201, else auto].")
@click.option("--max-steps", type=int, default=None, help="Truncate every epoch to this many steps.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="Checkpoint every epoch here; a re-run with the same options resumes.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@json_opt
def train_cmd(family, arch, model_ref, proxy, dataset, data_root, split_file, lr, base_lr, rule, convention, recipe,
              epochs, batch_size, momentum, weight_decay, warmup_epochs, schedule, seed, width, C, N, kernel_size,
              init, degree, indegree, cell, device, amp, max_steps, checkpoint_dir, progress, as_json) -> None:
    """Train one architecture (or your own --model) with a preset, at a fixed LR (the fixed recipe: PyTorch's
    default init) or an autoscaled one (the arch-aware init)."""
    from ahps_core.presets import recipe_config
    from ahps_core.protocol import fixed_arm
    from ahps_core.specs import parse_arch
    from ahps_core.train import train

    family = _family(family, model_ref)
    models = _user_models(model_ref, proxy, width)
    if arch is None and models is None:
        raise ConfigError("missing --arch: the architecture spec to train (a DAG code, an NB201 cell, FAMILY:SPEC)")
    if (lr is None) == (base_lr is None):
        raise ConfigError("give exactly one of --lr (fixed) or --base-lr (autoscaled to the architecture)")
    if init is None and models is None:
        init = fixed_arm(family).init if lr is not None else "arch-aware"
    transfer = None
    if base_lr is not None:
        from ahps_core.scaling import Transferer

        check_lr(base_lr, "base learning rate")
        if models is not None:
            graph, base = models.graph(arch), models.proxy_graph() if proxy is not None else None
        else:
            graph, base = parse_arch(arch, family, kernel_size=kernel_size), None
        transfer = Transferer(family, base_lr, rule=rule, convention=convention, kernel_size=kernel_size,
                              base=base, cells_per_stage=N)(graph)
        lr = transfer.lr
    check_lr(lr)
    model = None
    if models is not None:
        model = models.build(arch, seed)
        init = "default"  # the factory's own initialization (recorded so)
        arch = arch if arch is not None else model_ref
    config = recipe_config(
        recipe, family=family, arch=arch, dataset=dataset, data_root=data_root, lr=lr, epochs=epochs,
        batch_size=batch_size, momentum=momentum, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        schedule=schedule, seed=seed, width=width, C=C, N=N, kernel_size=kernel_size, init=init, degree=degree,
        indegree=indegree, cell=cell, device=device,
        amp=amp, max_steps_per_epoch=max_steps, checkpoint_dir=checkpoint_dir,
    )
    if config.momentum == 0 and config.nesterov:
        config = config.replace(nesterov=False)
    config.validated()
    if checkpoint_dir:
        check_writable_dir(checkpoint_dir, "--checkpoint-dir")
    data = _load(dataset, data_root, split_file)
    if model is not None:
        from ahps_core.user_models import check_fits

        check_fits(model, data, f"{model_ref} {arch!r}")
    if not as_json:
        src = f" (autoscaled from base LR {base_lr:g}, {rule}/{transfer.convention})" if transfer else " (fixed)"
        click.echo(f"training {family}:{arch} on {dataset}, lr {lr:.4g}{src}, init {config.init}, recipe {recipe}, "
                   f"{config.epochs} epochs")
        click.echo(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'eval_loss':>9} {'eval_acc':>8} "
                   f"{'lr':>9} {'s':>6}")

    def show(rec: dict) -> None:
        click.echo(f"{rec['epoch']:>5} {_fmt(rec['train_loss']):>10} {_fmt(rec['train_acc'], '.4f'):>9} "
                   f"{_fmt(rec['eval_loss']):>9} {_fmt(rec['eval_acc'], '.4f'):>8} {rec['lr']:>9.3g} "
                   f"{rec['seconds']:>6.1f}")

    result = train(config, model=model, data=data, progress=progress, callback=None if as_json else show)
    payload = result.to_dict()
    if transfer is not None:
        payload["transfer"] = transfer.to_dict()
    if as_json:
        _echo_json(payload)
        return
    if result.resumed_from:
        click.echo(f"(resumed after epoch {result.resumed_from} from {checkpoint_dir})")
    if result.diverged_at is not None:
        click.echo(f"status diverged at epoch {result.diverged_at['epoch']}, step {result.diverged_at['step']} "
                   "(non-finite loss)")
    else:
        f = result.final
        click.echo(f"status {result.status}: train loss {_fmt(f.get('train_loss'))}, eval acc "
                   f"{_fmt(f.get('eval_acc'), '.4f')}, {result.images_per_s:.0f} img/s, {result.num_params} params")

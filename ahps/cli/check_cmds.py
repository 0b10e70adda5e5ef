"""``ahps check-init``: the coordinate check (:mod:`ahps_core.coord_check`) as a command: parses and prints."""

from __future__ import annotations

import json

import click

from ahps_core.errors import ConfigError


@click.command("check-init")
@click.option("--family", default=None, help="Model family: mlp, cnn or nb201 (not with --model).")
@click.option("--arch", "archs", required=True,
              help="Comma-separated architecture specs (with --model: names for its factory).")
@click.option("--dataset", required=True, help="A built-in dataset, npz:PATH or module:function.")
@click.option("--data-root", default=None, help="Directory or s3://bucket/prefix of the dataset files.")
@click.option("--init", default="arch-aware", show_default=True, help="arch-aware or default.")
@click.option("--degree", "degrees", default="source,mean-field", show_default=True,
              help="Comma-separated in-degree rules of arch-aware init: source, destination, mean-field.")
@click.option("--lr", type=float, default=0.1, show_default=True, help="LR of the few SGD steps.")
@click.option("--steps", type=int, default=5, show_default=True, help="SGD steps after initialization.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds averaged (0..N-1).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--width", type=int, default=None, help="Hidden width of mlp/cnn (default: per dataset).")
@click.option("--kernel-size", type=int, default=None, help="cnn kernel side (default 3).")
@click.option("--model", "model_ref", metavar="MODULE:FACTORY", default=None,
              help="Your own networks: factory(name) returning a torch.nn.Module (checked with its own init).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default="ahps_outputs/coord_check.png",
              show_default=True, help="The plot (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def check_init_cmd(family, archs, dataset, data_root, init, degrees, lr, steps, seeds, batch_size, width, kernel_size,
                   model_ref, out_path, as_json) -> None:
    """Each vertex's activation second moment at init and after a few steps (a coordinate check, like mup's)."""
    from ahps_core.checks import check_choices
    from ahps_core.coord_check import coord_check, plot_coord_check
    from ahps_core.data import load_dataset
    from ahps_core.jsonio import json_safe
    from ahps_core.presets import default_width
    from ahps_core.scaling import DEGREE_RULES

    if (family is None) == (model_ref is None):
        raise ConfigError("give exactly one of --family (mlp, cnn, nb201) or --model MODULE:FACTORY")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1 seed")
    names = [a.strip() for a in archs.split(",") if a.strip()]
    if not names:
        raise ConfigError("--arch: no architecture given")
    rules = check_choices("degree rule", [d.strip() for d in degrees.split(",") if d.strip()], DEGREE_RULES)
    data = load_dataset(dataset, data_root)
    variants = []
    if model_ref is not None:
        from ahps_core.user_models import UserModels, check_fits

        models = UserModels(model_ref)
        for name in names:
            check_fits(models.build(name, 0), data, f"{model_ref} {name!r}")
            variants.append((name, "model's own init", models.seeded(name)))
    else:
        from ahps_core.lr_search import arch_factory, check_family
        from ahps_core.specs import parse_arch

        check_family(family)
        width = width if width is not None else default_width(family, dataset)
        for name in names:
            graph = parse_arch(name, family, kernel_size=kernel_size)
            for d in rules if init == "arch-aware" else rules[:1]:
                label = f"{init}/{d}" if init == "arch-aware" else init
                variants.append((name, label, arch_factory(graph, data, width=width, init=init, degree=d,
                                                           kernel_size=kernel_size)))
    checks = []
    for name, label, make in variants:
        c = coord_check(make, data, lr=lr, steps=steps, seeds=list(range(seeds)), batch_size=batch_size, label=label)
        c["arch"] = name
        checks.append(c)
    plot = str(plot_coord_check(checks, out_path, title=f"activation second moments on {dataset}"))
    if as_json:
        click.echo(json.dumps(json_safe({"dataset": dataset, "checks": checks, "plot": plot}), indent=2))
        return
    click.echo(f"{'arch':<24} {'init':<22} {'spread':>8} {'output':>8}  E[h^2] / stem's at init, per vertex")
    for c in checks:
        ratios = " ".join(f"{v:.3g}" for v in c["init_ratio"][:12]) + (" ..." if len(c["init_ratio"]) > 12 else "")
        click.echo(f"{c['arch']:<24} {c['label']:<22} {c['spread']:>8.3g} {c['output_ratio']:>8.3g}  {ratios}")
    click.echo(f"plot: {plot}")

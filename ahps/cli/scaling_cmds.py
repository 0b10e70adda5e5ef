"""``ahps paths`` and ``ahps lr``: exact path statistics and LR transfer. Imports no torch (unless ``--model``).

``ARCH`` may be ``-``: one architecture per line on stdin, one JSON object per line out, same order. A line
that cannot be computed becomes ``{"arch": ..., "error": ...}``, the batch goes on, and the exit code is 3
once every line is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator

import click

from ahps_core.checks import check_lr
from ahps_core.errors import AhpsError, ConfigError
from ahps_core.graph import FAMILIES, ArchGraph
from ahps_core.specs import detect_family, parse_arch
from ahps_core.scaling import CONVENTIONS, RULES, Transferer, depth_stats

BATCH_ERROR_EXIT = 3

family_opt = click.option(
    "--family", type=click.Choice(FAMILIES), default=None,
    help="Family of digit codes (mlp, cnn, nb201). NB201 arch strings, graph files and FAMILY:SPEC need none.",
)
convention_opt = click.option(
    "--convention", type=click.Choice(CONVENTIONS), default="reference", show_default=True,
    help="Path-depth convention: 'reference' reproduces the reference code, 'paper' the paper's text, 'wu' counts "
         "every weight layer of the whole network (Wu et al.).",
)
rule_convention_opt = click.option(
    "--convention", type=click.Choice(CONVENTIONS), default=None,
    help="Path-depth convention: 'reference' reproduces the reference code, 'paper' the paper's text, 'wu' counts "
         "every weight layer of the whole network (Wu et al.) [default: reference for sum-cubed, wu for "
         "effective-depth].",
)
json_opt = click.option("--json", "as_json", is_flag=True, help="One JSON object per architecture.")
kernel_opt = click.option(
    "--kernel-size", type=click.IntRange(min=1), default=None,
    help="Kernel side length of cnn DAG codes (default 3).",
)


def _check_kernel_family(family: str | None, kernel_size: int | None) -> None:
    if kernel_size is not None and family not in (None, "cnn"):
        raise ConfigError(
            f"--kernel-size applies to cnn DAG codes only (family {family!r}): nb201 and graph specs carry "
            "their own kernels"
        )


def _lines(arch: str) -> Iterator[str]:
    if arch != "-":
        yield arch
        return
    for raw in sys.stdin:
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line


def _run(
    specs: Iterable[str], compute: Callable[[str], dict], as_json: bool, columns: list[tuple[str, str]],
    batch: bool,
) -> int:
    """Compute each spec; write results as they come (JSON lines) or as one table at the end."""
    failed = 0
    rows: list[dict] = []
    out = sys.stdout
    for spec in specs:
        try:
            rec = compute(spec)
        except AhpsError as exc:
            if not batch:
                raise
            failed += 1
            rec = {"arch": spec, "error": str(exc)}
        if as_json:
            out.write(json.dumps(rec) + "\n")
        else:
            rows.append(rec)
    if not as_json:
        _print_table(rows, columns, single=not batch)
    out.flush()
    if failed:
        click.echo(f"{failed} architecture(s) could not be computed (see their 'error')", err=True)
        return BATCH_ERROR_EXIT
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int) and abs(v) >= 10**12:
        return f"{v:.4e}"
    return str(v)


def _print_table(rows: list[dict], columns: list[tuple[str, str]], *, single: bool) -> None:
    if single and len(rows) == 1 and "error" not in rows[0]:
        rec = rows[0]
        width = max(len(label) for _, label in columns)
        for key, label in columns:
            if key in rec:
                click.echo(f"{label:<{width}}  {_fmt(rec[key])}")
        return
    header = [label for _, label in columns]
    ok = [[_fmt(rec.get(key, "")) for key, _ in columns] for rec in rows if "error" not in rec]
    widths = [max([len(h)] + [len(r[i]) for r in ok]) for i, h in enumerate(header)]
    arch_w = max([widths[0]] + [len(str(rec["arch"])) for rec in rows])
    widths[0] = arch_w
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    body = iter(ok)
    for rec in rows:
        if "error" in rec:
            click.echo(f"{str(rec['arch']).ljust(arch_w)}  error: {rec['error']}")
        else:
            click.echo("  ".join(c.ljust(w) for c, w in zip(next(body), widths, strict=True)).rstrip())


def _load_model_graph(ref: str) -> ArchGraph:
    from ahps_core.models.fx import extract_graph, load_model_factory  # imports torch: only with --model

    return extract_graph(load_model_factory(ref), name=ref)


@click.command("paths")
@click.argument("arch", required=False)
@family_opt
@convention_opt
@kernel_opt
@click.option("--histogram", is_flag=True, help="Also the exact number of paths per depth (O(E*depth)).")
@click.option("--model", "model_ref", metavar="MODULE:FACTORY", help="Extract the graph of a PyTorch model.")
@json_opt
def paths_cmd(arch, family, convention, kernel_size, histogram, model_ref, as_json) -> None:
    """Exact path statistics of ARCH (a DAG code, NB201 cell, graph file, or '-' for stdin)."""
    _check_kernel_family(family, kernel_size)
    specs = _specs(arch, model_ref)

    def compute(spec: str) -> dict:
        graph = _load_model_graph(model_ref) if model_ref else parse_arch(spec, family, kernel_size=kernel_size)
        stats = depth_stats(graph, convention, histogram=histogram)
        return {"arch": spec, "family": graph.family, "convention": convention, **stats.to_dict()}

    columns = [
        ("arch", "arch"), ("family", "family"), ("num_paths", "paths"), ("sum_l3", "sum L^3"),
        ("min_depth", "min depth"), ("max_depth", "max depth"),
    ]
    if histogram and not as_json:
        columns.append(("histogram", "histogram"))
    code = _run(specs, compute, as_json, columns, batch=arch == "-")
    if code:
        raise click.exceptions.Exit(code)


@click.command("lr")
@click.argument("arch", required=False)
@click.option("--base-lr", type=float, required=True, help="The base LR found on the family's proxy.")
@family_opt
@kernel_opt
@click.option("--base", "base_spec", default=None, help="Base architecture (default: the family's proxy).")
@click.option("--base-kernel-size", type=click.IntRange(min=1), default=None,
              help="Kernel side length of the base (default 3 for cnn and nb201).")
@click.option("--rule", type=click.Choice(RULES), default="sum-cubed", show_default=True,
              help="sum-cubed (Chen et al.) or effective-depth (Wu et al.).")
@rule_convention_opt
@click.option("--model", "model_ref", metavar="MODULE:FACTORY", help="Extract the graph of a PyTorch model.")
@json_opt
def lr_cmd(arch, base_lr, family, kernel_size, base_spec, base_kernel_size, rule, convention, model_ref,
           as_json) -> None:
    """Transfer --base-lr to ARCH (a DAG code, NB201 cell, graph file, or '-' for stdin)."""
    _check_kernel_family(family, kernel_size)
    specs = _specs(arch, model_ref)
    base = None
    base_family = None
    if base_spec is not None:
        base_family, body = detect_family(base_spec, family)
        base = parse_arch(body, base_family, kernel_size=base_kernel_size)
    transferers: dict[str, Transferer] = {}

    def transferer(fam: str) -> Transferer:
        if base_family is not None and fam != base_family:
            raise ConfigError(f"target family {fam!r} differs from the base's family {base_family!r}")
        if fam not in transferers:
            transferers[fam] = Transferer(
                fam, base_lr, rule=rule, convention=convention, base=base,
                kernel_size=kernel_size, base_kernel_size=base_kernel_size,
            )
        return transferers[fam]

    # bad options are one error up front, not one per line of a batch
    check_lr(base_lr, "base learning rate")
    if base_family is not None:
        transferer(base_family)

    def compute(spec: str) -> dict:
        graph = _load_model_graph(model_ref) if model_ref else parse_arch(spec, family, kernel_size=kernel_size)
        rec = transferer(graph.family)(graph).to_dict()
        rec["arch"] = spec
        return rec

    columns = [
        ("arch", "arch"), ("family", "family"), ("num_paths", "paths"), ("sum_l3", "sum L^3"),
        ("effective_depth", "eff. depth") if rule == "effective-depth" else ("max_depth", "max depth"),
        ("ratio", "ratio"), ("lr", "lr"),
    ]
    code = _run(specs, compute, as_json, columns, batch=arch == "-")
    if code:
        raise click.exceptions.Exit(code)


def _specs(arch: str | None, model_ref: str | None) -> Iterable[str]:
    if model_ref and arch:
        raise ConfigError("give either ARCH or --model, not both")
    if model_ref:
        return [model_ref]
    if not arch:
        raise ConfigError("missing ARCH: a DAG code, an NB201 cell, a graph file, '-' for stdin, or --model")
    return _lines(arch)

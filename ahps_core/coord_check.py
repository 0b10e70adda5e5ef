"""A coordinate check, like mup's: does the initialization keep the signal flowing?

For a network and an initialization (``init`` and ``degree`` rule, :mod:`ahps_core.init`), :func:`coord_check`
measures the second moment ``E[h^2]`` (mean over a fixed batch of training inputs and over units) of every
vertex's activation at initialization and again after a few plain-SGD steps, averaged over seeds. Vertices are
the DAG vertices of our mlp/cnn networks (vertex 0 is the stem's output; every vertex holds the sum of its
terms, :class:`ahps_core.models.dag.DagNet`), and for any other network (nb201's macro network, a user's
``--model``) the output of every module that computes something (leaf modules, and NB201 cells), in forward
order. Values are reported relative to the first vertex's (the stem's) at initialization: a flat init keeps
them near 1 at step 0, and the growth after the steps shows the update size at the chosen LR.

The measured finding this makes visible (docs/conventions.md §1.2): in the post-activation-sum layout neither of
the paper's degree rules keeps the forward second moment flat (``source``/``destination``: correlated ReLU terms
add more than their variances), ``mean-field`` does on skip-free DAGs, and no weight-variance rule can on DAGs
whose vertices sum skips (a skip passes its source unchanged).

:func:`plot_coord_check` (in :mod:`ahps_core.plots` style) draws one panel per network.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.checks import check_int, check_lr
from ahps_core.lr_search import check_seeds

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit

DEFAULT_STEPS = 5
PROBE_BATCH = 256


def _vertex_values(model: nn.Module, x: torch.Tensor) -> tuple[list[str], list[torch.Tensor]]:
    """``(labels, values)`` of the model's vertices on input ``x`` (module docstring)."""
    from ahps_core.models.dag import DagNet

    if isinstance(model, DagNet):
        values = model.forward_vertices(x)
        order = [v for v in model.graph.topological_order if values[v] is not None]
        return [f"v{v}" for v in order], [values[v] for v in order]
    from ahps_core.models.nb201 import InferCell

    labels: list[str] = []
    outs: list[torch.Tensor] = []

    def hook(name: str) -> Callable[..., None]:
        def record(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                labels.append(name)
                outs.append(out.detach())
        return record

    handles = []
    for name, m in model.named_modules():
        cell = isinstance(m, InferCell)
        if (name and not any(True for _ in m.children())) or cell:
            if not cell and any(isinstance(p, InferCell) for p in _parents(model, name)):
                continue  # inside a cell: the cell's output is the vertex
            handles.append(m.register_forward_hook(hook(name)))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return labels, outs


def _parents(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".")
    return [model.get_submodule(".".join(parts[:i])) for i in range(1, len(parts))]


def _moments(model: nn.Module, x: torch.Tensor) -> tuple[list[str], list[float]]:
    with torch.no_grad():
        labels, values = _vertex_values(model, x)
    return labels, [float(v.double().pow(2).mean()) for v in values]


def coord_check(
    factory: Callable[[int], nn.Module], data: DatasetSplit, *, lr: float = 0.1, steps: int = DEFAULT_STEPS,
    seeds: Sequence[int] = (0, 1, 2), batch_size: int = 32, label: str = "",
) -> dict[str, Any]:
    """Per-vertex activation second moments of ``factory(seed)`` at init and after ``steps`` SGD steps at ``lr``
    (batches of ``batch_size`` from ``data``'s training part, each seed its own order), averaged over ``seeds``.

    Returns ``{label, vertices, init, after, init_ratio, after_ratio, spread, output_ratio, lr, steps, seeds}``:
    ``init``/``after`` the mean second moments, ``*_ratio`` relative to the first vertex at init, ``spread`` the
    largest over the smallest init ratio (1 = flat), ``output_ratio`` the last vertex's init ratio.
    """
    check_lr(lr)
    check_int("steps", steps, 0)
    check_int("batch size", batch_size, 1)
    seeds = check_seeds(seeds)
    probe_loader = data.loader("train", batch_size=min(PROBE_BATCH, len(data.train)), training=False)
    x_probe, _ = next(probe_loader.epoch(0))
    inits: list[list[float]] = []
    afters: list[list[float]] = []
    labels: list[str] = []
    for seed in seeds:
        model = factory(seed).train()
        labels, m0 = _moments(model, x_probe)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loader = data.loader("train", batch_size=min(batch_size, len(data.train)), seed=seed, training=True)
        batches = itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())
        for xb, yb in itertools.islice(batches, steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        _, m1 = _moments(model, x_probe)
        inits.append(m0)
        afters.append(m1)
    init = [sum(c) / len(c) for c in zip(*inits, strict=True)]
    after = [sum(c) / len(c) for c in zip(*afters, strict=True)]
    ref = init[0] if init and init[0] > 0 else 1.0
    init_ratio = [v / ref for v in init]
    after_ratio = [v / ref if math.isfinite(v) else math.inf for v in after]
    positive = [v for v in init_ratio if v > 0]
    return {
        "label": label, "vertices": labels, "init": init, "after": after, "init_ratio": init_ratio,
        "after_ratio": after_ratio, "spread": max(positive) / min(positive) if positive else None,
        "output_ratio": init_ratio[-1] if init_ratio else None, "lr": lr, "steps": steps, "seeds": list(seeds),
    }


def plot_coord_check(checks: Sequence[dict[str, Any]], path: Any, *, title: str = "") -> Any:
    """One panel per network: each check's per-vertex second moment (relative to the stem at init) at init
    (solid) and after the steps (dashed), on a log axis."""
    from ahps_core.plots import figure, save

    groups: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        groups.setdefault(c.get("arch") or c["label"], []).append(c)
    n = max(len(groups), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = figure(4.2 * cols, 3.4 * rows, rows=rows, cols=cols)
    panels = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, (arch, group) in zip(panels, groups.items(), strict=False):
        for c in group:
            xs = list(range(len(c["vertices"])))
            line = ax.plot(xs, c["init_ratio"], "-o", ms=3, label=f"{c['label']} init")[0]
            after = [v if math.isfinite(v) else float("nan") for v in c["after_ratio"]]
            ax.plot(xs, after, "--", color=line.get_color(), lw=1,
                    label=f"after {c['steps']} steps @ {c['lr']:.3g}")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        labels = group[0]["vertices"]
        step = max(1, len(labels) // 12)
        ax.set_xticks(list(range(0, len(labels), step)), labels[::step], rotation=45, ha="right", fontsize=6)
        ax.set_ylabel("E[h²] / stem's at init")
        ax.set_title(str(arch), fontsize=9)
        ax.legend(fontsize=6)
    for ax in panels[len(groups):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def coord_checks(
    report: dict[str, Any], data: DatasetSplit, *, models: Any = None, width: int | None = None,
    init: str = "arch-aware", degrees: Sequence[str] = ("source", "mean-field"), kernel_size: int | None = None,
    out_dir: Any = None, steps: int = DEFAULT_STEPS,
) -> dict[str, Any]:
    """The coordinate check of ``ahps validate --check-init``: the proxy and every fitted target of ``report``,
    each at its measured maximal LR, under ``init`` with each of ``degrees`` (built-in families; a user's
    ``models`` are checked with their own init). Writes ``coord_check.png`` to ``out_dir``; returns
    ``{plot, checks}`` (each check without its per-vertex lists: ``arch, label, spread, output_ratio``)."""
    from pathlib import Path

    from ahps_core.lr_search import arch_factory
    from ahps_core.specs import parse_arch

    nets = [(report["base"]["arch"], float(report["base"]["lr"]))]
    nets += [(p["arch"], float(p["measured_lr"])) for p in report["points"]]
    checks = []
    for arch, lr in nets:
        if models is not None:
            make = models.proxy_factory() if arch == models.proxy_name else models.seeded(arch)
            variants = [("model's own init", make)]
        else:
            graph = parse_arch(arch, report["family"], kernel_size=kernel_size)
            variants = [(f"{init}/{d}" if init == "arch-aware" else init,
                         arch_factory(graph, data, width=width, init=init, degree=d, kernel_size=kernel_size))
                        for d in (degrees if init == "arch-aware" else degrees[:1])]
        for label, make in variants:
            c = coord_check(make, data, lr=lr, steps=steps, seeds=report["seeds"], label=label)
            c["arch"] = arch
            checks.append(c)
    plot = None
    if out_dir is not None:
        plot = str(plot_coord_check(checks, Path(out_dir) / "coord_check.png",
                                    title=f"activation second moments, {report['family']} on {report['dataset']}"))
    keep = ("arch", "label", "spread", "output_ratio", "lr", "steps")
    return {"plot": plot, "checks": [{k: c[k] for k in keep} for c in checks]}


__all__ = ["DEFAULT_STEPS", "PROBE_BATCH", "coord_check", "coord_checks", "plot_coord_check"]

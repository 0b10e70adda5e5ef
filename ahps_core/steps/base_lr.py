"""The base-LR step of both pipelines: search the base (maximal) LR on the family's one-hidden-layer proxy, or
take the given one, and record it in the run group's ``lr-search`` run (reused when a finished search of the same
configuration exists)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ahps_core.checks import check_lr
from ahps_core.jsonio import stable_hash, write_json
from ahps_core.steps.common import SEARCH_FILE, load_training_data, log

LR_SEARCH_KEY = "lr-search"


def base_lr_step(
    tr, parent, *, family: str, dataset: str, data_source: str, base_lr: float, lr_grid: Sequence[float],
    lr_seeds: int, width: int, out_dir: str, C: int = 0, N: int = 0, checksums_file: str = "", s3_endpoint: str = "",
    split_file: str = "",
) -> dict[str, Any]:
    """The base LR: ``base_lr`` when > 0, else found on the proxy (``lr_grid``: empty = the default grid; ``C``/``N``
    size an nb201 proxy, 0 = the model's default; ``checksums_file``: md5s of dataset files without a known
    checksum; ``split_file``: NB201's split file of the dataset; the probe budget is the family's,
    :func:`ahps_core.presets.default_budget`). Writes ``search.json`` (+ ``lr_curve.png``) to ``out_dir``, then
    logs the ``lr-search`` run and the base LR on the parent run."""
    from ahps_core.tracking import tracked_step

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    given = float(base_lr or 0.0)
    identity: dict[str, Any] = {"family": family, "dataset": dataset, "given": given, "grid": list(lr_grid or []),
                                "seeds": int(lr_seeds), "width": int(width or 0)}
    if C or N:
        identity.update(C=int(C or 0), N=int(N or 0))
    if not given > 0:  # a search: a family's own probe budget (nb201's) and the split are part of what it measured
        from ahps_core.presets import FAMILY_BUDGETS

        if family in FAMILY_BUDGETS:
            identity["budget"] = FAMILY_BUDGETS[family].to_dict()
        if split_file:
            identity["split_file"] = split_file
    with tracked_step(tr, tr.key(LR_SEARCH_KEY), name="lr-search", kind="lr-search", identity=stable_hash(identity),
                      tags={"family": family, "dataset": dataset},
                      accept=lambda recorded: bool(recorded.get("base_lr"))) as run:
        if run.reused:
            summary = {**(run.summary or {}), "reused": True}
            write_json(out / SEARCH_FILE, summary)
            log("find-base-lr", f"reused the finished LR search {run.run_id}: base LR {summary['base_lr']:.6g}")
            return summary
        t0 = time.perf_counter()
        if given > 0:
            summary = {"base_lr": check_lr(given, "base_lr"), "source": "given", "curve": [], "grid": []}
            log("find-base-lr", f"base LR given: {given:.6g} (no search)")
        else:
            summary = _search(family=family, dataset=dataset, data_source=data_source, lr_grid=lr_grid,
                              lr_seeds=lr_seeds, width=width, C=C, N=N, checksums_file=checksums_file,
                              s3_endpoint=s3_endpoint, split_file=split_file)
        summary.update(seconds=time.perf_counter() - t0, run_group=tr.run_group, reused=False)
        write_json(out / SEARCH_FILE, summary)
        plot = None
        if summary.get("curve"):
            from ahps_core.plots import plot_lr_curve

            plot = plot_lr_curve(summary, out / "lr_curve.png", title=f"Base-LR search on the {family} proxy")
        run.log_params({"base_lr": summary["base_lr"], "source": summary["source"], "lr_seeds": int(lr_seeds),
                        "grid_points": len(summary.get("grid") or [])})
        run.log_metrics({"base_lr": summary["base_lr"], "runs_used": summary.get("runs_used", 0),
                         "search_seconds": summary["seconds"]})
        for i, point in enumerate(summary.get("curve") or []):
            run.log_metrics({"probe_mean_loss": point.get("mean_loss"), "probe_lr": point.get("lr")}, step=i)
        run.log_file(out / SEARCH_FILE)
        if plot is not None:
            run.log_file(plot, "plots")
        run.summary = summary
    tr.log_params(parent.run_id, {"base_lr": summary["base_lr"]}, existing=parent.params, what="parent run")
    return summary


def _search(*, family: str, dataset: str, data_source: str, lr_grid: Sequence[float], lr_seeds: int, width: int,
            C: int, N: int, checksums_file: str, s3_endpoint: str, split_file: str) -> dict[str, Any]:
    from ahps_core.lr_search import find_base_lr
    from ahps_core.presets import default_width

    extra: dict[str, Any] = {}
    if C:
        extra["C"] = int(C)
    if N:
        extra["N"] = int(N)
    if checksums_file or split_file:
        extra["data"] = load_training_data(dataset, data_source, checksums_file=checksums_file,
                                           s3_endpoint=s3_endpoint, split_file=split_file)
    result = find_base_lr(family, dataset, data_root=data_source or None, grid=list(lr_grid) or None,
                          seeds=list(range(int(lr_seeds))),
                          width=int(width) if width else default_width(family, dataset), **extra)
    log("find-base-lr", f"base LR {result.best_lr:.6g} from {result.runs_used} probe runs "
                        f"({result.seconds:.1f} s){' -- at the grid edge' if result.at_edge else ''}")
    return {"base_lr": result.best_lr, "source": "search", **result.to_dict()}

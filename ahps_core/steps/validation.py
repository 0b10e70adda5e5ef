"""Logging an ``ahps validate`` report to MLflow (``--tracking-uri``), through the tracked-step primitive.

Layout: one run group per validation (``validate-<hash>``, the hash of what the measurements and the statistics
depend on: family/model, dataset, targets, grid, seeds, budget, resolution, rules, conventions), whose parent run
carries those as params and whose child run ``<group>/validate`` carries:

* metrics: for the first rule/convention ``pearson_log``, ``p_value``, ``pearson_ci_lo/hi``, ``spearman``,
  ``slope``, ``slope_ci_lo/hi``, ``n``, ``distinct_measured``, ``base_lr``; the same for every
  rule x convention prefixed ``<rule>.<convention>.``;
* artifacts: ``validate/validate.json`` (the report: points, CIs, measurements), ``validate/points.json``, the
  predicted-vs-measured plot, ``measurements.jsonl`` and the coordinate-check plot when there is one.

The report is on disk before it is logged (``validate`` wrote it); a re-run of the same validation reuses the
finished run instead of logging it twice. mlflow is imported by :mod:`ahps_core.tracking` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ahps_core.checks import finite_or_none
from ahps_core.jsonio import stable_hash

STAT_KEYS = ("pearson_log", "p_value", "spearman", "slope", "intercept", "n")
CI_KEYS = ("pearson_ci", "slope_ci", "pearson_ci_seeds", "slope_ci_seeds")


def identity(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a validation report depends on (its parameters), flat enough for MLflow params."""
    return {
        "family": report.get("family"), "model": report.get("model"), "dataset": report.get("dataset"),
        "targets": [m["arch"] for m in report.get("measurements", [])], "base": report["base"]["arch"],
        "grid_points": len(report.get("grid") or []), "grid_min": min(report.get("grid") or [0]),
        "grid_max": max(report.get("grid") or [0]), "seeds": report.get("seeds"), "budget": report.get("budget"),
        "width": report.get("width"), "init": report.get("init"),
        "resolution": (report.get("resolution") or {}).get("points_per_decade"),
        "rules": sorted({c["rule"] for c in report["comparisons"]}),
        "conventions": sorted({c["convention"] for c in report["comparisons"]}),
    }


def metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's statistics as finite MLflow metrics (module docstring)."""
    out: dict[str, float] = {}

    def add(prefix: str, stats: Mapping[str, Any]) -> None:
        for k in STAT_KEYS:
            v = finite_or_none(stats.get(k))
            if v is not None:
                out[prefix + k] = v
        for k in CI_KEYS:
            ci = stats.get(k)
            if ci:
                for end, v in zip(("lo", "hi"), ci, strict=True):
                    if finite_or_none(v) is not None:
                        out[f"{prefix}{k}_{end}"] = float(v)

    add("", report)
    for c in report["comparisons"]:
        add(f"{c['rule']}.{c['convention']}.", c)
    for k in ("distinct_measured", "n_targets", "runs_used", "seconds"):
        v = finite_or_none(report.get(k))
        if v is not None:
            out[k] = v
    out["base_lr"] = float(report["base"]["lr"])
    return out


def log_validation(report: Mapping[str, Any], tracking_uri: str, experiment: str, *,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """Log ``report`` (module docstring); returns ``{run_id, run_group, status}`` (``status`` ``logged`` or
    ``reused``)."""
    from ahps_core.steps.common import tracker
    from ahps_core.tracking import check_tracking_uri, tracked_step

    params = identity(report)
    group = f"validate-{stable_hash(params, 12)}"
    what = report.get("model") or report.get("family")
    tr = tracker(check_tracking_uri(tracking_uri), experiment, group)  # quiet: stdout may be the --json report
    parent = tr.ensure_parent(name=f"validate {what} on {report.get('dataset')}", params=params,
                     tags={"pipeline": "validate", "family": report.get("family"), "dataset": report.get("dataset")})
    results = stable_hash({"points": [c["points"] for c in report["comparisons"]], "base": report["base"]["lr"]})
    with tracked_step(tr, tr.key("validate"), name=f"validate {what}", kind="validate", identity=results,
                      tags={"family": report.get("family"), "dataset": report.get("dataset"),
                            "rule": report.get("rule"), "convention": report.get("convention")}) as run:
        if run.reused:
            tr.finish(parent.run_id)
            return {"run_id": run.run_id, "run_group": group, "status": "reused"}
        run.log_metrics(metrics(report))
        run.log_dict(dict(report), "validate/validate.json")
        run.log_dict({"comparisons": [{"rule": c["rule"], "convention": c["convention"], "points": c["points"]}
                                      for c in report["comparisons"]]}, "validate/points.json")
        files = [report.get("plot"), (report.get("check_init") or {}).get("plot")]
        if out_dir is not None:
            files.append(str(Path(out_dir) / "measurements.jsonl"))
        for f in files:
            if f and Path(f).is_file():
                run.log_file(f, "validate")
        run.summary = {"run_group": group, "pearson_log": report.get("pearson_log"), "slope": report.get("slope"),
                       "n": report.get("n")}
    tr.finish(parent.run_id)
    return {"run_id": run.run_id, "run_group": group, "status": "logged"}


__all__ = ["identity", "log_validation", "metrics"]

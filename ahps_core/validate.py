"""``ahps validate``: transferred vs measured maximal learning rates over a set of target architectures.

For every target the maximal LR is *measured* with the base-LR protocol (:func:`ahps_core.lr_search.find_max_lr`,
same grid, seeds and budget as the proxy), refined around the optimum to ``resolution`` points per decade
(default 24: the answer is known to 1/24 decade, :mod:`ahps_core.lr_refine`), and *predicted* by transferring
the proxy's measured base LR with each asked rule and convention (:class:`ahps_core.scaling.Transferer`); each
target is measured once, whatever the number of rules. Reported per (rule, convention)
(:mod:`ahps_core.validate_stats`): Pearson r of log LRs with its p-value and a bootstrap CI over targets, the
CI due to measurement noise alone (seeds resampled), Spearman rho, the slope of log measured on log predicted
(1 means the rule's exponent is right) with its CIs, and the points; per measurement its bracket and seed
bootstrap; the number of distinct measured values; and a predicted-vs-measured plot like Fig. 2 of Chen et al.
The proxy is measured first and reported as ``base``; a target that is the proxy itself is reported in
``proxy_targets`` and left out of every fit (its prediction is its measurement by construction).

Targets: a depth sweep (``depths``; depth H = hidden layers of a plain MLP/CNN chain: H=1 is the proxy DAG ``1``,
H=2 ``2``, H=3 ``2_02``, H=4 ``2_02_002``, ...), given specs, or a seeded sample of the family's topologies
stratified over depth and number of paths (:func:`ahps_core.validate_stats.stratified_sample`; ``uniform``: the
old uniform draw over DAG codes). With ``models`` (:class:`ahps_core.user_models.UserModels`) the targets are
names the user's factory builds, the graphs come from torch.fx and the rules use the ``graph`` family's
conventions. A target without an input->output path (:class:`NoPathError`) or whose every LR diverged is
recorded as skipped with its reason; the batch goes on.

Nothing is lost: with ``out_dir``, each measurement is appended to ``measurements.jsonl`` as soon as it finishes
(keyed by a hash of everything the measurement depends on); a re-run with the same output directory skips the
targets already measured. The report is written to ``validate.json`` and the plot to ``pred_vs_measured.png``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ahps_core.checks import check_choice, check_choices, check_int
from ahps_core.errors import AhpsError, ConfigError, DivergedError, NoPathError
from ahps_core.jsonio import json_safe, stable_hash, write_json
from ahps_core.lr_refine import DEFAULT_POINTS_PER_DECADE
from ahps_core.validate_stats import (
    DEFAULT_BOOT,
    distinct_values,
    fit_stats,
    fit_under_seed_noise,
    measurement_uncertainty,
    stratified_sample,
)

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit
    from ahps_core.graph import ArchGraph
    from ahps_core.presets import ProbeBudget
    from ahps_core.probe import ModelFactory
    from ahps_core.user_models import UserModels

MEASUREMENTS_NAME = "measurements.jsonl"
REPORT_NAME = "validate.json"
PLOT_NAME = "pred_vs_measured.png"
COHERENT_PLOT_NAME = "pred_vs_measured_coherent.png"
DEFAULT_RULES = ("sum-cubed",)
SAMPLINGS = ("stratified", "uniform")


# --- targets -------------------------------------------------------------------------------------------------


def depth_chain(depth: int) -> str:
    """The DAG code of a plain chain with ``depth`` hidden layers: 1 -> ``1``, 2 -> ``2``, 3 -> ``2_02``, ..."""
    check_int("depth", depth, 1)
    if depth == 1:
        return "1"
    return "_".join(["2"] + ["0" * (i - 1) + "2" for i in range(2, depth)])


def sample_archs(family: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct random specs of ``family`` (uniform over 5-vertex DAG codes for mlp/cnn, over cells for
    nb201), drawn with ``random.Random(seed)``. Some may have no input->output path (they are skipped)."""
    check_int("sample size", n, 1)
    sizes: tuple[int, ...]
    if family in ("mlp", "cnn"):
        alphabet, sizes, space = "012", (1, 2, 3, 4), 3 ** 10
    elif family == "nb201":
        alphabet, sizes, space = "01234", (1, 2, 3), 5 ** 6
    else:
        raise ConfigError(f"cannot sample architectures of family {family!r}: accepted are mlp, cnn, nb201")
    if n > space:
        raise ConfigError(f"sample size {n} exceeds the {space} specs of family {family}")
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        code = "_".join("".join(rng.choice(alphabet) for _ in range(k)) for k in sizes)
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def parse_depths(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` with a clear error."""
    try:
        depths = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--depths {text!r}: expected comma-separated integers like 1,2,4") from None
    if not depths:
        raise ConfigError(f"--depths {text!r}: no depth given")
    for d in depths:
        depth_chain(d)
    return depths


def resolve_targets(
    family: str, *, depths: Sequence[int] | None = None, archs: Sequence[str] | None = None,
    sample: int | None = None, seed: int = 0, sampling: str = "stratified",
) -> list[str]:
    """Target specs from exactly one of ``depths`` / ``archs`` / ``sample`` (duplicates removed, order kept).
    ``sampling``: ``stratified`` (over depth and number of paths) or ``uniform`` (over DAG codes)."""
    check_choice("sampling", sampling, SAMPLINGS)
    given = [x is not None for x in (depths, archs, sample)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of: a depth sweep (--depths), specs (--archs), or a sample (--sample)")
    if depths is not None:
        if family == "nb201":
            raise ConfigError("a depth sweep applies to mlp and cnn chains; for nb201 give --archs or --sample")
        specs = [depth_chain(d) for d in depths]
    elif archs is not None:
        specs = [a.strip() for a in archs if a.strip()]
        if not specs:
            raise ConfigError("--archs: no architecture given")
    elif sampling == "uniform":
        specs = sample_archs(family, sample, seed)  # type: ignore[arg-type]
    else:
        specs = stratified_sample(family, sample, seed)  # type: ignore[arg-type]
    return list(dict.fromkeys(specs))


def fit_log(predicted: Sequence[float], measured: Sequence[float], **kwargs: Any) -> dict[str, Any]:
    """:func:`ahps_core.validate_stats.fit_stats` (Pearson r of log LRs, the log-log line, their CIs)."""
    return fit_stats(predicted, measured, **kwargs)


# --- where the networks come from ----------------------------------------------------------------------------


@dataclass
class _Source:
    """How targets become graphs and networks: ``family`` is the transfer rules' family, ``proxy`` the base graph,
    ``graph(spec)`` a target's graph, ``factory(graph)`` its ``seed -> model``, ``identity(graph)`` what its
    measurement depends on besides the protocol."""

    family: str
    proxy: ArchGraph
    graph: Callable[[str], ArchGraph]
    factory: Callable[[ArchGraph], ModelFactory]
    identity: Callable[[ArchGraph], dict[str, Any]]
    kernel_size: int | None = None


def _builtin_source(family: str, data: DatasetSplit, *, width: int | None, C: int, N: int, init: str,
                    kernel_size: int | None) -> _Source:
    from ahps_core import lr_search as ls
    from ahps_core.models import proxy_graph
    from ahps_core.specs import parse_arch

    return _Source(
        family=family, proxy=proxy_graph(family, kernel_size=kernel_size),
        graph=lambda spec: parse_arch(spec, family, kernel_size=kernel_size),
        factory=lambda g: ls.arch_factory(g, data, width=width, C=C, N=N, init=init, kernel_size=kernel_size),
        identity=lambda g: {"arch": g.spec, "kernel": sorted(g.weight_kernels)}, kernel_size=kernel_size,
    )


def _user_source(models: UserModels, data: DatasetSplit) -> _Source:
    from ahps_core.user_models import check_fits

    proxy = models.proxy_graph()

    def factory(g: ArchGraph) -> ModelFactory:
        make = models.proxy_factory() if g.spec == models.proxy_name else models.seeded(g.spec)
        check_fits(make(0), data, f"{models.ref} {g.spec!r}")
        return make

    return _Source(family="graph", proxy=proxy, graph=models.graph, factory=factory,
                   identity=lambda g: models.identity(g.spec))


def _is_proxy(graph: ArchGraph, proxy: ArchGraph) -> bool:
    def key(g: ArchGraph) -> frozenset[tuple[int, int, str, int]]:
        return frozenset((e.src, e.dst, e.op.value, e.kernel) for e in g.path_edges)

    return graph.spec == proxy.spec or (graph.family == proxy.family and key(graph) == key(proxy))


# --- the run -------------------------------------------------------------------------------------------------


def _load_measurements(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by an interruption: that target is measured again
            if isinstance(rec, dict) and "key" in rec:
                done[rec["key"]] = rec
    return done


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def validate(
    family: str,
    dataset: str,
    targets: Sequence[str],
    *,
    rules: Sequence[str] = DEFAULT_RULES,
    conventions: Sequence[str] | None = None,
    data_root: str | None = None,
    split_file: str | None = None,
    data: DatasetSplit | None = None,
    grid: Sequence[float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    budget: ProbeBudget | None = None,
    width: int | None = None,
    C: int = 16,
    N: int = 5,
    kernel_size: int | None = None,
    init: str = "arch-aware",
    refine: bool = True,
    coarse_stride: int | None = None,
    resolution: int | None = DEFAULT_POINTS_PER_DECADE,
    n_boot: int = DEFAULT_BOOT,
    models: UserModels | None = None,
    sampling: dict[str, Any] | None = None,
    batched: str = "auto",
    threads: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    plot: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every target's maximal LR, transfer the proxy's, and compare (module docstring).

    ``conventions`` None: each rule's default (:data:`ahps_core.scaling.DEFAULT_CONVENTION`: ``reference`` for
    ``sum-cubed``, Wu's unit ``wu`` for ``effective-depth``); given, every rule is compared under each of them.
    ``split_file``: NB201's split file of ``dataset``, when ``data`` is not given.

    Returns the report dict: the statistics and ``points`` of the first rule and convention, ``comparisons``
    (one entry per rule x convention with the same fields), ``base`` (the proxy's search and uncertainty),
    ``proxy_targets``, ``measurements``, ``skipped`` (``{arch, reason}``), ``distinct_measured``,
    ``resolution``, ``plot`` (PNG path or None), ``seconds``. ``family`` is ignored with ``models`` (user
    networks use the ``graph`` family's conventions). ``sampling``: how the targets were chosen (recorded).
    ``log``: a callable receiving human-readable lines (default: nothing): one when the measuring starts (after
    every check), then one per finished architecture (the proxy first).
    """
    from ahps_core import lr_search as ls
    from ahps_core.presets import default_budget, default_width
    from ahps_core.runtime import want_progress
    from ahps_core.scaling import CONVENTIONS, RULES, Transferer, default_convention

    started = time.perf_counter()
    if models is None:
        ls.check_family(family)
    rules = check_choices("rule", rules, RULES)
    pairs = ([(rule, default_convention(rule)) for rule in rules] if conventions is None else
             [(rule, conv) for rule in rules for conv in check_choices("convention", conventions, CONVENTIONS)])
    if not targets:
        raise ConfigError("no target architectures to validate")
    grid = ls.check_grid(ls.default_grid() if grid is None else grid)
    seeds = ls.check_seeds(seeds)
    if resolution is not None:
        check_int("resolution (points per decade)", resolution, 1)
    check_int("bootstrap resamples", n_boot, 0)
    stride = ls.DEFAULT_COARSE_STRIDE if coarse_stride is None else coarse_stride
    if data is None:
        from ahps_core.data import load_dataset

        data = load_dataset(dataset, data_root, split_file=split_file)
    budget = budget or default_budget(dataset, family if models is None else None)
    if models is None:
        width = width if width is not None else default_width(family, dataset)
        source = _builtin_source(family, data, width=width, C=C, N=N, init=init, kernel_size=kernel_size)
    else:
        width, init = None, "the model's own"
        source = _user_source(models, data)
    family = source.family
    out = Path(out_dir) if out_dir is not None else None
    jsonl = out / MEASUREMENTS_NAME if out is not None else None
    done = _load_measurements(jsonl) if jsonl is not None else {}
    emit = log or (lambda line: None)

    common = {
        "family": family, "dataset": getattr(data, "name", dataset), "grid": grid, "seeds": seeds,
        "budget": budget.to_dict(), "width": width, "C": C, "N": N, "kernel_size": kernel_size, "init": init,
        "refine": refine, "coarse_stride": stride, "train_images": len(data.train), "resolution": resolution,
    }

    def measure(spec: str, role: str, graph: ArchGraph | None = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            graph = graph if graph is not None else source.graph(spec)
            canonical = graph.spec
        except NoPathError as exc:
            return {"arch": spec, "role": role, "status": "skipped", "reason": str(exc)}
        key = stable_hash({**common, **source.identity(graph)})
        if key in done:
            return {**done[key], "role": role, "resumed": True}
        rec: dict[str, Any] = {"key": key, "arch": canonical, "role": role}
        try:
            factory = source.factory(graph)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the edge flag is recorded instead
                res = ls.find_max_lr(
                    factory, data, grid, seeds, budget, refine=refine, coarse_stride=stride, batched=batched,
                    progress=False, label=f"{family}:{canonical}", threads=threads, resolution=resolution,
                )
            rec.update(status="ok", lr=res.best_lr, at_edge=res.at_edge, runs_used=res.runs_used,
                       search=res.to_dict())
        except (NoPathError, DivergedError) as exc:
            rec.update(status="skipped", reason=str(exc))
        rec["seconds"] = time.perf_counter() - t0
        if jsonl is not None:
            _append(jsonl, rec)
        done[key] = rec
        return rec

    bar = None
    if want_progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(targets) + 1, desc="validate", unit="arch", file=sys.stderr, leave=False)
    emit(f"measuring the maximal LR of the proxy {family}:{source.proxy.spec} and {len(targets)} target(s), "
         f"{len(seeds)} seed(s) each")
    try:
        base = measure(source.proxy.spec, "base", source.proxy)
        if bar is not None:
            bar.update(1)
        if base.get("status") != "ok":
            raise ConfigError(f"the proxy {family}:{source.proxy.spec} could not be measured: {base.get('reason')}")
        emit(_line(base))
        measurements = []
        for spec in targets:
            rec = measure(spec, "target")
            measurements.append(rec)
            emit(_line(rec))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    base_lr = float(base["lr"])
    uncertainty = {m["key"]: measurement_uncertainty(m["search"], n_boot=max(n_boot, 1))
                   for m in [base, *measurements] if m.get("status") == "ok"}
    proxy_targets: list[dict[str, Any]] = []
    fitted: list[tuple[dict[str, Any], ArchGraph]] = []
    for rec in measurements:
        if rec.get("status") != "ok":
            continue
        graph = source.graph(rec["arch"])
        if _is_proxy(graph, source.proxy):
            proxy_targets.append({"arch": rec["arch"], "measured_lr": float(rec["lr"]),
                                  "reason": "the proxy itself: its prediction is its measurement, left out of the fit"})
        else:
            fitted.append((rec, graph))
    comparisons = []
    for rule, convention in pairs:
        transfer = Transferer(family, base_lr, rule=rule, convention=convention, base=source.proxy,
                              kernel_size=source.kernel_size, base_kernel_size=source.kernel_size,
                              cells_per_stage=N)
        points, skipped, curves = [], [], []
        for rec, graph in fitted:
            try:
                t = transfer(graph)
            except AhpsError as exc:
                skipped.append({"arch": rec["arch"], "reason": str(exc)})
                continue
            unc = uncertainty[rec["key"]]
            points.append({
                "arch": rec["arch"], "measured_lr": float(rec["lr"]), "predicted_lr": t.lr, "ratio": t.ratio,
                "sum_l3": t.target.sum_l3, "num_paths": t.target.num_paths, "max_depth": t.target.max_depth,
                "effective_depth": t.effective_depth, "kernel_factor": t.kernel_factor,
                "at_edge": rec.get("at_edge"), "measured_ci": unc["seed_boot_ci"], "bracket": unc["bracket"],
            })
            curves.append(rec["search"]["curve"])
        pred = [p["predicted_lr"] for p in points]
        fit = fit_stats(pred, [p["measured_lr"] for p in points], n_boot=n_boot)
        noise = fit_under_seed_noise(pred, curves, n_boot=n_boot) if n_boot else {}
        comparisons.append({"rule": rule, "convention": convention, **fit, **noise, "points": points,
                            "skipped": skipped})

    from ahps_core.validate_explain import explain

    deviations = explain(comparisons, {rec["arch"]: g for rec, g in fitted}, source.proxy, base_lr, n_boot=n_boot)
    head = comparisons[0]
    measured = [float(rec["lr"]) for rec, _ in fitted]
    stat_keys = ("pearson_log", "p_value", "pearson_ci", "pearson_ci_seeds", "spearman", "slope", "slope_ci",
                 "slope_ci_seeds", "slope_stderr", "intercept", "n")
    report: dict[str, Any] = {
        "family": family, "dataset": common["dataset"], "rule": head["rule"], "convention": head["convention"],
        **{k: head.get(k) for k in stat_keys}, "points": head["points"], "comparisons": comparisons,
        "base": {"arch": base["arch"], "lr": base_lr, "at_edge": base.get("at_edge"), "search": base.get("search"),
                 "uncertainty": uncertainty[base["key"]]},
        "proxy_targets": proxy_targets, "deviations": deviations,
        "measurements": [_summary(m, uncertainty.get(m.get("key", ""))) for m in measurements],
        "skipped": [{"arch": m["arch"], "reason": m.get("reason", "")} for m in measurements
                    if m.get("status") != "ok"],
        "n_targets": len(targets), "n_fitted": len(fitted),
        "distinct_measured": distinct_values(measured) if measured else 0,
        "resolution": {"points_per_decade": resolution, "decades": 1 / resolution if resolution else None,
                       "grid_points": len(grid)},
        "sampling": sampling, "model": models.ref if models is not None else None,
        "grid": grid, "seeds": seeds, "budget": budget.to_dict(), "width": width, "init": init,
        "runs_used": sum(int(m.get("runs_used") or 0) for m in [base, *measurements] if not m.get("resumed")),
        "resumed": sum(1 for m in [base, *measurements] if m.get("resumed")),
        "plot": None, "out_dir": str(out) if out is not None else None,
    }
    if plot and out is not None and any(c["points"] for c in comparisons):
        from ahps_core.plots import plot_pred_vs_measured

        report["plot"] = str(plot_pred_vs_measured(report, out / PLOT_NAME))
        coherent = [{"rule": "coherent paths (diagnostic)", "convention": c["convention"], **c["coherent_paths"]}
                    for c in comparisons if c.get("coherent_paths", {}).get("points")]
        if coherent:
            report["plot_coherent"] = str(plot_pred_vs_measured({**report, "comparisons": coherent},
                                                                out / COHERENT_PLOT_NAME))
    report["seconds"] = time.perf_counter() - started
    report = json_safe(report)
    if out is not None:
        write_json(out / REPORT_NAME, report, encode=json_safe)
    return report


def _summary(rec: dict[str, Any], uncertainty: dict[str, Any] | None) -> dict[str, Any]:
    keep = ("arch", "status", "lr", "at_edge", "runs_used", "seconds", "reason", "resumed")
    out = {k: rec[k] for k in keep if k in rec}
    if "search" in rec:
        out["curve"] = [{"lr": p["lr"], "mean_loss": p["mean_loss"]} for p in rec["search"]["curve"]]
    if uncertainty is not None:
        out["uncertainty"] = uncertainty
    return out


def _line(rec: dict[str, Any]) -> str:
    if rec.get("status") == "ok":
        note = " (resumed)" if rec.get("resumed") else f" ({rec.get('seconds', 0):.1f}s)"
        edge = " [grid edge]" if rec.get("at_edge") else ""
        b = (rec.get("search") or {}).get("bracket") or {}
        inside = f" in [{b['lower']:.4g}, {b['upper']:.4g}]" if b.get("lower") and b.get("upper") else ""
        return f"{rec['role']:<6} {rec['arch']:<28} max LR {rec['lr']:.4g}{inside}{edge}{note}"
    return f"{rec.get('role', 'target'):<6} {rec['arch']:<28} skipped: {rec.get('reason')}"

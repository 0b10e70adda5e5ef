"""``ahps validate``: transferred vs measured maximal learning rates over a set of target architectures.

For every target the maximal LR is *measured* with the base-LR protocol (:func:`ahps_core.lr_search.find_max_lr`,
same grid, seeds and budget as the proxy), and *predicted* by transferring the proxy's measured base LR with each
asked rule and convention (:class:`ahps_core.scaling.Transferer`); each target is measured once, whatever the
number of rules. Reported per (rule, convention): Pearson r of log LRs (``scipy.stats.pearsonr``), the slope and
intercept of log measured vs log predicted (``scipy.stats.linregress``; 1 means the rule's exponent is right), and
the points; plus a predicted-vs-measured plot like Fig. 2 of Chen et al.

Targets: a depth sweep (``depths``; depth H = hidden layers of a plain MLP/CNN chain: H=1 is the proxy DAG ``1``,
H=2 ``2``, H=3 ``2_02``, H=4 ``2_02_002``, ...), given specs, or a random sample of the family's specs (5-vertex
DAG codes for mlp/cnn, cells for nb201). A target without an input->output path (:class:`NoPathError`) or whose
every LR diverged is recorded as skipped with its reason; the batch goes on.

Nothing is lost: with ``out_dir``, each measurement is appended to ``measurements.jsonl`` as soon as it finishes
(keyed by a hash of everything the measurement depends on); a re-run with the same output directory skips the
targets already measured. The report is written to ``validate.json`` and the plot to ``pred_vs_measured.png``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ahps_core.checks import check_choices, check_int
from ahps_core.errors import AhpsError, ConfigError, DivergedError, NoPathError
from ahps_core.jsonio import json_safe, stable_hash, write_json

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit
    from ahps_core.presets import ProbeBudget

MEASUREMENTS_NAME = "measurements.jsonl"
REPORT_NAME = "validate.json"
PLOT_NAME = "pred_vs_measured.png"
DEFAULT_RULES = ("sum-cubed",)


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
    sample: int | None = None, seed: int = 0,
) -> list[str]:
    """Target specs from exactly one of ``depths`` / ``archs`` / ``sample`` (duplicates removed, order kept)."""
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
    else:
        specs = sample_archs(family, sample, seed)  # type: ignore[arg-type]
    return list(dict.fromkeys(specs))


# --- statistics ----------------------------------------------------------------------------------------------


def fit_log(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Pearson r of log LRs and the least-squares line log(measured) = slope * log(predicted) + intercept.
    Fields are None when fewer than 2 points or a constant coordinate make them undefined."""
    from scipy import stats

    x = [math.log(v) for v in predicted]
    y = [math.log(v) for v in measured]
    out: dict[str, Any] = {"n": len(x), "pearson_log": None, "p_value": None, "slope": None, "intercept": None}
    if len(x) < 2 or max(x) - min(x) <= 1e-12:
        return out
    fit = stats.linregress(x, y)
    out["slope"], out["intercept"] = float(fit.slope), float(fit.intercept)
    if len(x) >= 2 and max(y) - min(y) > 1e-12:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = stats.pearsonr(x, y)
        out["pearson_log"], out["p_value"] = float(r[0]), float(r[1])
    return out


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

    Returns the report dict: ``pearson_log``, ``slope``, ``intercept`` and ``points`` of the first rule and
    convention, ``comparisons`` (one entry per rule x convention with the same fields), ``base`` (the proxy's
    search), ``measurements``, ``skipped`` (``{arch, reason}``), ``plot`` (PNG path or None), ``seconds``.
    ``log``: a callable receiving one human-readable line per finished target (default: nothing).
    """
    from ahps_core import lr_search as ls
    from ahps_core.models import proxy_graph
    from ahps_core.presets import default_budget, default_width
    from ahps_core.runtime import want_progress
    from ahps_core.scaling import CONVENTIONS, RULES, Transferer, default_convention
    from ahps_core.specs import parse_arch

    started = time.perf_counter()
    ls.check_family(family)
    rules = check_choices("rule", rules, RULES)
    pairs = ([(rule, default_convention(rule)) for rule in rules] if conventions is None else
             [(rule, conv) for rule in rules for conv in check_choices("convention", conventions, CONVENTIONS)])
    if not targets:
        raise ConfigError("no target architectures to validate")
    grid = ls.check_grid(ls.default_grid() if grid is None else grid)
    seeds = ls.check_seeds(seeds)
    stride = ls.DEFAULT_COARSE_STRIDE if coarse_stride is None else coarse_stride
    if data is None:
        from ahps_core.data import load_dataset

        data = load_dataset(dataset, data_root, split_file=split_file)
    budget = budget or default_budget(dataset, family)
    width = width if width is not None else default_width(family, dataset)
    out = Path(out_dir) if out_dir is not None else None
    jsonl = out / MEASUREMENTS_NAME if out is not None else None
    done = _load_measurements(jsonl) if jsonl is not None else {}
    emit = log or (lambda line: None)

    common = {
        "family": family, "dataset": getattr(data, "name", dataset), "grid": grid, "seeds": seeds,
        "budget": budget.to_dict(), "width": width, "C": C, "N": N, "kernel_size": kernel_size, "init": init,
        "refine": refine, "coarse_stride": stride, "train_images": len(data.train),
    }

    def measure(spec: str, role: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            graph = parse_arch(spec, family, kernel_size=kernel_size)
            canonical = graph.spec
        except NoPathError as exc:
            return {"arch": spec, "role": role, "status": "skipped", "reason": str(exc)}
        key = stable_hash({**common, "arch": canonical, "kernel": sorted(graph.weight_kernels)})
        if key in done:
            return {**done[key], "role": role, "resumed": True}
        rec: dict[str, Any] = {"key": key, "arch": canonical, "role": role}
        try:
            factory = ls.arch_factory(graph, data, width=width, C=C, N=N, init=init, kernel_size=kernel_size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the edge flag is recorded instead
                res = ls.find_max_lr(
                    factory, data, grid, seeds, budget, refine=refine, coarse_stride=stride, batched=batched,
                    progress=False, label=f"{family}:{canonical}", threads=threads,
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
    try:
        base_graph = proxy_graph(family, kernel_size=kernel_size)
        base = measure(base_graph.spec, "base")
        if bar is not None:
            bar.update(1)
        if base.get("status") != "ok":
            raise ConfigError(f"the proxy {family}:{base_graph.spec} could not be measured: {base.get('reason')}")
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
    comparisons = []
    for rule, convention in pairs:
        transfer = Transferer(family, base_lr, rule=rule, convention=convention, base=base_graph,
                              kernel_size=kernel_size, base_kernel_size=kernel_size, cells_per_stage=N)
        points, skipped = [], []
        for rec in measurements:
            if rec.get("status") != "ok":
                continue
            try:
                t = transfer(parse_arch(rec["arch"], family, kernel_size=kernel_size))
            except AhpsError as exc:
                skipped.append({"arch": rec["arch"], "reason": str(exc)})
                continue
            points.append({
                "arch": rec["arch"], "measured_lr": float(rec["lr"]), "predicted_lr": t.lr, "ratio": t.ratio,
                "sum_l3": t.target.sum_l3, "effective_depth": t.effective_depth, "at_edge": rec.get("at_edge"),
            })
        fit = fit_log([p["predicted_lr"] for p in points], [p["measured_lr"] for p in points])
        comparisons.append({"rule": rule, "convention": convention, **fit, "points": points, "skipped": skipped})

    head = comparisons[0]
    report: dict[str, Any] = {
        "family": family, "dataset": common["dataset"], "rule": head["rule"], "convention": head["convention"],
        "pearson_log": head["pearson_log"], "slope": head["slope"], "intercept": head["intercept"],
        "n": head["n"], "points": head["points"], "comparisons": comparisons,
        "base": {"arch": base["arch"], "lr": base_lr, "at_edge": base.get("at_edge"), "search": base.get("search")},
        "measurements": [_summary(m) for m in measurements],
        "skipped": [{"arch": m["arch"], "reason": m.get("reason", "")} for m in measurements
                    if m.get("status") != "ok"],
        "grid": grid, "seeds": seeds, "budget": budget.to_dict(), "width": width,
        "runs_used": sum(int(m.get("runs_used") or 0) for m in [base, *measurements] if not m.get("resumed")),
        "resumed": sum(1 for m in [base, *measurements] if m.get("resumed")),
        "plot": None, "out_dir": str(out) if out is not None else None,
    }
    if plot and out is not None and any(c["points"] for c in comparisons):
        from ahps_core.plots import plot_pred_vs_measured

        report["plot"] = str(plot_pred_vs_measured(report, out / PLOT_NAME))
    report["seconds"] = time.perf_counter() - started
    report = json_safe(report)
    if out is not None:
        write_json(out / REPORT_NAME, report, encode=json_safe)
    return report


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    keep = ("arch", "status", "lr", "at_edge", "runs_used", "seconds", "reason", "resumed")
    out = {k: rec[k] for k in keep if k in rec}
    if "search" in rec:
        out["curve"] = [{"lr": p["lr"], "mean_loss": p["mean_loss"]} for p in rec["search"]["curve"]]
    return out


def _line(rec: dict[str, Any]) -> str:
    if rec.get("status") == "ok":
        note = " (resumed)" if rec.get("resumed") else f" ({rec.get('seconds', 0):.1f}s)"
        edge = " [grid edge]" if rec.get("at_edge") else ""
        return f"{rec['role']:<6} {rec['arch']:<28} max LR {rec['lr']:.4g}{edge}{note}"
    return f"{rec.get('role', 'target'):<6} {rec['arch']:<28} skipped: {rec.get('reason')}"

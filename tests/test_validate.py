"""``validate``: targets, statistics, skipped targets, several rules from one measurement, resume; and the
acceptance of the transfer rule itself (slow): the depth sweep on digits correlates at r >= 0.95."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ahps.cli import main
from ahps_core.data import load_dataset
from ahps_core.errors import ConfigError, DivergedError
from ahps_core.lr_search import arch_factory, find_max_lr, log_grid
from ahps_core.paths import raw_moments
from ahps_core.presets import ProbeBudget
from ahps_core.scaling import Transferer
from ahps_core.specs import parse_arch
from ahps_core.validate import depth_chain, fit_log, parse_depths, resolve_targets, sample_archs, validate

TINY = ProbeBudget(epochs=2, batch_size=32, max_steps_per_epoch=12, device="cpu")
GRID = log_grid(0.01, 3.0, 9)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_depth_chain():
    assert [depth_chain(h) for h in (1, 2, 3, 4)] == ["1", "2", "2_02", "2_02_002"]
    for h in range(1, 9):
        g = parse_arch(depth_chain(h), "mlp")
        m = raw_moments(g)
        assert m.n == 1 and m.kmax == m.kmin == h - 1  # weight edges on the one path (stem not counted)
    with pytest.raises(ConfigError, match="depth 0"):
        depth_chain(0)
    assert parse_depths("1,2, 4") == [1, 2, 4]
    with pytest.raises(ConfigError, match="comma-separated integers"):
        parse_depths("1,x")


def test_sample_archs_is_reproducible_and_valid():
    a = sample_archs("mlp", 12, seed=4)
    assert a == sample_archs("mlp", 12, seed=4) and len(set(a)) == 12 and a != sample_archs("mlp", 12, seed=5)
    for spec in a:
        parse_arch(spec, "mlp")
    for spec in sample_archs("nb201", 5, seed=1):
        parse_arch(spec, "nb201")
    assert resolve_targets("mlp", depths=[1, 2, 2]) == ["1", "2"]
    with pytest.raises(ConfigError, match="exactly one"):
        resolve_targets("mlp", depths=[1], sample=3)
    with pytest.raises(ConfigError, match="nb201"):
        resolve_targets("nb201", depths=[1, 2])


def test_fit_log():
    pred = [1.0, 0.5, 0.25, 0.125]
    fit = fit_log(pred, [2 * p ** 1.5 for p in pred])
    assert fit["pearson_log"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(1.5)
    assert fit["intercept"] == pytest.approx(math.log(2))
    assert fit_log([1.0], [1.0])["pearson_log"] is None
    assert fit_log([1.0, 0.5], [0.3, 0.3])["pearson_log"] is None  # constant measurement: r undefined


def test_validate_tiny_budget_records_skips_and_resumes(tmp_path, digits):
    targets = ["1", "2", "2_02", "0_00", "2_02_002"]  # 0_00: no input->output path
    kw = dict(data=digits, grid=GRID, seeds=[0, 1], budget=TINY, width=32, refine=False, out_dir=tmp_path,
              rules=["sum-cubed", "effective-depth"], conventions=["reference", "paper"], resolution=None,
              n_boot=200)
    rep = validate("mlp", "digits", targets, **kw)
    assert rep["rule"] == "sum-cubed" and rep["convention"] == "reference"
    assert [p["arch"] for p in rep["points"]] == ["2", "2_02", "2_02_002"]  # the proxy "1" is not fitted ...
    assert rep["proxy_targets"] == [{"arch": "1", "measured_lr": rep["base"]["lr"], "reason": rep["proxy_targets"][0][
        "reason"]}] and "left out of the fit" in rep["proxy_targets"][0]["reason"]  # ... but reported
    for p in rep["points"]:
        assert p["measured_lr"] in GRID
        lo, hi = p["measured_ci"]  # the seed bootstrap's CI holds the measured LR and lies on the evaluated grid
        assert lo <= p["measured_lr"] <= hi and lo in GRID and hi in GRID
    assert rep["distinct_measured"] == len({p["measured_lr"] for p in rep["points"]})
    # every comparison: the predictions are the transfer rule applied to the measured base LR, and the
    # statistics are those of the points (Pearson r and the least-squares line of the log LRs)
    for c in rep["comparisons"]:
        transfer = Transferer("mlp", rep["base"]["lr"], rule=c["rule"], convention=c["convention"])
        for p in c["points"]:
            assert p["predicted_lr"] == pytest.approx(transfer(parse_arch(p["arch"], "mlp")).lr, rel=1e-12)
        x = np.log([p["predicted_lr"] for p in c["points"]])
        y = np.log([p["measured_lr"] for p in c["points"]])
        assert c["n"] == 3
        if np.ptp(y) > 0:
            assert c["pearson_log"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
        slope, intercept = np.polyfit(x, y, 1)
        assert c["slope"] == pytest.approx(slope, abs=1e-9) and c["intercept"] == pytest.approx(intercept, abs=1e-9)
    assert rep["pearson_log"] == rep["comparisons"][0]["pearson_log"]
    # a measurement is the base-LR protocol on the target: the same search run on its own gives the same LR
    alone = find_max_lr(arch_factory(parse_arch("2_02", "mlp"), digits, width=32), digits, GRID, [0, 1], TINY)
    assert rep["points"][1]["measured_lr"] == alone.best_lr
    assert [s["arch"] for s in rep["skipped"]] == ["0_00"]
    assert "no input->output path" in rep["skipped"][0]["reason"]
    # four comparisons from one measurement per target (the proxy "1" is measured once, reused as a target)
    assert [(c["rule"], c["convention"]) for c in rep["comparisons"]] == [
        ("sum-cubed", "reference"), ("sum-cubed", "paper"), ("effective-depth", "reference"),
        ("effective-depth", "paper")]
    assert rep["runs_used"] == 4 * len(GRID) * 2
    for c in rep["comparisons"]:
        assert [p["measured_lr"] for p in c["points"]] == [p["measured_lr"] for p in rep["points"]]
    assert (tmp_path / "pred_vs_measured.png").stat().st_size > 1000 and rep["plot"].endswith(".png")
    lines = (tmp_path / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == 5  # base + 3 trained targets + the skipped one
    json.loads((tmp_path / "validate.json").read_text())
    json.dumps(rep, allow_nan=False)

    # an interrupted run loses nothing: a re-run with the same output dir measures only what is missing
    with open(tmp_path / "measurements.jsonl", "a") as fh:
        fh.write('{"key": "torn')  # a line torn by the interruption is ignored
    again = validate("mlp", "digits", targets + ["2_02_002_0002"], **kw)
    assert again["runs_used"] == len(GRID) * 2 and again["resumed"] == 6
    assert [p["measured_lr"] for p in again["points"][:3]] == [p["measured_lr"] for p in rep["points"]]


def test_divergence_is_recognised_by_its_type(digits):
    """Every LR diverging is a :class:`DivergedError` that validate records as a skip (here of the proxy, which
    then stops the run with that reason); any other error of a measurement propagates."""
    huge = [1e8, 1e9]
    with pytest.raises(DivergedError):
        find_max_lr(arch_factory(parse_arch("1", "mlp"), digits, width=32), digits, huge, [0], TINY)
    with pytest.raises(ConfigError, match=r"the proxy mlp:1 could not be measured: every learning rate of the grid "
                                          r"\[1e\+08, 1e\+09\] diverged"):
        validate("mlp", "digits", ["2"], data=digits, grid=huge, seeds=[0], budget=TINY, width=32, refine=False)
    with pytest.raises(ConfigError, match="width 0 must be an integer >= 1"):
        validate("mlp", "digits", ["2"], data=digits, grid=GRID, seeds=[0], budget=TINY, width=0, refine=False)


@pytest.mark.slow
def test_depth_sweep_on_digits_follows_the_transfer_rule(capsys, tmp_path):
    """The acceptance of the sum-cubed rule: ``ahps validate --family mlp --dataset digits --depths
    1,2,3,4,6,8`` (default grid refined to 1/24 decade, 3 seeds, the digits probe budget) gives r >= 0.95 between
    the log transferred and the log measured maximal LRs of the 5 targets deeper than the proxy (the proxy, depth
    1, is reported apart and left out of the fit), and deeper chains get smaller LRs."""
    code = main(["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2,3,4,6,8", "--device", "cpu",
                 "--out", str(tmp_path), "--json"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n"] == 5 and not rep["skipped"] and [t["arch"] for t in rep["proxy_targets"]] == ["1"]
    assert rep["pearson_log"] >= 0.95, rep["pearson_log"]
    assert rep["p_value"] < 0.05 and rep["pearson_ci"][0] > 0
    measured = [p["measured_lr"] for p in rep["points"]]
    assert measured[-1] < measured[0] < rep["base"]["lr"]


@pytest.mark.slow
def test_depth_sweep_on_digits_follows_the_effective_depth_law_in_wus_unit(capsys, tmp_path):
    """The acceptance of Wu's unit: ``ahps validate --family mlp --dataset digits --depths 1,2,3,4,6,8 --rule
    effective-depth --json`` compares in the rule's default unit ``wu`` (L = hidden layers + 1: every Linear layer)
    and reports a slope within 0.8-1.25 (measured 1.06: the maximal LR falls as L^-1.59 against the law's L^-1.5)."""
    code = main(["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2,3,4,6,8", "--rule",
                 "effective-depth", "--device", "cpu", "--out", str(tmp_path), "--json"])
    assert code == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["rule"], rep["convention"], rep["n"]) == ("effective-depth", "wu", 6) and not rep["skipped"]
    assert [p["effective_depth"] for p in rep["points"]] == [2, 3, 4, 5, 7, 9]
    assert 0.8 <= rep["slope"] <= 1.25, rep["slope"]
    assert rep["pearson_log"] >= 0.9, rep["pearson_log"]


def test_each_rule_is_compared_in_its_own_unit_by_default(tmp_path, digits):
    rep = validate("mlp", "digits", ["2", "2_02"], data=digits, grid=GRID, seeds=[0], budget=TINY, width=32,
                   refine=False, rules=["sum-cubed", "effective-depth"], out_dir=tmp_path, plot=False)
    assert [(c["rule"], c["convention"]) for c in rep["comparisons"]] == [("sum-cubed", "reference"),
                                                                         ("effective-depth", "wu")]
    wu = rep["comparisons"][1]
    assert [p["effective_depth"] for p in wu["points"]] == [3, 4]  # 2 and 3 hidden layers: 3 and 4 Linear layers
    base = rep["base"]["lr"]
    assert [p["predicted_lr"] for p in wu["points"]] == pytest.approx([base * (2 / 3) ** 1.5, base * (2 / 4) ** 1.5])


def test_validate_bad_inputs(digits):
    with pytest.raises(ConfigError, match="unknown rule 'cubic'"):
        validate("mlp", "digits", ["1"], data=digits, rules=["cubic"])
    with pytest.raises(ConfigError, match="unknown convention"):
        validate("mlp", "digits", ["1"], data=digits, conventions=["mine"])
    with pytest.raises(ConfigError, match="unknown family"):
        validate("transformer", "digits", ["1"], data=digits)
    with pytest.raises(ConfigError, match="no target"):
        validate("mlp", "digits", [], data=digits)

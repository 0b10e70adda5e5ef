"""Bring your own model: a family defined in a test module (``tests.user_family``, not built by ahps) validated end
to end, and ``find-lr`` / ``train`` on a user model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ahps.cli import main
from ahps_core.data import load_dataset
from ahps_core.lr_search import find_max_lr
from ahps_core.models.fx import extract_graph
from ahps_core.presets import ProbeBudget
from ahps_core.scaling import Transferer, depth_stats
from ahps_core.user_models import UserModels
from tests import user_family

TINY = ["--epochs", "1", "--max-steps", "10", "--batch-size", "32", "--device", "cpu", "--seeds", "2"]
GRID = "0.01,0.03,0.1,0.3,1,3"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_user_models_are_seeded_and_their_graph_comes_from_fx():
    models = UserModels("tests.user_family:make", proxy="depth1")
    a, b, c = models.build("depth3", 0), models.build("depth3", 0), models.build("depth3", 1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.inp.weight, c.inp.weight)  # another seed, other weights
    state = torch.random.get_rng_state()
    models.build("depth2", 5)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left as it was
    g = models.graph("depth3")
    assert g.family == "graph" and g.spec == "depth3" and depth_stats(g).max_depth == 5  # 4 Linear + 1
    assert models.proxy_graph().spec == "depth1"
    other = UserModels("tests.user_family:make", proxy="tests.user_family:make_proxy")
    assert extract_graph(other.build_proxy(0)).weight_kernels == {1} and other.proxy_graph().spec == \
        "tests.user_family:make_proxy"


def test_validate_a_user_family_end_to_end(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", "--model", "tests.user_family:make", "--proxy", "depth1", "--archs",
                       "depth2,depth3,depth5,res3,depth1", "--dataset", "digits", "--grid", GRID, *TINY,
                       "--resolution", "8", "--n-boot", "200", "--rule", "sum-cubed,effective-depth",
                       "--out", str(tmp_path), "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["model"] == "tests.user_family:make" and rep["family"] == "graph" and rep["init"] == "the model's own"
    assert rep["base"]["arch"] == "depth1" and [t["arch"] for t in rep["proxy_targets"]] == ["depth1"]
    assert [p["arch"] for p in rep["points"]] == ["depth2", "depth3", "depth5", "res3"]
    # predictions: the rules on the fx graphs of the user's networks, from the proxy's measured base LR
    models = UserModels("tests.user_family:make", proxy="depth1")
    for comp in rep["comparisons"]:
        transfer = Transferer("graph", rep["base"]["lr"], rule=comp["rule"], convention=comp["convention"],
                              base=models.proxy_graph())
        for p in comp["points"]:
            assert p["predicted_lr"] == pytest.approx(transfer(models.graph(p["arch"])).lr, rel=1e-12)
    sc = rep["comparisons"][0]
    assert sc["points"][0]["ratio"] == pytest.approx(math.sqrt(27 / 64))  # depth2: L = 4 vs the proxy's 3
    # measurements: the base-LR protocol on the user's own networks
    data = load_dataset("digits")
    budget = ProbeBudget(epochs=1, batch_size=32, max_steps_per_epoch=10, device="cpu")
    grid = [float(v) for v in GRID.split(",")]
    alone = find_max_lr(models.seeded("depth3"), data, grid, [0, 1], budget, refine=True, resolution=8)
    assert rep["points"][1]["measured_lr"] == alone.best_lr
    assert rep["n"] == 4 and rep["plot"] and (tmp_path / "validate.json").exists()
    lines = (tmp_path / "measurements.jsonl").read_text().splitlines()
    assert len(lines) == 5  # depth1 measured once, as the base


def test_find_lr_and_train_on_a_user_model(capsys, tmp_path):
    code, out, _ = run(capsys, "find-lr", "--model", "tests.user_family:make_proxy", "--dataset", "digits",
                       "--grid", GRID, *TINY, "--json")
    assert code == 0
    found = json.loads(out)
    assert found["model"] == "tests.user_family:make_proxy" and found["base_lr"] in [float(v) for v in GRID.split(",")]
    code, out, _ = run(capsys, "train", "--model", "tests.user_family:make", "--arch", "depth4", "--proxy", "depth1",
                       "--dataset", "digits", "--base-lr", str(found["base_lr"]), "--recipe", "reference",
                       "--epochs", "2", "--device", "cpu", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["status"] == "completed" and res["config"]["family"] == "graph" and res["config"]["arch"] == "depth4"
    assert res["transfer"]["lr"] == pytest.approx(found["base_lr"] * math.sqrt(27 / 216))  # L = 6 vs 3
    assert res["num_params"] == sum(p.numel() for p in user_family.make("depth4").parameters())
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"] and res["final"]["eval_acc"] > 0.1

"""``ahps find-lr``, ``ahps validate``, ``ahps train`` and ``ahps bench train`` as a user runs them."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from ahps.cli import main
from tests.conftest import ahps_cmd

TINY = ["--epochs", "1", "--max-steps", "8", "--width", "16", "--device", "cpu"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args,message", [
    (["find-lr", "--family", "rnn", "--dataset", "digits"], "unknown family 'rnn'"),
    (["find-lr", "--family", "mlp", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["find-lr", "--family", "mlp", "--dataset", "cifar10", "--data-root", "/no/such/dir"], "/no/such/dir"),
    (["find-lr", "--family", "mlp", "--dataset", "cifar10"], "needs root"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--grid", ""], "grid is empty"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--grid", "0.1,-2"], "-2.0 must be a finite number > 0"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--grid-min", "0"], "grid minimum 0.0"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--grid", "0.1", "--grid-points", "3"], "either --grid"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--seeds", "0"], "at least 1 seed"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1", "--sample", "4"], "exactly one of"),
    (["validate", "--dataset", "digits", "--depths", "1"], "missing --family"),
    (["validate", "--family", "mlp", "--model", "tests.user_family:make", "--dataset", "digits"], "not both"),
    (["validate", "--model", "tests.user_family:make", "--dataset", "digits", "--sample", "3"], "by name: --archs"),
    (["validate", "--model", "tests.user_family:make", "--dataset", "digits", "--archs", "depth2"], "--proxy NAME"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--archs", "2", "--proxy", "1"], "--proxy applies"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--sample", "3", "--sampling", "lhs"],
     "unknown sampling 'lhs'"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--arch", "2"], "--arch applies to --model"),
    (["find-lr", "--model", "tests.user_family:make_proxy", "--dataset", "digits", "--width", "8"],
     "--width 8 does not apply to --model"),
    (["find-lr", "--model", "tests.user_family:nope", "--dataset", "digits"], "has no attribute 'nope'"),
    (["train", "--model", "tests.user_family:make", "--arch", "wide3", "--dataset", "digits", "--lr", "0.1"],
     "calling make('wide3') failed: ValueError: unknown network 'wide3'"),
    (["train", "--model", "tests.user_family:make_proxy", "--arch", "depth2", "--dataset", "digits", "--lr", "0.1"],
     "takes no argument, so it cannot build the network 'depth2'"),
    (["train", "--model", "tests.user_family:make_wrong_classes", "--arch", "depth2", "--dataset", "digits",
      "--lr", "0.1"], "returns (2, 3) on digits inputs of shape (2, 1, 8, 8); expected logits of shape (2, 10)"),
    (["train", "--model", "tests.user_family:make_for_blobs", "--arch", "depth2", "--dataset", "digits",
      "--lr", "0.1"], "fails on digits inputs of shape (2, 1, 8, 8): RuntimeError: mat1 and mat2 shapes"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,a"], "comma-separated integers"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2", "--rule", "cubic"],
     "unknown rule 'cubic'"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0"], "learning rate 0.0"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "-1"], "learning rate -1.0"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits"], "exactly one of --lr"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--base-lr", "-0.5"],
     "base learning rate -0.5"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0.1", "--recipe", "adam"],
     "unknown recipe 'adam'"),
    # the split file reaches the loader (digits has none)
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0.1", "--split-file", "s.txt"],
     "dataset digits has no NB201 split file; split_file must not be given"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2", "--split-file", "s.txt"],
     "dataset digits has no NB201 split file; split_file must not be given"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0.1", "--cell", "full"],
     "cell 'full' applies to nb201 only"),
    (["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0.1", "--indegree", "some"],
     "unknown indegree 'some': accepted are all, live"),
])
def test_bad_input_is_one_clear_line(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err


def test_bad_input_through_the_real_entry_point():
    r = subprocess.run(ahps_cmd() + ["find-lr", "--family", "mlp", "--dataset", "cifar10", "--data-root", "/nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "/nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_find_lr_json_and_plot(capsys, tmp_path):
    png = tmp_path / "curve.png"
    code, out, _ = run(capsys, "find-lr", "--family", "mlp", "--dataset", "digits", "--grid-min", "0.01",
                       "--grid-max", "3", "--grid-points", "7", "--seeds", "2", "--no-refine", "--plot", str(png),
                       "--json", *TINY)
    assert code == 0
    rec = json.loads(out)
    assert rec["base_lr"] in rec["grid"] and len(rec["grid"]) == 7 and len(rec["curve"]) == 7
    assert all(len(p["losses"]) == 2 for p in rec["curve"]) and rec["runs_used"] == 14
    assert png.stat().st_size > 1000 and rec["plot"] == str(png)


def test_find_lr_table(capsys):
    code, out, _ = run(capsys, "find-lr", "--family", "mlp", "--dataset", "digits", "--grid", "0.05,0.2,0.8",
                       "--seeds", "1", *TINY)
    assert code == 0 and "<- base LR" in out and out.strip().splitlines()[-1].startswith("base LR ")


def test_validate_json(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2,3",
                       "--grid-min", "0.01", "--grid-max", "3", "--grid-points", "7", "--seeds", "1", "--no-refine",
                       "--rule", "sum-cubed,effective-depth", "--out", str(tmp_path), "--json", *TINY)
    assert code == 0
    rep = json.loads(out)
    assert {"pearson_log", "pearson_ci", "p_value", "slope", "slope_ci", "points"} <= set(rep)
    assert [p["arch"] for p in rep["points"]] == ["2", "2_02"]  # the proxy (depth 1) is reported, not fitted
    assert [t["arch"] for t in rep["proxy_targets"]] == ["1"] and rep["proxy_targets"][0]["measured_lr"] == \
        rep["base"]["lr"]
    assert len(rep["comparisons"]) == 2 and rep["plot"] and (tmp_path / "measurements.jsonl").exists()
    assert rep["resolution"]["points_per_decade"] == 24 and rep["distinct_measured"] in (1, 2)


def test_train_json_autoscaled_and_resume(capsys, tmp_path):
    args = ["train", "--family", "mlp", "--arch", "2_02", "--dataset", "digits", "--base-lr", "0.5",
            "--epochs", "2", "--max-steps", "4", "--width", "16", "--device", "cpu",
            "--checkpoint-dir", str(tmp_path), "--json"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    rec = json.loads(out)
    assert rec["status"] == "completed" and len(rec["history"]) == 2
    assert rec["config"]["lr"] == pytest.approx(0.5 * math.sqrt(27 / 125)) == rec["transfer"]["lr"]
    assert rec["config"]["momentum"] == 0.9 and rec["config"]["nesterov"] is True  # the nb201 recipe
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["history"] == rec["history"]


def test_train_with_a_fixed_lr_is_the_fixed_recipe(capsys):
    """``--lr X`` is the fixed recipe: PyTorch's default init (the family's fixed arm) unless --init says
    otherwise; ``--base-lr`` autoscales with the arch-aware init. The nb201 recipe trains in fp32 unless asked."""
    common = ["train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--epochs", "1", "--max-steps", "2",
              "--width", "8", "--device", "cpu", "--json"]
    for extra, init in ((["--lr", "0.1"], "default"), (["--lr", "0.1", "--init", "arch-aware"], "arch-aware"),
                        (["--base-lr", "0.1"], "arch-aware")):
        code, out, _ = run(capsys, *common, *extra)
        assert code == 0
        rec = json.loads(out)
        assert rec["config"]["init"] == init, extra
        assert (rec["config"]["amp"], rec["amp"]) == ("off", "off")  # --recipe nb201 (the default): fp32
    code, out, _ = run(capsys, *common, "--lr", "0.1", "--amp", "bf16")
    assert code == 0 and json.loads(out)["config"]["amp"] == "bf16"


def test_train_table(capsys):
    code, out, _ = run(capsys, "train", "--family", "mlp", "--arch", "2", "--dataset", "digits", "--lr", "0.1",
                       "--recipe", "probe", "--epochs", "2", "--max-steps", "3", "--width", "16", "--device", "cpu")
    assert code == 0 and "status completed" in out and len(out.strip().splitlines()) == 5


def test_bench_train_naive_dataset_and_smoke(capsys, tmp_path):
    from ahps_core.bench.train_bench import CIFAR10_MEAN, CIFAR10_STD, NaiveAugmentDataset, synthetic_cifar

    data = synthetic_cifar(8)
    ds = NaiveAugmentDataset(data.train.images, data.train.labels, data.mean, data.std)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and int(y) == int(data.train.labels[0])
    # pixel values are exactly a normalized crop of the zero-padded (optionally flipped) image
    lo = (0 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    hi = (1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    assert ((x >= lo.view(3, 1, 1) - 1e-6) & (x <= hi.view(3, 1, 1) + 1e-6)).all()

    out_json = tmp_path / "bench.json"
    code, out, _ = run(capsys, "bench", "train", "--arch", "mean", "--batch-size", "4", "--steps", "1",
                       "--warmup", "0", "--repeats", "1", "--device", "cpu", "--out", str(out_json))
    assert code == 0 and "ratio" in out
    rec = json.loads(out_json.read_text())
    row = rec["rows"][0]
    assert row["name"] == "mean" and row["naive_images_per_s"] > 0 and row["ours_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["ours_images_per_s"] / row["naive_images_per_s"])

"""`ahps paths` and `ahps lr` end to end, as a user runs them (subprocess: real exit codes and streams)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess

import pytest

from ahps_core.graph import NB201_OPS, nb201_arch_str
from tests.conftest import ahps_cmd


def ahps(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ahps_cmd() + list(args), input=stdin, capture_output=True, text=True, timeout=120)


def test_acceptance_e2c_and_e4():
    r = ahps("lr", "2_12_002_0012", "--family", "mlp", "--base-lr", "0.1", "--json")
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["lr"] == pytest.approx(0.1 * math.sqrt(27 / 620), rel=1e-15)
    assert rec["ratio"] == pytest.approx(math.sqrt(27 / 620), rel=1e-15)
    assert (rec["arch"], rec["num_paths"], rec["sum_l3"], rec["min_depth"], rec["max_depth"]) == (
        "2_12_002_0012", 4, 620, 3, 7)
    r = ahps("lr", "3_33_133", "--family", "nb201", "--base-lr", "0.46", "--json")
    assert json.loads(r.stdout)["lr"] == pytest.approx(0.46 * 119 ** -0.5, rel=1e-15)


def test_no_path_cell_is_one_clear_line():
    r = ahps("lr", "3_00_003", "--family", "nb201", "--base-lr", "0.46")
    assert r.returncode != 0 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "'3_00_003'" in lines[0] and "no input->output path" in lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["lr", "2_02", "--family", "rnn", "--base-lr", "0.1"], "'rnn' is not one of"),
    (["lr", "2_02", "--family", "mlp", "--base-lr", "0"], "base learning rate 0.0 must be a finite number > 0"),
    (["lr", "2_02", "--family", "mlp", "--base-lr", "abc"], "'abc' is not a valid float"),
    (["lr", "2_02", "--family", "mlp"], "Missing option '--base-lr'"),
    (["lr", "3_33_133", "--family", "nb201", "--base-lr", "0.1", "--kernel-size", "5"], "--kernel-size applies to cnn"),
    (["lr", "2_02", "--base-lr", "0.1"], "digit codes are ambiguous"),
    (["lr", "2_07", "--family", "mlp", "--base-lr", "0.1"], "unknown op '7'"),
    (["lr", "--base-lr", "0.1"], "missing ARCH"),
    (["lr", "2_02", "--family", "mlp", "--base-lr", "0.1", "--rule", "sqrt"], "'sqrt' is not one of"),
    (["lr", "3_33_133", "--family", "nb201", "--base", "2_02", "--base-lr", "0.1"], "cell code has 3 groups"),
    (["lr", "3_33_133", "--family", "nb201", "--base", "mlp:2_02", "--base-lr", "0.1"],
     "target family 'nb201' differs from the base's family 'mlp'"),
    (["paths", "2_02", "--family", "mlp", "--convention", "mine"], "'mine' is not one of"),
    (["paths", "/nonexistent/g.yaml"], "does not exist"),
    (["paths", "2_1_002", "--family", "mlp"], "group 2 ('1') has 1 digits, expected 2"),
])
def test_bad_input_is_a_message_not_a_traceback(args, message):
    r = ahps(*args)
    assert r.returncode not in (0, 3), r.stdout
    assert message in r.stderr and "Traceback" not in r.stderr


def test_human_output_is_a_table():
    r = ahps("paths", "2_12_002_0012", "--family", "mlp")
    assert r.returncode == 0
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip() and not line.startswith("sum"))
    assert rows["paths"].strip() == "4" and rows["family"].strip() == "mlp"
    r = ahps("lr", "-", "--family", "nb201", "--base-lr", "0.46", stdin="3_33_133\n1_01_001\n")
    header, *body = r.stdout.splitlines()
    assert header.split()[:3] == ["arch", "family", "paths"] and len(body) == 2


def all_specs() -> list[str]:
    dags = ["mlp:" + "_".join(("".join(d[0:1]), "".join(d[1:3]), "".join(d[3:6]), "".join(d[6:10])))
            for d in itertools.product("012", repeat=10)]
    cells = [nb201_arch_str([o[0:1], o[1:3], o[3:6]]) for o in itertools.product(NB201_OPS, repeat=6)]
    return dags + cells


def reaches_output(spec: str) -> bool:
    """Independent reachability on the raw spec text (no ahps code)."""
    if spec.startswith("mlp:"):
        groups = spec[4:].split("_")
        alive = [True] + [False] * len(groups)
        for dst, g in enumerate(groups, start=1):
            alive[dst] = any(c != "0" and alive[src] for src, c in enumerate(g))
        return alive[-1]
    groups = [[item.split("~")[0] for item in node.strip("|").split("|")] for node in spec.split("+")]
    alive = [True, False, False, False]
    for dst, g in enumerate(groups, start=1):
        alive[dst] = any(op != "none" and alive[src] for src, op in enumerate(g))
    return alive[-1]


def test_batch_of_every_dag_and_nb201_cell():
    specs = all_specs()
    assert len(specs) == 74_674
    r = ahps("lr", "-", "--base-lr", "0.1", "--json", stdin="\n".join(specs) + "\n")
    assert r.returncode == 3  # some lines have no input->output path
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["arch"] for o in out] == specs  # same order, one object per line
    errors = [o for o in out if "error" in o]
    assert {o["arch"] for o in errors} == {s for s in specs if not reaches_output(s)}
    assert all("no input->output path" in o["error"] for o in errors)
    assert f"{len(errors)} architecture(s) could not be computed" in r.stderr
    by_arch = {o["arch"]: o for o in out}
    assert by_arch["mlp:2_12_002_0012"]["sum_l3"] == 620
    assert by_arch["mlp:1_11_111_1111"]["sum_l3"] == 27  # the all-skip quirk, reference convention
    cell = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    assert by_arch[cell]["lr"] == pytest.approx(0.1 * 119 ** -0.5, rel=1e-15)


def test_cheap_commands_import_no_heavy_framework():
    code = (
        "import sys\n"
        "from ahps.cli import main\n"
        "assert main(['lr', '2_12_002_0012', '--family', 'mlp', '--base-lr', '0.1', '--json']) == 0\n"
        "assert main(['paths', '3_33_133', '--family', 'nb201', '--json']) == 0\n"
        "heavy = sorted(m for m in ('torch', 'kfp', 'mlflow', 'numpy', 'scipy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([__import__("sys").executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_bench_paths_reports_ratios_and_the_big_dag():
    r = ahps("bench", "paths", "--max-enum-seconds", "0.05", "--big-nodes", "300", "--repeat", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = out["growing"]
    assert len(rows) >= 3 and [row["nodes"] for row in rows] == sorted(row["nodes"] for row in rows)
    assert all(row["paths"] > 0 and row["dp_s"] > 0 and row["speedup"] == row["enum_s"] / row["dp_s"] for row in rows)
    assert rows[-1]["paths"] > rows[0]["paths"]  # exponential growth with size
    assert out["big"]["nodes"] == 300 and out["big"]["moments_s"] > 0

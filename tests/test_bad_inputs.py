"""The bad-input corpus: every attack and fault of the security review (code-running pickles, traversal, leaked
credentials, parser denial of service, unwritable paths, a full disk, absurd values), plus the bad inputs the other
test modules already check, run through the ``ahps`` command (in process, and a few through the real entry
point). For each case: no traceback, the documented exit code (2 for bad input, 1 for an operating-system error,
3 for a batch with failed lines), one ``error:`` line, no canary file created by planted code, and no secret in
the output."""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ahps.cli import main
from tests.conftest import REPO, ahps_cmd, free_port

SECRET = "S3cr3tPW"


class Exploit:
    """Unpickling it runs a shell command that creates the canary file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def check(code: int, out: str, err: str, *, exit_code: int = 2, says: str = "", canary: Path | None = None) -> str:
    """The corpus' assertions; returns the error line. A click usage error (``Usage: ...``, exit 2) keeps click's
    own three-line form; every other error is one ``error:`` line."""
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert code == exit_code, (code, text[-2000:])
    assert SECRET not in text
    if "Usage:" in err:
        assert says in err, err
        return err.strip().splitlines()[-1]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert len(lines[0]) < 2600, len(lines[0])
    assert says in lines[0], lines[0]
    assert SECRET not in text
    if canary is not None:
        assert not canary.exists(), "planted code ran"
    return lines[0]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


TRAIN_BASE = ["train", "--family", "mlp", "--arch", "2_02", "--dataset", "digits"]
TRAIN = [*TRAIN_BASE, "--lr", "0.1", "--epochs", "1", "--max-steps", "2", "--width", "8", "--device", "cpu"]


# --- 1. code execution from a checkpoint --------------------------------------------------------------------------


def test_planted_checkpoint_without_identity_is_never_opened(capsys, tmp_path):
    canary, ckpt = tmp_path / "CANARY", tmp_path / "ckpt"
    ckpt.mkdir()
    with open(ckpt / "checkpoint.pt", "wb") as fh:
        pickle.dump({"config_hash": "x", "model": Exploit(canary)}, fh)
    check(*run_cli(capsys, [*TRAIN, "--checkpoint-dir", str(ckpt)]), says="no identity file", canary=canary)


@pytest.mark.parametrize("force_unsafe", ["", "1"])
def test_planted_checkpoint_with_a_matching_identity_is_refused_unpickled(capsys, tmp_path, monkeypatch,
                                                                          force_unsafe):
    canary, ckpt = tmp_path / "CANARY", tmp_path / "ckpt"
    assert main([*TRAIN, "--epochs", "2", "--checkpoint-dir", str(ckpt)]) == 0  # a real checkpoint + sidecar
    capsys.readouterr()
    (ckpt / "result.json").unlink()
    identity = json.loads((ckpt / "checkpoint.json").read_text())
    torch.save({"config_hash": identity["config_hash"], "epoch": 2, "model": Exploit(canary)}, ckpt / "checkpoint.pt")
    if force_unsafe:  # torch honours it when weights_only is not passed: ahps always passes it
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    check(*run_cli(capsys, [*TRAIN, "--epochs", "2", "--checkpoint-dir", str(ckpt)]), says="cannot be read safely",
          canary=canary)


# --- 2. benchmark files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("force_unsafe", ["", "1"])
def test_malicious_nb201_pth_runs_no_code_whatever_the_environment(tmp_path, monkeypatch, force_unsafe):
    from ahps_core.benchmarks import open_benchmark
    from ahps_core.errors import BenchmarkError
    from tests.nb201_fixture import nb201_dict

    canary = tmp_path / "CANARY"
    data = nb201_dict((0,))
    data["total_archs"] = Exploit(canary)
    torch.save(data, tmp_path / "evil.pth")
    if force_unsafe:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(BenchmarkError, match="cannot load NAS-Bench-201 file") as err:
        open_benchmark(tmp_path / "evil.pth")
    assert "\n" not in str(err.value)
    assert not canary.exists()


# --- 3. path traversal ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["s3://bucket/../../../../x", "s3://bucket/a/./b", "s3://../x", "s3://bucket/a\\..\\x"])
def test_s3_traversal_is_refused_before_anything_is_fetched(capsys, tmp_path, monkeypatch, uri):
    monkeypatch.setenv("AHPS_DATA_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--family", "mlp", "--arch", "2_02", "--dataset", "cifar10", "--data-root", uri, "--lr", "0.1"]
    check(*run_cli(capsys, argv), says="bad S3 URI")
    assert not (tmp_path / "x").exists() and not (tmp_path / "cache").exists()


# --- 4. credentials ---------------------------------------------------------------------------------------------


def test_tracking_uri_password_is_never_printed(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AHPS_TRACKING_TIMEOUT_S", "1")
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    line = check(*run_cli(capsys, ["run", "--tracking-uri", uri, "-p", "targets=2_02"]), says="cannot be reached")
    assert "user:***@127.0.0.1" in line


@pytest.mark.parametrize("param", [f"tracking_uri=http://user:{SECRET}@mlflow:5000",
                                   f"s3_endpoint=https://minio:9000/?X-Amz-Signature={SECRET}",
                                   f"data_source=https://u:{SECRET}@host/data"])
def test_compile_refuses_credentials_in_parameters(capsys, tmp_path, param):
    out = tmp_path / "t.yaml"
    line = check(*run_cli(capsys, ["compile", "transfer", "-p", param, "-o", str(out)]), says="holds a credential")
    assert "mlflow_secret" in line and "ahps-mlflow-auth" in line
    assert not out.exists()


def test_credentials_go_only_to_allowed_tracking_hosts(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ahps")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.setenv("AHPS_ALLOWED_TRACKING_HOSTS", "ahps-mlflow.ml.svc.cluster.local:5000")
    line = check(*run_cli(capsys, ["run", "--tracking-uri", "http://collector.example.org:8080", "-p",
                                   "targets=2_02"]), says="refusing to send MLflow credentials to")
    assert "collector.example.org:8080" in line and "ahps-policy" in line
    monkeypatch.setenv("AHPS_ALLOWED_TRACKING_HOSTS", "")  # present but empty: nobody may receive them
    check(*run_cli(capsys, ["run", "--tracking-uri", "http://ahps-mlflow.ml.svc.cluster.local:5000", "-p",
                            "targets=2_02"]), says="refusing to send MLflow credentials")


# --- 7. parser denial of service --------------------------------------------------------------------------------


def test_device_files_and_fifos_are_refused_at_once(tmp_path):
    fifo = tmp_path / "net.yaml"
    os.mkfifo(fifo)
    for spec in ("/dev/zero", str(fifo)):
        t0 = time.monotonic()
        r = subprocess.run([*ahps_cmd(), "lr", spec, "--base-lr", "0.1"], capture_output=True, text=True, env=env(),
                           timeout=60)
        check(r.returncode, r.stdout, r.stderr, says="not a regular file")
        assert time.monotonic() - t0 < 30


def test_graph_file_size_limit(capsys, tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text("edges:\n" + "".join(f" - {{from: n{i}, to: n{i + 1}}}\n" for i in range(200)))
    monkeypatch.setenv("AHPS_MAX_GRAPH_BYTES", "1000")
    check(*run_cli(capsys, ["paths", str(path)]), says="more than the limit of 1000")


@pytest.mark.parametrize("text, says", [
    ("nodes: 5\nedges:\n - {from: a, to: b}\n", "'nodes' must be a list"),
    ("edges:\n - {from: [a, b], to: c}\n", "is not a node name"),
    ("edges: [\n", "not valid YAML"),
    ("edges:\n - {from: a, to: b, op: !!python/object/apply:os.system [touch CANARY]}\n", "not valid YAML"),
    ("[" * 100_000 + "]" * 100_000, "nested"),
    ("edges:\n - {from: a, to: b, kernel: [[[[1]]]]}\n", "expected a positive integer"),
])
def test_malformed_graph_files_are_one_line(capsys, tmp_path, monkeypatch, text, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.yaml").write_text(text)
    check(*run_cli(capsys, ["lr", "g.yaml", "--base-lr", "0.1"]), says=says, canary=tmp_path / "CANARY")


def test_a_bad_graph_file_in_a_batch_is_one_json_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("edges: [\n  {from: a\n")
    (tmp_path / "n5.yaml").write_text("nodes: 5\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("bad.yaml\nmlp:2_02\nn5.yaml\n"))
    code = main(["lr", "-", "--base-lr", "0.1", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 3 and len(out) == 3  # one line per spec: the batch went on
    errors = [json.loads(line) for line in out if "error" in json.loads(line)]
    assert [e["arch"] for e in errors] == ["bad.yaml", "n5.yaml"]
    assert all("\n" not in e["error"] for e in errors)


def test_a_200k_node_chain_parses_in_linear_time(tmp_path):
    path = tmp_path / "chain.yaml"
    n = 200_000
    with open(path, "w") as fh:
        fh.write("edges:\n")
        fh.writelines(f" - {{from: n{i}, to: n{i + 1}, op: weight}}\n" for i in range(n - 1))
    t0 = time.monotonic()
    r = subprocess.run([*ahps_cmd(), "paths", str(path), "--json"], capture_output=True, text=True, env=env(),
                       timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["max_depth"] >= n - 1
    print(f"200,000-node chain: {elapsed:.1f} s")
    assert elapsed < 20  # quadratic parsing did not finish in 4 minutes


def test_deeply_nested_parameters_are_one_bounded_line(capsys):
    check(*run_cli(capsys, ["run", "-p", "targets=" + "[" * 50_000 + "]" * 50_000]), says="nested too deeply")
    check(*run_cli(capsys, ["compile", "-p", "targets=" + "[" * 50_000 + "]" * 50_000]), says="nested too deeply")


# --- 8. tracebacks where one line is promised ---------------------------------------------------------------------


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path that no user (root included) can create: its parent is a regular file."""
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "sub"


@pytest.mark.parametrize("argv, says", [
    ([*TRAIN, "--checkpoint-dir", "{p}"], "--checkpoint-dir"),
    (["find-lr", "--family", "mlp", "--dataset", "digits", "--grid", "0.1", "--seeds", "1", "--plot", "{p}/x.png"],
     "--plot directory"),
    (["validate", "--family", "mlp", "--dataset", "digits", "--depths", "1,2", "--out", "{p}"], "--out"),
    (["run", "-p", "targets=2_02", "--output-dir", "{p}"], "--output-dir"),
    (["compile", "-o", "{p}/t.yaml"], "does not exist"),
])
def test_unwritable_outputs_are_refused_before_any_work(capsys, blocked, argv, says):
    t0 = time.monotonic()
    check(*run_cli(capsys, [a.replace("{p}", str(blocked)) for a in argv]), says=says)
    assert time.monotonic() - t0 < 60


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path):
    ckpt = tmp_path / "ckpt"
    r = subprocess.run([*ahps_cmd(), *TRAIN, "--width", "64", "--checkpoint-dir", str(ckpt)], capture_output=True,
                       text=True, env=env(), timeout=300, preexec_fn=_limit_file_size(16 * 1024))
    check(r.returncode, r.stdout, r.stderr, says="cannot write the checkpoint")
    assert not list(ckpt.glob("*.tmp"))


@pytest.mark.parametrize("argv, says", [
    ([*TRAIN_BASE, "--lr", "1e300"], "too large"),
    ([*TRAIN_BASE, "--base-lr", "1e300"], "too large"),
    (["compile", "--image", "evil\nimage: x", "-o", "x.yaml"], "is not an image reference"),
    (["compile", "--image", "registry.example.org/ahps:0.1 --privileged", "-o", "x.yaml"], "is not an image"),
])
def test_absurd_values_are_one_line(capsys, tmp_path, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    check(*run_cli(capsys, argv), says=says)
    assert not (tmp_path / "x.yaml").exists()


def test_cifar_batch_with_string_labels_is_a_data_error(tmp_path):
    from ahps_core.data import load_dataset
    from ahps_core.data.checksums import md5_bytes
    from ahps_core.data.synthetic import py2_pickle, write_cifar_like
    from ahps_core.errors import DataError

    sums = write_cifar_like(tmp_path, 10, 2)
    name = "cifar-10-batches-py/data_batch_1"
    entry = pickle.loads((tmp_path / name).read_bytes(), encoding="bytes")
    entry[b"labels"] = [f"cat{i}" for i in entry[b"labels"]]
    blob = py2_pickle(entry)
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(DataError, match="expected a list of integer labels"):
        load_dataset("cifar10", str(tmp_path), checksums={**sums, name: md5_bytes(blob)})


# --- 9. wrong output ----------------------------------------------------------------------------------------------


def test_validate_reports_a_bad_spec_before_any_search(capsys, tmp_path):
    t0 = time.monotonic()
    check(*run_cli(capsys, ["validate", "--family", "mlp", "--dataset", "digits", "--archs", "2_02,zz", "--out",
                            str(tmp_path / "v")]), says="architecture 'zz'")
    assert not (tmp_path / "v" / "measurements.jsonl").exists()  # nothing was measured
    assert time.monotonic() - t0 < 60


# --- the bad inputs other modules check, through the same assertions ------------------------------------------------


def _cases(module: str, test: str) -> list:
    import importlib

    fn = getattr(importlib.import_module(module), test)
    mark = next(m for m in fn.pytestmark if m.name == "parametrize")
    return [tuple(c.values) if hasattr(c, "values") else tuple(c) for c in mark.args[1]]


@pytest.mark.parametrize("argv, says", _cases("tests.test_cli_train", "test_bad_input_is_one_clear_line")
                         + _cases("tests.test_cli_scaling", "test_bad_input_is_a_message_not_a_traceback"))
def test_known_bad_inputs(capsys, argv, says):
    check(*run_cli(capsys, list(argv)), says=says)


@pytest.mark.parametrize("argv, says", _cases("tests.test_pipeline_local", "test_bad_parameters_are_one_line"))
def test_known_bad_pipeline_parameters(capsys, tmp_path, monkeypatch, argv, says):
    monkeypatch.chdir(tmp_path)
    check(*run_cli(capsys, ["run", *argv]), says=says.removeprefix("error: "))
    assert not (tmp_path / "ahps_outputs").exists()


def test_through_the_real_entry_point(tmp_path):
    """A few of the cases above through ``python -m ahps.cli``, exit codes as documented."""
    (tmp_path / "file").write_text("")
    cases = [
        (["lr", "/dev/zero", "--base-lr", "0.1"], 2, "not a regular file"),
        (["compile", "-p", f"tracking_uri=http://u:{SECRET}@h:5000", "-o", str(tmp_path / "t.yaml")], 2, "credential"),
        ([*TRAIN_BASE, "--lr", "1e300"], 2, "too large"),
    ]
    for argv, code, says in cases:
        r = subprocess.run([*ahps_cmd(), *argv], capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=120)
        check(r.returncode, r.stdout, r.stderr, exit_code=code, says=says)

"""Every command of the README's ```bash blocks, run as written where it can run here (issue 15).

Each command is classified by the first matching prefix of :data:`RULES`, explicitly: ``skip`` (with why it cannot
run here: a cluster, a KFP host, S3, a GPU-sized dataset, docker, helm), ``fast`` (run in the default test run) or
``slow`` (run with ``-m slow``, with :data:`SMALL` settings appended where the documented one takes minutes). A README
command no rule matches fails :func:`test_every_readme_command_is_classified`, so a new command must be placed here.
The fast test also checks, for every ``ahps`` command (skipped ones included), that its subcommand exists and that
every ``--option`` it uses is one the subcommand accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, ahps_cmd

#: (prefix, kind, reason or None): the first rule whose prefix starts the command applies.
RULES: list[tuple[str, str, str]] = [
    ("make run", "skip", "`ahps run` with the defaults: tests/test_pipeline_local.py's slow default-run test"),
    ("make test", "skip", "this test suite itself"),
    (". .venv/bin/activate", "skip", "changes the calling shell; these tests call this interpreter's ahps"),
    ("ahps run --list-params", "fast", ""),
    ("ahps run -p targets=2_02,2_22_222", "skip", "--tracking-uri http://mlflow:5000: an MLflow server by that name"),
    ("ahps run reevaluate", "slow", ""),
    ("ahps compile transfer", "fast", ""),
    ("ahps submit", "skip", "needs a Kubeflow Pipelines host"),
    ("ahps schedule", "skip", "needs a Kubeflow Pipelines host"),
    ("ahps find-lr --family mlp --dataset digits", "slow", ""),
    ("ahps validate --family mlp --dataset digits", "slow", ""),
    ("ahps train --family nb201", "skip", "CIFAR from s3://data: S3 and a GPU-sized dataset"),
    ("NS=", "skip", "cluster: a Kubernetes namespace"),
    ("read ", "skip", "cluster: reads a secret from the terminal"),
    ("kubectl", "skip", "cluster: kubectl"),
    ("export KF_PIPELINES_SA_TOKEN_PATH", "skip", "cluster: a KFP token"),
    ("docker", "skip", "docker and a registry"),
    ("helm", "skip", "helm and a cluster (the chart's rendering is tested in tests/test_chart*.py)"),
]

#: Settings appended to a slow command so it ends in about a minute (click keeps the last value of an option).
SMALL: dict[str, list[str]] = {
    "ahps validate": ["--seeds", "1", "--epochs", "1", "--max-steps", "8", "--no-refine", "--grid-points", "6",
                      "--no-plot"],
    "ahps find-lr": ["--seeds", "1", "--epochs", "1", "--max-steps", "8"],
}


def readme_commands() -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments and blank lines dropped."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = re.sub(r"\s+#.*$", "", cmd).strip()
            cmd = re.sub(r"\s+", " ", cmd)
            if cmd and not cmd.startswith("#"):
                commands.append(cmd)
    return commands


def rule_of(cmd: str) -> tuple[str, str, str] | None:
    return next((r for r in RULES if cmd.startswith(r[0])), None)


def by_kind(kind: str) -> list[str]:
    return [c for c in readme_commands() if (rule_of(c) or ("", "", ""))[1] == kind]


def _argv(cmd: str) -> list[str]:
    """The argv of a README ``ahps`` command: optional ``[...]`` parts included, ``...`` (more of the same) dropped,
    run with this interpreter."""
    words = [w for w in shlex.split(cmd.replace("[", "").replace("]", "")) if w != "..."]
    assert words[0] == "ahps", cmd
    return [*ahps_cmd(), *words[1:]]


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_every_readme_command_is_classified():
    commands = readme_commands()
    assert len(commands) > 20 and any(c.startswith("ahps run") for c in commands)
    unlisted = [c for c in commands if rule_of(c) is None]
    assert not unlisted, f"README commands no rule of tests/test_readme.py covers: {unlisted}"
    unused = [r[0] for r in RULES if not any(c.startswith(r[0]) for c in commands)]
    assert not unused, f"rules matching no README command (the README changed?): {unused}"
    assert by_kind("fast") and by_kind("slow")


def test_readme_ahps_commands_and_their_options_exist(tmp_path):
    """Every ``ahps`` command of the README (runnable or not): ``ahps SUB --help`` works and lists every option it
    uses."""
    helps: dict[tuple[str, ...], str] = {}
    for cmd in readme_commands():
        if not cmd.startswith("ahps "):
            continue
        words = shlex.split(cmd.replace("[", "").replace("]", ""))
        sub = tuple(words[1:3]) if words[1] == "bench" else (words[1],)
        if sub not in helps:
            r = _run([*ahps_cmd(), *sub, "--help"], tmp_path, 120)
            assert r.returncode == 0, f"`ahps {' '.join(sub)} --help`: {r.stderr[-2000:]}"
            helps[sub] = r.stdout
        for opt in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"{re.escape(opt)}\b", helps[sub]), f"README `{cmd}`: {opt} is not an option"


@pytest.mark.parametrize("cmd", by_kind("fast"))
def test_readme_fast_command_runs(cmd, tmp_path):
    r = _run(_argv(cmd), tmp_path, 300)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}: {r.stderr[-3000:]}"
    if cmd.startswith("ahps compile transfer -o transfer.yaml"):
        assert (tmp_path / "transfer.yaml").stat().st_size > 0
    if cmd.startswith("ahps run --list-params"):
        assert "targets = " in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("cmd", by_kind("slow"))
def test_readme_slow_command_runs(cmd, tmp_path):
    extra = next((v for k, v in SMALL.items() if cmd.startswith(k)), [])
    r = _run(_argv(cmd) + extra, tmp_path, 900)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}: {r.stderr[-3000:]}"
    if "--json" in cmd:
        import json

        json.loads(r.stdout)  # --json: stdout is the JSON document only

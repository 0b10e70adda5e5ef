"""Static checks of the Dockerfile (no Docker engine here): it builds this repository, on a PyTorch base
whose torch matches our pin, into a non-root runtime without build tools."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "cpp")


# --------------------------------------------------------------------------------------------- parser


@dataclass
class Instruction:
    cmd: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comments and blank lines, as Docker does."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        cmd, _, rest = line.partition(" ")
        cmd, rest = cmd.upper(), rest.strip()
        if cmd == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = _expand(default, global_args)
        elif cmd == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_expand(words[0], global_args), name))
        else:
            assert stages, f"{cmd} before the first FROM"
            stages[-1].instructions.append(Instruction(cmd, rest))
    return Dockerfile(global_args, stages)


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def arg_defaults(stage: Stage) -> dict[str, str]:
    out = {}
    for ins in stage.all("ARG"):
        name, sep, default = ins.args.partition("=")
        if sep:
            out[name] = default
    return out


def copy_sources(stage: Stage) -> list[str]:
    """Sources of COPY instructions that read from the build context (not --from=stage)."""
    sources = []
    for ins in stage.all("COPY"):
        words = shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        if words[0].startswith("["):
            words = json.loads(ins.args[ins.args.index("["):])
        sources.extend(words[:-1])
    return sources


def runtime_problems(df: Dockerfile) -> list[str]:
    """What is wrong with the final stage: runs as root, installs build tools, reinstalls torch."""
    problems = []
    users = df.final.all("USER")
    if not users:
        problems.append("final stage has no USER")
    else:
        user = users[-1].args.split(":")[0]
        if user in ("root", "0") or not user.isdigit():
            problems.append(f"final stage runs as {user!r}: use a numeric non-root uid")
    for ins in df.final.all("RUN"):
        for m in re.finditer(r"(?:apt-get|apt|apk|yum|dnf)\s+(?:-\S+\s+)*(?:install|add)\s+([^&;|]*)", ins.args):
            pkgs = set(m.group(1).split())
            bad = pkgs & set(BUILD_TOOLS)
            if bad:
                problems.append(f"final stage installs build tools {sorted(bad)}")
        if re.search(r"pip install[^&;]*\btorch(==|>=|\s|\"|$)", ins.args):
            problems.append("final stage reinstalls torch")
    return problems


@pytest.fixture(scope="module")
def df() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin(requirements: list[str]) -> str:
    (pin,) = [r for r in requirements if re.match(r"torch\s*==", r)]
    return pin.split("==")[1].strip()


# --------------------------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[tuple[bool, str]]:
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            neg = line.startswith("!")
            out.append((neg, line.lstrip("!").rstrip("/")))
    return out


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; a pattern matching a directory
    matches everything below it."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for neg, pat in dockerignore_patterns():
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            included = neg
    return included


def test_dockerignore_matcher():
    assert in_build_context("pyproject.toml")
    assert in_build_context("ahps/cli/__init__.py")
    assert not in_build_context(".venv/bin/python")
    assert not in_build_context(".git/HEAD")
    assert not in_build_context("tests/test_chart.py")
    assert not in_build_context("ahps_core/__pycache__/x.cpython-311.pyc")


# --------------------------------------------------------------------------------------------- tests


def test_parser_handles_stages_args_and_continuations(df):
    assert [s.name for s in df.stages] == ["builder", "runtime"]
    assert df.global_args["TORCH_VERSION"]
    assert all("${" not in s.image for s in df.stages)


def test_every_copy_source_exists_and_is_in_the_build_context(df):
    sources = [src for stage in df.stages for src in copy_sources(stage)]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY source {src} does not exist in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*")
                                               if p.is_file() and "__pycache__" not in p.parts]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert in_build_context(rel), f"{rel} is copied but excluded by .dockerignore"


def test_builder_builds_the_wheel_of_this_repository(df, pyproject):
    builder = df.stage("builder")
    copied = set(copy_sources(builder))
    assert "pyproject.toml" in copied
    readme = pyproject["project"].get("readme")
    if readme:
        assert readme in copied, "pyproject's readme must be in the build (setuptools reads it)"
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} is not copied into the builder"
    (run,) = builder.all("RUN")
    assert re.search(r"pip wheel .*--no-deps .*--wheel-dir /wheels \.$", run.args), run.args
    name = re.sub(r"[-_.]+", "_", pyproject["project"]["name"]).lower()
    assert name == "ahps"
    runtime_runs = " ".join(i.args for i in df.final.all("RUN"))
    assert f"/tmp/wheels/{name}-*.whl" in runtime_runs
    assert any(i.args.startswith("--from=builder /wheels") for i in df.final.all("COPY"))


def test_base_image_torch_matches_the_pin(df, pyproject):
    pin = torch_pin(pyproject["project"]["dependencies"])
    constraints = (ROOT / "constraints.txt").read_text().split()
    assert torch_pin(constraints) == pin
    assert df.global_args["TORCH_VERSION"] == pin
    for stage in df.stages:
        m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", stage.image)
        assert m, f"unexpected base image {stage.image}"
        assert m.group(1) == pin


def test_torchvision_matches_torch(df, pyproject):
    major, minor, _ = torch_pin(pyproject["project"]["dependencies"]).split(".")
    tv = arg_defaults(df.final)["TORCHVISION_VERSION"]
    assert major == "2" and tv.startswith(f"0.{int(minor) + 15}."), (tv, minor)
    run = " ".join(i.args for i in df.final.all("RUN"))
    assert '--no-deps' in run.split("torchvision==")[0], "torchvision must be installed with --no-deps"


def test_runtime_installs_with_the_project_constraints(df):
    constraints = (ROOT / "constraints.txt").read_text().split()
    for pin in ("kfp==2.17.0", "kfp-kubernetes==2.17.0", "mlflow==3.17.2"):
        assert pin in constraints
    run = " ".join(i.args for i in df.final.all("RUN"))
    assert "--constraint /tmp/constraints.txt" in run
    assert "constraints.txt" in copy_sources(df.final)
    # The build fails if the wheel install replaced the CUDA torch of the base.
    assert "torch.version.cuda" in run


def test_final_stage_is_non_root_without_build_tools(df):
    assert runtime_problems(df) == []
    assert df.final.all("USER")[-1].args == "1000:1000"


@pytest.mark.parametrize("bad, problem", [
    ("FROM python:3.11\nRUN pip install x\n", "no USER"),
    ("FROM python:3.11\nUSER root\n", "runs as 'root'"),
    ("FROM python:3.11\nUSER ahps\n", "numeric non-root uid"),
    ("FROM python:3.11\nRUN apt-get update && apt-get install -y --no-install-recommends \\\n gcc git\nUSER 1000\n",
     "build tools ['gcc']"),
    ("FROM python:3.11\nRUN apt-get install -y build-essential\nUSER 1000\n", "build-essential"),
    ("FROM python:3.11\nRUN pip install torch==2.13.0\nUSER 1000\n", "reinstalls torch"),
])
def test_runtime_checks_catch_bad_dockerfiles(bad, problem):
    problems = runtime_problems(parse_dockerfile(bad))
    assert any(problem in p for p in problems), problems


def test_runtime_environment(df):
    env = env_of(df.final)
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/home/ahps"
    # The chart mounts an emptyDir at /home/ahps/.cache (read-only root filesystem).
    for key in ("AHPS_CACHE_DIR", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME"):
        assert env[key].startswith("/home/ahps/.cache"), key
    run = " ".join(i.args for i in df.final.all("RUN"))
    assert "useradd --uid 1000 --gid 1000" in run and "chown -R 1000:1000 /home/ahps" in run


def test_command_is_overridable(df):
    assert not df.final.all("ENTRYPOINT"), "KFP and the chart set the command; no ENTRYPOINT"
    (cmd,) = df.final.all("CMD")
    assert json.loads(cmd.args) == ["ahps", "--help"]


def test_image_chart_and_package_versions_agree(df, pyproject):
    version = pyproject["project"]["version"]
    chart = yaml.safe_load((ROOT / "charts" / "ahps" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version  # the chart's default image tag
    label = next(i.args for i in df.final.all("LABEL") if "org.opencontainers.image.version" in i.args)
    assert f'org.opencontainers.image.version="{version}"' in label

"""Import hygiene: no torchvision on the CPU path; science modules pull in neither mlflow nor kfp; the cheap
commands (``ahps lr``, ``ahps paths``) never import torch.

A forbidden package is replaced by a stub package first on ``sys.path`` whose ``__init__`` records that it was
imported (a marker file) and then raises. The marker catches an import even where the importer swallows the
error; the raise makes the import fail loudly. Each check first proves that its stub is the one Python finds.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import ahps_core
from tests.conftest import REPO

SCIENCE = [
    "ahps_core.graph", "ahps_core.specs", "ahps_core.paths", "ahps_core.scaling", "ahps_core.models",
    "ahps_core.models.fx", "ahps_core.init", "ahps_core.data", "ahps_core.runtime", "ahps_core.checkpoint",
    "ahps_core.presets", "ahps_core.train", "ahps_core.probe", "ahps_core.lr_search", "ahps_core.validate",
    "ahps_core.benchmarks", "ahps_core.sampling", "ahps_core.ranking", "ahps_core.plots", "ahps_core.protocol",
    "ahps_core.nb201_graph", "ahps_core.data.splits",
    "ahps_core.lr_refine", "ahps_core.validate_stats", "ahps_core.validate_explain", "ahps_core.coord_check",
    "ahps_core.user_models", "ahps_core.refs", "ahps_core.data.custom", "ahps_core.steps.validation",
    # plain-Python steps and reports: they reach MLflow only through ahps_core.tracking, when a step runs
    "ahps_core.steps.common", "ahps_core.steps.base_lr", "ahps_core.steps.training", "ahps_core.steps.transfer",
    "ahps_core.steps.reevaluate", "ahps_core.steps.params", "ahps_core.reports",
]


def _stub(root: Path, package: str) -> Path:
    """A package ``package`` under ``root`` whose import writes ``root/<package>.imported`` and raises."""
    marker = root / f"{package}.imported"
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        f"raise RuntimeError('{package} must not be imported here')\n"
    )
    return marker


def _run(code: str, stubs: Path | None = None, *args: str) -> subprocess.CompletedProcess:
    """``code`` (or, with ``args``, the ``ahps`` entry point) in a fresh interpreter, ``stubs`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (stubs, REPO) if p is not None])
    command = [sys.executable, "-m", "ahps.cli", *args] if args else [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _check_stub_is_found(stubs: Path, package: str, marker: Path) -> None:
    r = _run(f"import {package}", stubs)
    assert r.returncode != 0 and f"{package} must not be imported here" in r.stderr, r.stderr
    assert marker.exists()
    marker.unlink()


def test_every_module_imports_without_torchvision(tmp_path):
    marker = _stub(tmp_path, "torchvision")
    _check_stub_is_found(tmp_path, "torchvision", marker)
    modules = [m.name for m in pkgutil.walk_packages(ahps_core.__path__, "ahps_core.")
               if not m.name.endswith("__main__")]
    import ahps

    modules += [m.name for m in pkgutil.walk_packages(ahps.__path__, "ahps.") if not m.name.endswith("__main__")]
    modules += ["components", "components.ops", "components.outputs", "pipelines", "pipelines.cluster",
                "pipelines.transfer", "pipelines.reevaluate"]
    assert len(modules) > 30
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'torchvision' not in sys.modules\n"
    )
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "a module imported torchvision (and swallowed the error)"


def test_science_modules_import_no_tracking_or_orchestration(tmp_path):
    markers = {name: _stub(tmp_path, name) for name in ("mlflow", "kfp", "torchvision")}
    for name, marker in markers.items():
        _check_stub_is_found(tmp_path, name, marker)
    code = (
        "import importlib, sys\n"
        f"for name in {SCIENCE!r}:\n"
        "    importlib.import_module(name)\n"
    )
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [name for name, marker in markers.items() if marker.exists()]


def test_ahps_lr_and_paths_do_not_import_torch(tmp_path):
    marker = _stub(tmp_path, "torch")
    _check_stub_is_found(tmp_path, "torch", marker)
    lr = _run("", tmp_path, "lr", "3_33_133", "--family", "nb201", "--base-lr", "0.46", "--json")
    assert lr.returncode == 0, lr.stderr
    assert '"lr": 0.04216813086329772' in lr.stdout  # 0.46 / sqrt(119), docs/worked-examples.md E4
    paths = _run("", tmp_path, "paths", "2_12_002_0012", "--family", "mlp", "--json")
    assert paths.returncode == 0, paths.stderr
    assert '"sum_l3": 620' in paths.stdout
    wu = _run("", tmp_path, "lr", "3_33_333", "--family", "nb201", "--base-lr", "0.46", "--rule", "effective-depth",
              "--json")  # Wu's unit: the whole macro network, composed without torch
    assert wu.returncode == 0, wu.stderr
    assert '"convention": "wu"' in wu.stdout and '"effective_depth": 36' in wu.stdout
    assert not marker.exists(), "ahps lr / ahps paths imported torch"

"""Import hygiene: no torchvision on the CPU path; science modules pull in neither mlflow nor kfp."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ahps_core

SCIENCE = [
    "ahps_core.graph", "ahps_core.paths", "ahps_core.scaling", "ahps_core.models", "ahps_core.models.fx",
    "ahps_core.init", "ahps_core.data", "ahps_core.train", "ahps_core.lr_search", "ahps_core.validate",
    "ahps_core.benchmarks", "ahps_core.sampling", "ahps_core.ranking", "ahps_core.plots",
]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)


def test_every_module_imports_without_torchvision():
    modules = [m.name for m in pkgutil.walk_packages(ahps_core.__path__, "ahps_core.") if not m.name.endswith("__main__")]
    modules += ["components", "components.ops", "pipelines", "pipelines.transfer", "pipelines.reevaluate"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'torchvision' not in sys.modules\n"
        "print(len(sys.modules))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert len(modules) > 30


def test_science_modules_import_no_tracking_or_orchestration():
    code = (
        "import importlib, sys\n"
        f"for name in {SCIENCE!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in ('mlflow', 'kfp', 'torchvision') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr

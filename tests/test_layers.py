"""The layers' imports point one way (README "Architecture"): ``ahps`` (CLI, orchestration) -> ``pipelines`` ->
``components`` -> ``ahps_core``. Read from the source with ``ast`` (module-level and function-level imports alike),
so a lazy import inside a function cannot hide an arrow pointing back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "ahps_core": set(),
    "components": {"ahps_core"},
    "pipelines": {"ahps_core", "components"},
    "ahps": {"ahps_core", "components", "pipelines"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert len(files) >= 3, f"no modules found under {package}/"
    wrong = {f"{f.relative_to(REPO)} imports {other}" for f in files
             for other in imported_packages(f) - ALLOWED[package] - {package}}
    assert not wrong, sorted(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipelines import get_pipeline\n    import ahps.cli\n")
    assert imported_packages(bad) == {"pipelines", "ahps"}

"""Shared test set-up: quiet, offline, deterministic."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"


def ahps_cmd() -> list[str]:
    """The ``ahps`` command, run with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "ahps_core.cli"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO

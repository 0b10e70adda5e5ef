"""A training run's files: ``checkpoint.pt`` (after every epoch) and ``result.json`` (once finished).

``checkpoint.pt`` holds the model, optimizer and RNG states, the history and the configuration hash; it is
written atomically (``*.tmp`` then ``os.replace``), so an interrupted write leaves the previous checkpoint.
``result.json`` holds the configuration hash and the finished :class:`~ahps_core.train.TrainResult` as strict
JSON (non-finite floats as ``"inf"``/``"-inf"``/``"nan"``), written atomically by
:func:`ahps_core.jsonio.write_json`. A directory holding files of a *different* configuration is an error.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ahps_core.errors import ConfigError, DataError
from ahps_core.jsonio import json_safe, write_json

CHECKPOINT_NAME = "checkpoint.pt"
RESULT_NAME = "result.json"


def write_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """``state`` to ``directory/checkpoint.pt``, atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(directory: Path, config_hash: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint state in ``directory`` (tensors on ``device``), None when there is none."""
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a torn or foreign file
        raise DataError(f"checkpoint {path} cannot be read ({exc}); delete it to start over") from None
    if state.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint dir {directory} holds a run of a different configuration (hash "
            f"{state.get('config_hash')}, this run {config_hash}); use another checkpoint dir or delete it"
        )
    return state


def write_result(directory: Path, config_hash: str, result: Mapping[str, Any]) -> Path:
    """A finished run's ``result`` (a ``TrainResult.to_dict()``) to ``directory/result.json``."""
    return write_json(directory / RESULT_NAME, {"config_hash": config_hash, "result": result}, encode=json_safe)


def read_result(directory: Path, config_hash: str) -> dict[str, Any] | None:
    """The ``TrainResult.to_dict()`` of a finished run in ``directory``; None when there is none (or it is torn)."""
    path = directory / RESULT_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if payload.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint dir {directory} holds a finished run of a different configuration (hash "
            f"{payload.get('config_hash')}, this run {config_hash}); use another checkpoint dir or delete it"
        )
    return dict(payload["result"])


def get_rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA) and Python RNG states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


__all__ = ["CHECKPOINT_NAME", "RESULT_NAME", "get_rng_state", "read_checkpoint", "read_result", "set_rng_state",
           "write_checkpoint", "write_result"]

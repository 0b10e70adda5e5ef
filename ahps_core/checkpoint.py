"""A training run's files: ``checkpoint.pt`` + ``checkpoint.json`` (after every epoch) and ``result.json`` (once
finished).

``checkpoint.pt`` holds the model, optimizer and RNG states, the history and the configuration hash;
``checkpoint.json`` (its identity sidecar: configuration hash and epoch) is written first, ``checkpoint.pt``
then, each atomically (``*.tmp`` then ``os.replace``), so an interrupted write leaves the previous checkpoint. A
failed write (a full disk) removes its ``*.tmp`` and is a one-line :class:`~ahps_core.errors.DataError`.

**Untrusted directories.** A checkpoint directory may be shared (a PVC, an S3 prefix): whoever can write there
must not run code in the training process. So the sidecar is read (plain JSON) and its configuration hash
checked *before* the tensor file is opened, a ``checkpoint.pt`` without a sidecar is refused unopened, and the
tensor file is loaded with ``torch.load(..., weights_only=True)`` passed explicitly (no environment variable
such as ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn it off): tensors and plain containers only, no pickled code.

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
SIDECAR_NAME = "checkpoint.json"
RESULT_NAME = "result.json"


def write_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """``state`` to ``directory/checkpoint.pt`` with its sidecar ``checkpoint.json``, atomically (module
    docstring); a failed write leaves no ``*.tmp`` and the previous checkpoint as it was."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    try:
        write_json(directory / SIDECAR_NAME, {"format": 1, "config_hash": state["config_hash"],
                                              "epoch": int(state["epoch"])})
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
        raise DataError(f"cannot write the checkpoint {path} ({reason}): the previous checkpoint is kept; free "
                        "space or use another checkpoint dir") from None


def read_checkpoint(directory: Path, config_hash: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint state in ``directory`` (tensors on ``device``), None when there is none. Its identity is
    checked in the sidecar before the tensor file is opened, which is loaded weights-only (module docstring)."""
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    sidecar = directory / SIDECAR_NAME
    try:
        identity = json.loads(sidecar.read_text())
        if not isinstance(identity, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        raise DataError(f"checkpoint {path} has no identity file {SIDECAR_NAME}: it was not written by this ahps "
                        "and is not opened; delete it to start over") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"checkpoint identity {sidecar} cannot be read ({exc}); delete the checkpoint to start "
                        "over") from None
    if identity.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint dir {directory} holds a run of a different configuration (hash "
            f"{identity.get('config_hash')}, this run {config_hash}); use another checkpoint dir or delete it"
        )
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a torn or foreign file, or one holding more than tensors (refused unpickled)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"checkpoint {path} cannot be read safely ({first}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("config_hash") != config_hash:
        raise DataError(f"checkpoint {path} does not match its identity file {SIDECAR_NAME}; delete both to start "
                        "over")
    return state


def write_result(directory: Path, config_hash: str, result: Mapping[str, Any]) -> Path:
    """A finished run's ``result`` (a ``TrainResult.to_dict()``) to ``directory/result.json``."""
    try:
        return write_json(directory / RESULT_NAME, {"config_hash": config_hash, "result": result}, encode=json_safe)
    except OSError as exc:
        raise DataError(f"cannot write {directory / RESULT_NAME} ({exc.strerror or exc}); the last checkpoint is "
                        "kept: run again once there is space to finish without retraining") from None


def read_result(directory: Path, config_hash: str) -> dict[str, Any] | None:
    """The ``TrainResult.to_dict()`` of a finished run in ``directory``; None when there is none (or it is torn)."""
    path = directory / RESULT_NAME
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), dict):
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


__all__ = ["CHECKPOINT_NAME", "RESULT_NAME", "SIDECAR_NAME", "get_rng_state", "read_checkpoint",
           "read_result", "set_rng_state", "write_checkpoint", "write_result"]

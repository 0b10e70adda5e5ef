"""The configuration of one training run, :class:`TrainConfig` (no torch import: a pipeline step computes a
training's configuration hash, and looks up a finished run by it, before anything heavy is imported).

The semantics of every field are those of the training engine, :func:`ahps_core.train.train` (which re-exports
:class:`TrainConfig`); the device, precision and layout modes are resolved in :mod:`ahps_core.runtime`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ahps_core.checks import check_choice, check_int, check_lr, is_number
from ahps_core.errors import ConfigError
from ahps_core.jsonio import stable_hash
from ahps_core.nb201_graph import CELL_MODES
from ahps_core.scaling import DEGREE_RULES, INDEGREE_MODES

SCHEDULES = ("cosine", "constant")
INITS = ("arch-aware", "default")
DEGREES = DEGREE_RULES
FAMILIES = ("mlp", "cnn", "nb201", "graph")  # graph: a caller-given model (its fx graph), ahps builds none
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "bf16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")
#: How a training step runs on CUDA (:mod:`ahps_core.packed`): ``eager``; ``graphs`` (the whole step captured in
#: a CUDA graph and replayed); ``compile`` (``torch.compile`` of the step); ``auto``: ``$AHPS_STEP_MODE`` when
#: set, else ``eager``. On CPU every mode runs eagerly.
STEP_MODES = ("auto", "eager", "graphs", "compile")

#: Fields that do not change what a run computes (excluded from the configuration hash).
_HASH_EXCLUDED = frozenset({"checkpoint_dir", "data_root", "divergence_check_every", "step_mode"})
#: Fields added after runs were recorded: hashed only when set away from this default, so the configurations
#: recorded before them keep their hash (and their finished runs are reused).
_HASHED_UNLESS_DEFAULT = {"cell": "pruned", "indegree": "live"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (see :mod:`ahps_core.train` for the semantics).

    ``arch`` is any spec :func:`ahps_core.specs.parse_arch` accepts for ``family``. ``width`` applies to
    mlp/cnn (None: the model's default), ``C``/``N``/``cell`` to nb201 (``cell``: ``full`` NB201's exact cell or
    ``pruned``, :mod:`ahps_core.models.nb201`); ``indegree`` is how the arch-aware init counts in-degrees (``live``
    or ``all``, :func:`ahps_core.scaling.in_degrees`). ``augment`` None: the dataset's augmentation
    (crop+flip for CIFAR/ImageNet16, none for digits). ``max_steps_per_epoch`` truncates every epoch (the
    paper's truncated LR probe). ``eval_every`` 0 never evaluates; otherwise every that many epochs and at the
    last epoch. ``step_mode``: :data:`STEP_MODES` (a speed option: not part of the configuration hash).
    """

    family: str = "mlp"
    arch: str = "1"
    dataset: str = "digits"
    data_root: str | None = None
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    init: str = "arch-aware"
    degree: str = "source"
    indegree: str = "live"
    seed: int = 0
    width: int | None = None
    C: int = 16
    N: int = 5
    cell: str = "pruned"
    kernel_size: int | None = None
    augment: bool | None = None
    drop_last: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    max_steps_per_epoch: int | None = None
    eval_every: int = 1
    checkpoint_dir: str | None = None
    divergence_check_every: int = 50
    step_mode: str = "auto"

    def validated(self) -> TrainConfig:
        """Return ``self`` after checking every field; raises :class:`ConfigError` naming the bad value."""
        check_choice("family", self.family, FAMILIES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("device", self.device, DEVICES)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("channels_last", self.channels_last, CHANNELS_LAST_MODES)
        check_choice("step_mode", self.step_mode, STEP_MODES)
        check_choice("init", self.init, INITS)
        check_choice("degree", self.degree, DEGREES)
        check_choice("indegree", self.indegree, INDEGREE_MODES)
        check_choice("cell", self.cell, CELL_MODES)
        if self.cell != "pruned" and self.family != "nb201":
            raise ConfigError(f"cell {self.cell!r} applies to nb201 only (family {self.family!r} builds its "
                              "DAG's input->output paths: cell 'pruned')")
        check_lr(self.lr)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("seed", self.seed, 0)
        check_int("C", self.C, 1)
        check_int("N", self.N, 1)
        check_int("eval_every", self.eval_every, 0)
        check_int("divergence_check_every", self.divergence_check_every, 1)
        if self.width is not None:
            check_int("width", self.width, 1)
        if self.kernel_size is not None:
            check_int("kernel_size", self.kernel_size, 1)
        if self.max_steps_per_epoch is not None:
            check_int("max_steps_per_epoch", self.max_steps_per_epoch, 1)
        for name in ("momentum", "weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} {value!r} must be a finite number >= 0")
        if self.momentum >= 1:
            raise ConfigError(f"momentum {self.momentum!r} must be < 1")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov needs momentum > 0 (got momentum 0)")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        if not isinstance(self.arch, str) or not self.arch.strip():
            raise ConfigError(f"arch {self.arch!r} must be a non-empty architecture spec")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}; accepted: {', '.join(sorted(names))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def hash(self, extra: Mapping[str, Any] | None = None) -> str:
        """A short hash of the fields that change what the run computes (plus ``extra``)."""
        payload = {k: v for k, v in self.to_dict().items()
                   if k not in _HASH_EXCLUDED and (k not in _HASHED_UNLESS_DEFAULT or v != _HASHED_UNLESS_DEFAULT[k])}
        if extra:
            payload["_extra"] = dict(extra)
        return stable_hash(payload)



__all__ = ["AMP_MODES", "CHANNELS_LAST_MODES", "DEGREES", "DEVICES", "FAMILIES", "INITS", "SCHEDULES", "STEP_MODES",
           "TrainConfig"]

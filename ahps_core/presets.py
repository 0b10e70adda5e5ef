"""Named training presets and the LR probe's budget: the settings a training or a probe starts from.

Presets (:data:`PRESETS`; apply with :func:`preset_values` or :func:`recipe_config`), each a set of
:class:`~ahps_core.train.TrainConfig` fields:

* ``nb201``: NAS-Bench-201's training recipe (Dong & Yang 2020; docs/conventions.md §1.7): batch 256, LR 0.1,
  momentum 0.9, Nesterov, weight decay 5e-4, cosine to 0, 200 epochs, the dataset's crop+flip augmentation, fp32
  (``amp="off"``: the benchmark was trained in fp32; bf16 only when asked, a deviation of the re-evaluation's
  protocol, :mod:`ahps_core.protocol`). The default of the ``nb201`` family.
* ``probe``: the LR probe of the base-LR search (docs/conventions.md §1.6): plain SGD at a constant LR, the
  paper's one epoch, the reference code's batch 128, no augmentation, no evaluation.
  :func:`default_budget` adapts epochs and batch per dataset for the probe itself.
* ``reference``: the reference experiments' plain SGD at a constant LR, evaluated every epoch, with the batch
  size and hidden width of the base-LR probe on the dataset (:func:`default_budget`, :func:`default_width`), so
  that a transferred LR is used in the setting it was found in. The default of the ``mlp``/``cnn`` families.

Fields marked :data:`PER_DATASET` are resolved by :func:`preset_values` for a family and dataset.

Probe budgets (:class:`ProbeBudget`, :data:`FAMILY_BUDGETS`, :data:`DEFAULT_BUDGETS`, :data:`DEFAULT_WIDTHS`): the
fixed training budget of one LR-probe run. The ``nb201`` family probes with its training recipe's optimizer, batch,
augmentation and precision for one epoch, so the base LR is found in the setting it is used in. This module imports
neither torch nor the training engine until a configuration is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ahps_core.checks import check_choice
from ahps_core.errors import ConfigError

if TYPE_CHECKING:
    from ahps_core.train_config import TrainConfig

#: Marks a preset field whose value depends on the family and dataset (resolved by :func:`preset_values`).
PER_DATASET = "per-dataset"

#: Named presets of :class:`~ahps_core.train.TrainConfig` fields (module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "nb201": dict(
        epochs=200, batch_size=256, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="cosine", warmup_epochs=0.0, augment=None, eval_every=1, amp="off",
    ),
    "probe": dict(
        epochs=1, batch_size=128, momentum=0.0, nesterov=False, weight_decay=0.0, schedule="constant",
        warmup_epochs=0.0, augment=False, eval_every=0,
    ),
    "reference": dict(
        batch_size=PER_DATASET, width=PER_DATASET, momentum=0.0, nesterov=False, weight_decay=0.0,
        schedule="constant", warmup_epochs=0.0, eval_every=1,
    ),
}

#: The preset a family trains with when none is named.
DEFAULT_PRESETS = {"nb201": "nb201", "mlp": "reference", "cnn": "reference"}


def default_preset(family: str) -> str:
    """The preset ``family`` trains with by default: ``nb201`` for nb201, ``reference`` for mlp/cnn."""
    return DEFAULT_PRESETS[check_choice("family", family, DEFAULT_PRESETS)]


def preset_values(name: str, *, family: str, dataset: str) -> dict[str, Any]:
    """The :class:`~ahps_core.train.TrainConfig` fields of preset ``name`` for ``family`` on ``dataset``
    (:data:`PER_DATASET` fields resolved: the probe's batch size and hidden width on the dataset)."""
    check_choice("preset", name, PRESETS)
    values = dict(PRESETS[name])
    if values.get("batch_size") == PER_DATASET:
        values["batch_size"] = default_budget(dataset, family).batch_size
    if values.get("width") == PER_DATASET:
        values["width"] = default_width(family, dataset)
    return values


def recipe_config(recipe: str, **overrides: Any) -> TrainConfig:
    """``TrainConfig`` with preset ``recipe`` applied (for ``overrides``' family and dataset, default mlp on
    digits), then ``overrides`` (``None`` overrides are ignored). ``ahps train --recipe`` builds its
    configuration with it."""
    from ahps_core.train_config import TrainConfig

    check_choice("recipe", recipe, PRESETS)  # named as the CLI option the user gave (--recipe)
    given = {k: v for k, v in overrides.items() if v is not None}
    defaults = TrainConfig()
    values = preset_values(recipe, family=given.get("family", defaults.family),
                           dataset=given.get("dataset", defaults.dataset))
    values.update(given)
    return TrainConfig.from_dict(values)


# --- the LR probe's budget -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeBudget:
    """The fixed training budget of one LR probe run (plain SGD at a constant LR, no evaluation)."""

    epochs: int = 1
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    augment: bool = False
    device: str = "auto"
    amp: str = "auto"

    def config(self, lr: float, seed: int, **identity: Any) -> TrainConfig:
        """The :class:`TrainConfig` of one probe run (``identity``: family/arch/dataset/... for bookkeeping)."""
        from ahps_core.train_config import TrainConfig

        return TrainConfig(
            lr=lr, seed=seed, epochs=self.epochs, batch_size=self.batch_size,
            max_steps_per_epoch=self.max_steps_per_epoch, momentum=self.momentum, nesterov=self.nesterov,
            weight_decay=self.weight_decay, schedule="constant", warmup_epochs=0.0, augment=self.augment,
            device=self.device, amp=self.amp, eval_every=0, **identity,
        ).validated()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Per-dataset probe budgets. digits (1437 training images) needs several epochs: one epoch is only 45 steps
#: at batch 32. 6 epochs at batch 32 gives a stable maximal-LR estimate (``ahps validate``'s acceptance,
#: r >= 0.85 on the MLP depth sweep; measured r ~ 0.95-0.99). Other datasets: the paper's one epoch at the
#: reference's batch 128.
DEFAULT_BUDGETS: dict[str, ProbeBudget] = {"digits": ProbeBudget(epochs=6, batch_size=32)}
#: Per-family probe budgets, ahead of the per-dataset ones. nb201: one epoch of NAS-Bench-201's recipe (momentum
#: 0.9, Nesterov, weight decay 5e-4, batch 256, crop+flip, fp32) at a constant LR, as the trainings it feeds use;
#: the paper's plain-SGD probe at batch 128 takes steps about 10x smaller than that recipe's.
FAMILY_BUDGETS: dict[str, ProbeBudget] = {
    "nb201": ProbeBudget(epochs=1, batch_size=256, momentum=0.9, nesterov=True, weight_decay=5e-4, augment=True,
                         amp="off"),
}
#: Per-dataset default hidden width of mlp/cnn probe networks (None: the model's own default).
DEFAULT_WIDTHS: dict[str, int] = {"digits": 128}


def default_budget(dataset: str, family: str | None = None, **overrides: Any) -> ProbeBudget:
    """The probe budget of ``family`` (:data:`FAMILY_BUDGETS`), else of ``dataset`` (:data:`DEFAULT_BUDGETS`),
    with ``overrides`` (None values ignored) applied."""
    budget = FAMILY_BUDGETS.get(family or "") or DEFAULT_BUDGETS.get(dataset, ProbeBudget())
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        budget = dataclasses.replace(budget, **changes)
    except TypeError as exc:
        raise ConfigError(f"bad probe budget option: {exc}") from None
    budget.config(1.0, 0)  # validates
    return budget


def default_width(family: str, dataset: str) -> int | None:
    """The hidden width of ``family``'s probe networks on ``dataset`` (None: the model's default; always None for
    nb201, which has channels instead)."""
    return DEFAULT_WIDTHS.get(dataset) if family in ("mlp", "cnn") else None


__all__ = ["DEFAULT_BUDGETS", "DEFAULT_PRESETS", "DEFAULT_WIDTHS", "FAMILY_BUDGETS", "PER_DATASET", "PRESETS",
           "ProbeBudget",
           "default_budget", "default_preset", "default_width", "preset_values", "recipe_config"]

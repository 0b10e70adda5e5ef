"""KFP components of ahps: each calls one step of :mod:`ahps_core.steps` (see :mod:`components.ops`).

``base_image`` is fixed when a component is defined, so components are built by a factory::

    from components import make_components
    c = make_components("registry.example.com/ahps:0.1.0")   # default: $AHPS_IMAGE or DEFAULT_IMAGE
    c.find_base_lr, c.transfer, c.train, c.compare                              # transfer
    c.sample_cells, c.reeval_base_lr, c.reeval_plan, c.reeval_train, c.rank     # reevaluate

(``train`` and ``reeval_train`` train a *pack*: every arm x seed of one or more architectures.)

Every component is a lightweight Python component with ``install_kfp_package=False`` (the image ships kfp,
ahps and its pins), so a task starts in ~60 ms on kfp's local SubprocessRunner.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

DEFAULT_IMAGE = "ghcr.io/ahps-project/ahps:0.1.0"
IMAGE_ENV = "AHPS_IMAGE"
COMPONENT_NAMES = ("find_base_lr", "transfer", "train", "compare",  # the transfer pipeline
                   "sample_cells", "reeval_base_lr", "reeval_plan", "reeval_train", "rank")  # reevaluate


def default_image() -> str:
    """``$AHPS_IMAGE`` when set, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE


@functools.lru_cache(maxsize=8)
def _make(image: str) -> SimpleNamespace:
    from kfp import dsl

    from components import ops

    component = functools.partial(dsl.component, base_image=image, install_kfp_package=False)
    return SimpleNamespace(image=image, **{name: component(getattr(ops, name)) for name in COMPONENT_NAMES})


def make_components(base_image: str | None = None) -> SimpleNamespace:
    """The components (attributes named by :data:`COMPONENT_NAMES`) on ``base_image``."""
    return _make((base_image or "").strip() or default_image())


__all__ = ["COMPONENT_NAMES", "DEFAULT_IMAGE", "IMAGE_ENV", "default_image", "make_components"]

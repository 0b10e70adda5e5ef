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

DEFAULT_IMAGE = "registry.example.com/ahps:0.1.0"  #: the image the README builds, the chart's default (values.yaml)
IMAGE_ENV = "AHPS_IMAGE"
COMPONENT_NAMES = ("find_base_lr", "transfer", "train", "compare",  # the transfer pipeline
                   "sample_cells", "reeval_base_lr", "reeval_plan", "reeval_train", "rank")  # reevaluate


def default_image() -> str:
    """``$AHPS_IMAGE`` when set, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE


def _documented(func, helps: dict[str, str]):
    """A copy of ``func`` whose docstring has an ``Args:`` section for every input parameter/artifact described
    in ``ops.INPUT_HELP`` (by ``component.input``, then ``input``) or ``helps``: kfp reads it into the component's
    ``inputDefinitions`` descriptions. (The task runs the function's source, which is unchanged.)"""
    import inspect
    import types

    from components.ops import INPUT_HELP

    lines = []
    for name in inspect.signature(func).parameters:  # outputs too: kfp assigns descriptions to inputs only
        text = INPUT_HELP.get(f"{func.__name__}.{name}") or INPUT_HELP.get(name) or helps.get(name)
        if text:
            lines.append(f"    {name}: {' '.join(text.split())}")
    copy = types.FunctionType(func.__code__, func.__globals__, func.__name__, func.__defaults__, func.__closure__)
    copy.__dict__.update(func.__dict__)
    copy.__annotations__, copy.__module__, copy.__qualname__ = func.__annotations__, func.__module__, func.__qualname__
    copy.__doc__ = (inspect.getdoc(func) or func.__name__) + ("\n\nArgs:\n" + "\n".join(lines) if lines else "")
    return copy


@functools.lru_cache(maxsize=8)
def _make(image: str, helps: tuple[tuple[str, str], ...]) -> SimpleNamespace:
    from kfp import dsl

    from components import ops

    component = functools.partial(dsl.component, base_image=image, install_kfp_package=False)
    return SimpleNamespace(image=image, **{name: component(_documented(getattr(ops, name), dict(helps)))
                                           for name in COMPONENT_NAMES})


def make_components(base_image: str | None = None, helps: dict[str, str] | None = None) -> SimpleNamespace:
    """The components (attributes named by :data:`COMPONENT_NAMES`) on ``base_image``; ``helps``: descriptions
    of their inputs by name (a pipeline's parameter help), see :func:`_documented`."""
    return _make((base_image or "").strip() or default_image(), tuple(sorted((helps or {}).items())))


__all__ = ["COMPONENT_NAMES", "DEFAULT_IMAGE", "IMAGE_ENV", "default_image", "make_components"]

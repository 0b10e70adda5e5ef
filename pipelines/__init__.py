"""Kubeflow pipelines of ahps, by name (:data:`PIPELINES`).

A pipeline module (e.g. :mod:`pipelines.transfer`) only wires components (:mod:`components`); it provides

* ``NAME``, ``PIPELINE_NAME``, ``DESCRIPTION``;
* ``PARAMS``: ``{name: Param(default, help)}``, the pipeline's parameters, their defaults and one-line help; the
  pipeline function's signature uses them. ``transfer``'s defaults are the local CPU run's (scikit-learn digits);
  ``reevaluate``'s are the cluster's (NB201's network and budget);
* ``build(settings=None, *, base_image=None) -> pipeline``, a ``@dsl.pipeline`` graph component; the compile-time
  options (accelerator type and count, dataset PVC, cache dir, parallelism, retries) are a
  :class:`pipelines.cluster.TaskSettings`. The pipeline function's docstring is made from ``PARAMS``
  (:func:`param_docstring`): kfp reads its ``Args:`` section into the IR, so every parameter of the compiled YAML
  has its help as ``description``.

Each :class:`PipelineDef` also names the function that checks a parameter set (in :mod:`ahps_core.steps.params`)
and the report printed from the pipeline's summary (in :mod:`ahps_core.reports`). Modules are imported lazily:
importing this package imports neither kfp nor torch. Add a pipeline by adding a module and a
:class:`PipelineDef`.

Imports point one way: ``ahps`` (CLI, orchestration) -> ``pipelines`` -> ``components`` -> ``ahps_core``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from ahps_core.errors import ConfigError


class Param(NamedTuple):
    default: Any
    help: str
    items: type | None = None  #: a list parameter's element type (for ``--param`` values) when its default is []


def param_docstring(summary: str, params: dict[str, Param]) -> str:
    """A Google-style docstring: ``summary``, then an ``Args:`` section with every parameter's help (one line each).
    kfp 2.17 parses it (``docstring_parser``) into ``inputDefinitions.parameters.NAME.description``."""
    lines = [summary.strip(), "", "Args:"]
    for name, spec in params.items():
        help_text = " ".join(spec.help.split())
        if not help_text:
            raise ValueError(f"parameter {name!r} has no help text")
        lines.append(f"    {name}: {help_text}")
    return "\n".join(lines) + "\n"


def documented(summary: str, params: dict[str, Param]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator (below ``@dsl.pipeline``) giving the pipeline function its :func:`param_docstring`."""
    def give_doc(func: Callable[..., Any]) -> Callable[..., Any]:
        func.__doc__ = param_docstring(summary, params)
        return func
    return give_doc


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class PipelineDef:
    name: str
    module: str
    description: str
    check: str  #: "module:function" checking a full parameter set: ``check(params, *, local) -> params``
    report: str  #: "module:function" formatting the pipeline's ``summary.json`` as the text ``ahps run`` prints

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def params(self) -> dict[str, Param]:
        return self.load().PARAMS

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def validate(self, params: dict[str, Any], *, local: bool) -> dict[str, Any]:
        checker: Callable[..., dict[str, Any]] = _resolve(self.check)
        return checker(params, local=local)

    def format_summary(self, summary: dict[str, Any]) -> str:
        return str(_resolve(self.report)(summary))


PIPELINES: dict[str, PipelineDef] = {
    "transfer": PipelineDef(
        "transfer", "pipelines.transfer",
        "find the base LR on the proxy -> transfer it to every target -> train autoscaled and fixed -> compare",
        check="ahps_core.steps.params:check_transfer", report="ahps_core.reports:format_transfer",
    ),
    "reevaluate": PipelineDef(
        "reevaluate", "pipelines.reevaluate",
        "sample NB201 cells -> transfer the base LR -> train each with the NB201 recipe at its own LR and init -> "
        "rank against the benchmark records",
        check="ahps_core.steps.params:check_reevaluate", report="ahps_core.reports:format_reevaluation",
    ),
}


def get_pipeline(name: str) -> PipelineDef:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ConfigError(f"unknown pipeline {name!r}: accepted are {', '.join(PIPELINES)}") from None


__all__ = ["PIPELINES", "Param", "PipelineDef", "documented", "get_pipeline", "param_docstring"]

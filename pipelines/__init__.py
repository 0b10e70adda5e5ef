"""Kubeflow pipelines of ahps, by name (:data:`PIPELINES`).

A pipeline module (e.g. :mod:`pipelines.transfer`) provides:

* ``NAME``, ``DESCRIPTION``;
* ``PARAMS``: ``{name: Param(default, help)}`` -- the pipeline's parameters, their defaults and one-line help; the
  pipeline function's signature uses them. ``transfer``'s defaults are the local CPU run's (scikit-learn digits);
  ``reevaluate``'s are the cluster's (NB201's network and budget), :func:`local_defaults` shrinks them for ``ahps run``;
* ``build(**options) -> pipeline`` (a ``@dsl.pipeline`` graph component). Compile-time options (base image,
  accelerator type and count, dataset PVC, cache dir, parallelism, retries) are arguments of ``build``;
* ``validate(params, *, local) -> params``: checks values (``ConfigError`` naming the bad value and what is
  accepted) after :func:`coerce_params` has converted them to the defaults' types;
* ``local_defaults(workdir) -> dict``: extra parameter values for ``ahps run`` (checkpoint dir, local data...);
* ``format_summary(summary) -> str``: the report ``ahps run`` prints from the pipeline's summary output.

Modules are imported lazily (kfp is not imported until a pipeline is used). Add a pipeline by adding a module
and a :class:`PipelineDef` to :data:`PIPELINES`. Cluster settings shared by the pipelines (secrets, GPU placement,
cache volume, retries, their parameters and checks) live in :mod:`pipelines._cluster`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from ahps_core.errors import ConfigError


class Param(NamedTuple):
    default: Any
    help: str


@dataclass(frozen=True)
class PipelineDef:
    name: str
    module: str
    description: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def params(self) -> dict[str, Param]:
        return self.load().PARAMS

    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}


PIPELINES: dict[str, PipelineDef] = {
    "transfer": PipelineDef(
        "transfer", "pipelines.transfer",
        "find the base LR on the proxy -> transfer it to every target -> train autoscaled and fixed -> compare",
    ),
    "reevaluate": PipelineDef(
        "reevaluate", "pipelines.reevaluate",
        "sample NB201 cells -> transfer the base LR -> train each with the NB201 recipe at its own LR and init -> "
        "rank against the benchmark records",
    ),
}


def get_pipeline(name: str) -> PipelineDef:
    try:
        return PIPELINES[name]
    except KeyError:
        raise ConfigError(f"unknown pipeline {name!r}: accepted are {', '.join(PIPELINES)}") from None


# --- parameter parsing ------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A ``--param`` value: JSON when it parses (numbers, lists, objects, true/false/null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_param_args(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: parsed v}`` (see :func:`parse_value`); a pair without ``=`` is a ConfigError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad --param {pair!r}: expected NAME=VALUE, e.g. --param epochs=3")
        out[key] = parse_value(value)
    return out


def _as_list(name: str, value: Any) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        return [parse_value(part.strip()) if part.strip() else part for part in text.split(",")]
    return [value]


def coerce(name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` (the parameter's declared type)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, str):
            if isinstance(value, (dict, list)):
                raise ValueError
            return "" if value is None else str(value)
        if isinstance(default, list):
            items = _as_list(name, value)
            if default and isinstance(default[0], str):  # e.g. targets: numbers given as specs stay specs
                items = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in items]
            return items
        if isinstance(default, dict):
            if isinstance(value, str):
                value = parse_value(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (TypeError, ValueError):
        kind = type(default).__name__
        example = {"list": '\'["a","b"]\' or a,b', "dict": "'{\"k\": \"v\"}'"}.get(kind, kind)
        raise ConfigError(f"parameter {name}={value!r} is not a valid {kind} (expected {example})") from None
    return value


def coerce_params(pipeline: PipelineDef, params: dict[str, Any]) -> dict[str, Any]:
    """Check names against the pipeline's parameters and convert values to their types."""
    spec = pipeline.params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for pipeline "
                          f"{pipeline.name!r}: accepted are {', '.join(spec)}")
    return {k: coerce(k, v, spec[k].default) for k, v in params.items()}


__all__ = ["PIPELINES", "Param", "PipelineDef", "coerce", "coerce_params", "get_pipeline", "parse_param_args",
           "parse_value"]

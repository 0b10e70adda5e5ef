"""Pipeline parameters as the CLI takes them: ``NAME=VALUE`` pairs parsed (JSON when it parses, a comma list is a
list), converted to the types of the pipeline's defaults, checked by the pipeline's checker, and the local run's
default run-group key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ahps_core.errors import ConfigError, redact_secrets
from pipelines import PipelineDef, get_pipeline

#: ``ahps compile`` may leave these empty (the run gets them at submit time): checked with a placeholder.
SUBMIT_TIME_PLACEHOLDERS: dict[str, dict[str, str]] = {
    "transfer": {"tracking_uri": "unset"},
    "reevaluate": {"tracking_uri": "unset", "data_source": "s3://set-at-submit-time",
                   "benchmark": "s3://set-at-submit-time/NATS-tss-v1_0-3ffb9-simple"},
}
#: Parameters that do not change what a local run computes: left out of its default run-group key.
_NOT_IN_RUN_GROUP = {"run_group", "checkpoint_root", "tracking_uri", "s3_secret", "mlflow_secret", "gpu_tolerations",
                     "gpu_node_selector", "mlflow_experiment", "pack"}


def parse_value(text: str) -> Any:
    """A ``--param`` value: JSON when it parses (numbers, lists, objects, true/false/null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise ConfigError(f"parameter value {text[:40]!r}... is nested too deeply") from None


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


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        return [parse_value(part.strip()) if part.strip() else part for part in text.split(",")]
    return [value]


def _coerce(value: Any, default: Any, items: type | None = None) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError
    if isinstance(default, (int, float)):
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if isinstance(default, int):
            if not number.is_integer():
                raise ValueError
            return int(number)
        return number
    if isinstance(default, str):
        if isinstance(value, (dict, list)):
            raise ValueError
        return "" if value is None else str(value)
    if isinstance(default, list):
        values = _as_list(value)
        if items is str or (default and isinstance(default[0], str)):  # targets: numbers given as specs stay specs
            values = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
        return values
    if isinstance(default, dict):
        if isinstance(value, str):
            value = parse_value(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError
        return value
    return value


def coerce(name: str, value: Any, default: Any, items: type | None = None) -> Any:
    """``value`` converted to the type of ``default`` (the parameter's declared type; ``items``: a list's element
    type when the default list is empty)."""
    try:
        return _coerce(value, default, items)
    except (TypeError, ValueError, OverflowError):
        kind = type(default).__name__
        example = {"list": '\'["a","b"]\' or a,b', "dict": "'{\"k\": \"v\"}'"}.get(kind, kind)
        raise ConfigError(f"parameter {name}={value!r} is not a valid {kind} (expected {example})") from None


def coerce_params(pipeline: PipelineDef, params: dict[str, Any]) -> dict[str, Any]:
    """Check names against the pipeline's parameters and convert values to their types."""
    spec = pipeline.params
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ConfigError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for pipeline "
                          f"{pipeline.name!r}: accepted are {', '.join(spec)}")
    return {k: coerce(k, v, spec[k].default, spec[k].items) for k, v in params.items()}


#: The largest parameter file :func:`read_params_dir` reads (a ConfigMap value is at most 1 MiB as well).
MAX_PARAM_FILE_BYTES = 1 << 20


def read_params_dir(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``--params-dir DIR``: every regular file in ``DIR`` whose name does not start with ``.`` is one parameter
    (the file name) whose stripped content is its value, parsed like ``--param NAME=VALUE``; an empty file leaves
    the pipeline's default. This is how a ConfigMap mounted as a volume looks (one file per key, a symlink into
    ``..data``, which is skipped), so an edit of the ConfigMap, a new key included, reaches the next run."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"--params-dir {str(root)!r} is not a directory")
    out: dict[str, Any] = {}
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.stat().st_size > MAX_PARAM_FILE_BYTES:
            raise ConfigError(f"parameter file {str(path)!r} is larger than {MAX_PARAM_FILE_BYTES} bytes")
        try:
            text = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"parameter file {str(path)!r} cannot be read: {exc}") from None
        if text:
            out[path.name] = parse_value(text)
    return out


def pipeline_and_params(name: str, param_args: tuple[str, ...] | list[str],
                        params_dir: str | os.PathLike[str] | None = None) -> tuple[PipelineDef, dict[str, Any]]:
    """The pipeline named ``name`` and the parameter values given, typed: those of ``params_dir``
    (:func:`read_params_dir`), overridden by the ``--param`` pairs."""
    pipe = get_pipeline(name)
    given = read_params_dir(params_dir) if params_dir else {}
    given.update(parse_param_args(param_args))
    return pipe, coerce_params(pipe, given)


def validated(pipe: PipelineDef, given: dict[str, Any], *, local: bool, extra: dict[str, Any] | None = None,
              require_tracking: bool = True) -> dict[str, Any]:
    """The full, checked parameter set: defaults, then ``extra`` (the local run's), then ``given``. Without
    ``require_tracking`` (``ahps compile``) the values only a submitted run gets (:data:`SUBMIT_TIME_PLACEHOLDERS`)
    may be empty: checked with a placeholder, kept empty."""
    params = {**pipe.defaults(), **(extra or {}), **given}
    if require_tracking:
        return pipe.validate(params, local=local)
    empty = {k: v for k, v in SUBMIT_TIME_PLACEHOLDERS.get(pipe.name, {}).items() if not params.get(k)}
    checked = pipe.validate({**params, **empty}, local=local)
    checked.update({k: "" for k in empty})
    return checked


def _strings(value: Any) -> list[str]:
    """Every string inside ``value`` (lists and dicts walked iteratively, keys included)."""
    out, todo = [], [value]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return out


def check_no_credentials(params: dict[str, Any], where: str) -> None:
    """Refuse a credential in a parameter that ends up where others read it (``where``: a compiled YAML, a KFP
    run's arguments): a ``user:password@`` URL or a secret-looking query value. The message names the parameter,
    not the value, and points at the Kubernetes Secrets the pipeline reads credentials from."""
    for name, value in params.items():
        if any(redact_secrets(text) != text for text in _strings(value)):
            raise ConfigError(
                f"parameter {name} holds a credential (a user:password@ or a secret query value), which {where} "
                "would show to anyone who can read it: put MLflow credentials in the Kubernetes Secret named by the "
                "parameter mlflow_secret (default ahps-mlflow-auth, keys MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD), S3 credentials in the one named by s3_secret (default ahps-s3), and "
                "pass the URL without them"
            )


def default_run_group(pipe_name: str, params: dict[str, Any]) -> str:
    """``local-<pipeline>-<family>-<dataset>-<hash of the parameters>``: re-running the same command reuses its
    finished trainings; any parameter change starts a new group."""
    key = json.dumps({k: v for k, v in sorted(params.items()) if k not in _NOT_IN_RUN_GROUP}, sort_keys=True,
                     default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    parts = [p for p in (params.get("family"), params.get("dataset")) if p]
    return "-".join(["local", pipe_name, *parts, digest])

"""The checks of each pipeline's parameters, run before anything is compiled, submitted or trained: every bad
value is a :class:`~ahps_core.errors.ConfigError` naming it and what is accepted.

:func:`check_transfer` and :func:`check_reevaluate` take a full parameter set (the pipeline's defaults filled in,
values already of the defaults' types) and return it normalized. ``local``: for ``ahps run`` (data paths must
exist here; the re-evaluation's benchmark is opened and its sample drawn now); otherwise for a cluster
(``tracking_uri`` must be given: the pods need it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ahps_core.checks import check_choice, is_number
from ahps_core.errors import ArchSpecError, ConfigError, NoPathError

#: Other spellings of the families (the chart and docs say nas-bench-201).
FAMILY_ALIASES = {"nas-bench-201": "nb201", "nasbench201": "nb201", "nb-201": "nb201", "nats-bench": "nb201"}
DEVICES = ("auto", "cpu", "cuda")
#: The transfer pipeline's targets when none are given (``targets`` empty), per family: mlp/cnn DAG codes (the
#: reference code's) of different depths and topologies -- a 2-layer chain, two parallel paths, a 3-layer chain, a
#: 3-layer cell with skips, a dense 4-layer DAG (8 paths); nb201 cell codes (0 none, 1 skip, 2 conv1x1,
#: 3 conv3x3, 4 avg-pool) -- a conv3x3 chain, a ResNet-like cell with skips, a mixed cell, the dense conv3x3 cell,
#: the dense conv1x1 cell.
FAMILY_TARGETS: dict[str, list[str]] = {
    "mlp": ["2_02", "2_22", "2_02_002", "2_12_122", "2_22_222_2222"],
    "cnn": ["2_02", "2_22", "2_02_002", "2_12_122", "2_22_222_2222"],
    "nb201": ["3_03_003", "3_13_113", "3_33_133", "3_33_333", "2_22_222"],
}


def family_targets(family: str, targets: Any) -> list[str]:
    """``targets`` as strings, or (empty) the family's :data:`FAMILY_TARGETS` (aliases such as nas-bench-201
    accepted)."""
    given = [str(t) for t in (targets or [])]
    if given:
        return given
    fam = FAMILY_ALIASES.get(str(family).lower(), str(family))
    if fam not in FAMILY_TARGETS:
        raise ConfigError(f"unknown family {family!r}: accepted are {', '.join(FAMILY_TARGETS)}")
    return list(FAMILY_TARGETS[fam])
REEVAL_DATASETS = ("cifar10", "cifar10-valid", "cifar100", "ImageNet16-120")
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _minimums(p: dict[str, Any], minimums: dict[str, int]) -> None:
    for name, minimum in minimums.items():
        if p[name] < minimum:
            raise ConfigError(f"{name} {p[name]!r} must be >= {minimum}")


def _seeds(seeds: Any) -> None:
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds {seeds!r} must be a non-empty list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds!r} contain duplicates")


def _lrs(p: dict[str, Any], names: tuple[str, ...]) -> None:
    meaning_of_zero = {"base_lr": "find it by the LR search", "fixed_lr": "the family's fixed arm"}
    for name in names:
        if not p[name] >= 0 or p[name] == float("inf"):
            raise ConfigError(f"{name} {p[name]!r} must be a finite number >= 0 (0: {meaning_of_zero[name]})")
    for lr in p["lr_grid"]:
        if not is_number(lr) or not 0 < lr < float("inf"):
            raise ConfigError(f"lr_grid {p['lr_grid']!r} must hold finite learning rates > 0")


def check_cluster(p: dict[str, Any], *, local: bool) -> None:
    """Checks of the tracking and cluster parameters every pipeline takes (secret names, GPU placement, tracking
    URI, checkpoint root)."""
    for name in ("s3_secret", "mlflow_secret"):
        if not _K8S_NAME.match(p[name]) or len(p[name]) > 253:
            raise ConfigError(f"{name} {p[name]!r} is not a valid Kubernetes secret name")
    if not p["mlflow_experiment"].strip():
        raise ConfigError("mlflow_experiment must not be empty")
    tol = p["gpu_tolerations"]
    if not all(isinstance(t, dict) for t in tol):
        raise ConfigError(f"gpu_tolerations {tol!r} must be a list of toleration objects, e.g. "
                          '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    sel = p["gpu_node_selector"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in sel.items()):
        raise ConfigError(f"gpu_node_selector {sel!r} must map label names to string values")
    if not local and not p["tracking_uri"]:
        raise ConfigError("tracking_uri is empty: the pipeline's pods need the MLflow server, e.g. --param "
                          "tracking_uri=http://ahps-mlflow.NAMESPACE.svc.cluster.local:5000")
    if p["checkpoint_root"].startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(p["checkpoint_root"])


def _split_file(p: dict[str, Any], *, local: bool) -> None:
    """``split_file``: NB201's split file of the dataset (a path or ``s3://``), only for a dataset that has one."""
    from ahps_core.data import DATASETS

    split = p["split_file"]
    if not split:
        return
    if DATASETS[p["dataset"]].split_keys is None:
        raise ConfigError(f"dataset {p['dataset']} has no NB201 split file (it is evaluated on its own test set): "
                          f"split_file must be empty (got {split!r})")
    generated = p.get("checksums_file") is not None and generated_manifest(p) is not None
    if split.startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(split)
    elif generated and Path(split).expanduser().resolve().parent == Path(p["data_source"]).resolve():
        return  # a split file of the generated data, written with it when missing
    elif local and not Path(split).expanduser().is_file():
        raise ConfigError(f"split_file {split!r} does not exist (NB201's split files: "
                          "cifar-split.txt, cifar100-test-split.txt, imagenet-16-120-test-split.txt)")


def _targets(p: dict[str, Any]) -> None:
    from ahps_core.graph import parse_arch
    from ahps_core.scaling import Transferer

    targets = p["targets"]
    if not targets:
        raise ConfigError("the target list is empty: give at least one architecture, e.g. targets='[\"2_02\"]'")
    if not all(isinstance(t, str) and t.strip() for t in targets):
        raise ConfigError(f"targets {targets!r} must be non-empty architecture spec strings")
    if len(set(targets)) != len(targets):
        raise ConfigError(f"targets {targets!r} contain duplicates")
    transferer = Transferer(p["family"], 1.0, rule=p["rule"], convention=p["convention"])
    trainable = 0
    for t in targets:
        try:
            graph = parse_arch(t, p["family"])
        except NoPathError:
            continue  # recorded as skipped by the plan step
        except ArchSpecError as exc:
            raise ConfigError(f"target {t!r}: {exc}") from None
        if graph.family != p["family"]:
            raise ConfigError(f"target {t!r} is a {graph.family} architecture, but family is {p['family']!r}")
        try:
            transferer(graph)
            trainable += 1
        except NoPathError:
            pass
    if not trainable:
        raise ConfigError(f"no target of {targets!r} has an input->output path: nothing can be trained")


def _custom_dataset(p: dict[str, Any], *, local: bool) -> bool:
    """Whether ``dataset`` is a user dataset (``npz:PATH``, ``module:function``; :mod:`ahps_core.data.custom`):
    then ``data_source`` must be empty, and for ``ahps run`` a local file must exist and a function import."""
    from ahps_core.data.custom import NPZ_PREFIX, is_custom

    name = p["dataset"]
    if not is_custom(name):
        return False
    if p["data_source"]:
        raise ConfigError(f"dataset {name} names its own data: data_source must be empty (got {p['data_source']!r})")
    if local and name.startswith(NPZ_PREFIX):
        where = name[len(NPZ_PREFIX):]
        if not where.startswith("s3://"):
            path = Path(where).expanduser()
            if not path.is_file():
                raise ConfigError(f"dataset {name}: file {where!r} does not exist")
            p["dataset"] = NPZ_PREFIX + str(path.resolve())  # the steps may run in another directory
    elif local:
        from ahps_core.refs import load_ref

        load_ref(name, "dataset reference")
    return True


def check_transfer(params: dict[str, Any], *, local: bool) -> dict[str, Any]:
    """The ``transfer`` pipeline's parameters (see the module docstring)."""
    from ahps_core.data import DATASETS
    from ahps_core.presets import PRESETS
    from ahps_core.scaling import CONVENTIONS, RULES

    p = dict(params)
    p["family"] = FAMILY_ALIASES.get(str(p["family"]).lower(), p["family"])
    check_choice("family", p["family"], ("mlp", "cnn", "nb201"))
    if not p["targets"]:
        p["targets"] = family_targets(p["family"], [])  # none given: the family's defaults
    custom = _custom_dataset(p, local=local)
    if not custom:
        check_choice("dataset", p["dataset"], [*DATASETS, "npz:PATH", "module:function"])
    check_choice("rule", p["rule"], RULES)
    check_choice("convention", p["convention"], CONVENTIONS)
    check_choice("device", p["device"], DEVICES)
    _targets(p)
    _seeds(p["seeds"])
    _minimums(p, {"epochs": 1, "lr_seeds": 1, "batch_size": 0, "width": 0, "max_steps_per_epoch": 0, "pack": 0})
    _lrs(p, ("base_lr", "fixed_lr"))
    if p["train_recipe"]:
        check_choice("train_recipe", p["train_recipe"], PRESETS)
    if custom:
        pass  # checked by _custom_dataset
    elif p["dataset"] == "digits":
        if p["data_source"]:
            raise ConfigError(f"dataset digits ships with scikit-learn: data_source must be empty (got "
                              f"{p['data_source']!r})")
    elif not p["data_source"]:
        raise ConfigError(f"dataset {p['dataset']} needs data_source: a directory or s3://bucket/prefix with its files")
    elif local and not p["data_source"].startswith("s3://") and not Path(p["data_source"]).exists():
        raise ConfigError(f"data_source {p['data_source']!r} does not exist")
    _split_file(p, local=local)
    check_cluster(p, local=local)
    return p


def generated_manifest(p: dict[str, Any]) -> Path | None:
    """``checksums_file`` when it is the manifest of generated data in ``data_source``
    (:data:`ahps_core.data.synthetic.SYNTHETIC_MANIFEST`): ``ahps run`` writes that data when it is missing."""
    from ahps_core.data.synthetic import SYNTHETIC_MANIFEST

    if not p["checksums_file"] or Path(p["checksums_file"]).name != SYNTHETIC_MANIFEST:
        return None
    manifest = Path(p["checksums_file"])
    if not p["data_source"] or p["data_source"].startswith("s3://"):
        return None
    return manifest if manifest.parent.resolve() == Path(p["data_source"]).resolve() else None


def _reeval_data(p: dict[str, Any], *, local: bool) -> None:
    from ahps_core.data.synthetic import SYNTHETIC_MANIFEST

    generated = p["checksums_file"] and Path(p["checksums_file"]).name == SYNTHETIC_MANIFEST
    if generated and generated_manifest(p) is None:
        p["checksums_file"] = ""  # generated data's manifest, but data_source points elsewhere: it does not apply
    if not p["data_source"]:
        raise ConfigError(f"dataset {p['dataset']} needs data_source: a directory or s3://bucket/prefix with its "
                          "files")
    if p["data_source"].startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(p["data_source"])
    if not local or generated_manifest(p) is not None:
        return
    if p["checksums_file"].startswith("s3://"):
        raise ConfigError(f"checksums_file {p['checksums_file']!r} must be a local path")
    if not p["data_source"].startswith("s3://") and not Path(p["data_source"]).exists():
        raise ConfigError(f"data_source {p['data_source']!r} does not exist")
    if p["checksums_file"]:
        from ahps_core.data.checksums import read_checksums_manifest

        read_checksums_manifest(p["checksums_file"])


def _reeval_benchmark(p: dict[str, Any], *, local: bool) -> None:
    """Open the records and draw the sample now where they are reachable from here: the fixture always, a local
    path with ``local``; S3 and cluster paths are opened by the pipeline."""
    from ahps_core.benchmarks import FIXTURE, benchmark_path, open_benchmark_records

    bench = p["benchmark"]
    if not bench:
        benchmark_path(bench)  # the error saying what to give
    if bench.startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(bench)
        return
    if bench != FIXTURE and not local:
        return
    open_benchmark_records(bench, sample={
        "k": p["sample_size"], "seed": p["sample_seed"], "dataset": p["dataset"], "stratify": p["stratify"],
        "dedup": p["dedup"] != "none", "iso": p["dedup"] if p["dedup"] != "none" else "function",
    })


def check_reevaluate(params: dict[str, Any], *, local: bool) -> dict[str, Any]:
    """The ``reevaluate`` pipeline's parameters (see the module docstring); locally the benchmark is opened and
    the sample drawn, so a missing/wrong benchmark or a sample larger than its cells fails now."""
    from ahps_core.nb201_graph import CELL_MODES
    from ahps_core.ranking import SELECT_BY
    from ahps_core.runtime import AMP_MODES
    from ahps_core.scaling import CONVENTIONS, INDEGREE_MODES, RULES
    from ahps_core.steps.reevaluate import DEDUP_RULES

    p = dict(params)
    family = FAMILY_ALIASES.get(str(p["family"]).lower(), str(p["family"]).lower())
    if family != "nb201":
        raise ConfigError(f"unknown family {p['family']!r}: the reevaluate pipeline re-trains NAS-Bench-201 cells, "
                          "accepted is nb201 (or nas-bench-201)")
    p["family"] = family
    check_choice("dataset", p["dataset"], REEVAL_DATASETS)
    check_choice("rule", p["rule"], RULES)
    check_choice("convention", p["convention"], CONVENTIONS)
    check_choice("device", p["device"], DEVICES)
    check_choice("dedup rule", p["dedup"], DEDUP_RULES)
    check_choice("select_by", p["select_by"], SELECT_BY)
    check_choice("amp", p["amp"], AMP_MODES)
    check_choice("cell", p["cell"], CELL_MODES)
    check_choice("indegree", p["indegree"], INDEGREE_MODES)
    _minimums(p, {"sample_size": 1, "sample_seed": 0, "epochs": 1, "lr_seeds": 1, "C": 1, "N": 1, "batch_size": 0,
                  "max_steps_per_epoch": 0, "n_boot": 0, "pack": 0})
    _seeds(p["seeds"])
    topk = p["topk"]
    if not topk or not all(is_number(k) and 0 < k <= 100 for k in topk):
        raise ConfigError(f"topk {topk!r} must be a non-empty list of percentages in (0, 100], e.g. [100, 50, 10]")
    if len(set(topk)) != len(topk):
        raise ConfigError(f"topk {topk!r} contains duplicates")
    _lrs(p, ("base_lr",))
    check_cluster(p, local=local)
    _reeval_data(p, local=local)
    _split_file(p, local=local)
    _reeval_benchmark(p, local=local)
    return p

"""The packed training step of both pipelines: one task trains a *pack*, i.e. every arm x seed of one or more
architectures, and records one MLflow run per (arch, arm, seed), exactly as :func:`~ahps_core.steps.training.
train_step` records it (the same run keys, tags, params, metrics, artifacts, checkpoint locations; reuse of a
finished run and resume from a checkpoint unchanged).

Packs (:func:`make_packs`): the training plan's items grouped by architecture, ``pack`` architectures per task
(``0``: one training per task, the unpacked layout). Inside a pack the runs of one architecture train together
(:func:`ahps_core.packed.train_pack`: stacked where it pays). Several architectures of one pack train one after
another on CPU; on CUDA each architecture trains in its own worker process, all sharing the GPU (run the NVIDIA
MPS daemon on the node so that their kernels run concurrently instead of time-sliced; README "Run on
Kubernetes").

Every run's files go to ``<model_dir>/<arch>/<arm>/<seed>/`` (``result.json``, ``checkpoint/``). All MLflow
lookups (is this run finished already?) happen before torch is imported, so a pack whose runs are all reused
costs a task no more than its start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ahps_core.checks import as_int, check_int
from ahps_core.errors import ConfigError
from ahps_core.steps.common import log, log_journaled, tracker
from ahps_core.steps.training import (
    RunRecorder,
    add_extra_metrics,
    log_end,
    log_start,
    reused_summary,
    run_spec,
    step_data,
)

#: ``item -> (extra_tags, extra_params, extra_metrics)`` of one training (the re-evaluation's benchmark fields).
Extras = Callable[[Mapping[str, Any]], tuple[Mapping[str, Any], Mapping[str, Any],
                                             Callable[[Mapping[str, Any]], Mapping[str, Any]] | None]]
WORKER_MODES = ("auto", "on", "off")


def make_packs(items: Sequence[Mapping[str, Any]], pack: int) -> list[dict[str, Any]]:
    """The plan's ``items`` as packs of ``pack`` architectures each (every arm x seed of an architecture in the
    same pack, plan order kept); ``pack`` 0: one item per pack. Each pack is ``{"pack": index, "archs": [...],
    "items": [...], "run_group": ...}``."""
    size = check_int("pack", as_int(pack, "pack"), 0)
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_arch.setdefault(str(item["arch"]), []).append(dict(item))
    groups = ([[item] for arch_items in by_arch.values() for item in arch_items] if size == 0 else
              [[i for arch_items in list(by_arch.values())[j:j + size] for i in arch_items]
               for j in range(0, len(by_arch), size)])
    return [{"pack": n, "label": pack_label(group), "archs": list(dict.fromkeys(str(i["arch"]) for i in group)),
             "items": group, "run_group": group[0].get("run_group", "")} for n, group in enumerate(groups)]


def pack_label(items: Sequence[Mapping[str, Any]]) -> str:
    """What a pack trains, readable: ``"2_02: autoscaled, fixed x seeds 0, 1; 2_22: ..."`` (an architecture's
    cell code when it has one). kfp 2.17 gives every ParallelFor iteration the same static task name (a display name
    cannot come from the loop item), so this label is in the item and its model artifact's metadata instead."""
    arms: dict[str, list[str]] = {}
    seeds: dict[str, list[str]] = {}
    for item in items:
        name = str(item.get("arch_code") or item["arch"])
        arm = str(item.get("arm") or item.get("recipe") or "")
        if arm and arm not in arms.setdefault(name, []):
            arms[name].append(arm)
        if str(item.get("seed")) not in seeds.setdefault(name, []):
            seeds[name].append(str(item.get("seed")))
    return "; ".join(f"{name}: {', '.join(arms[name]) or 'train'} x seed{'s' if len(seeds[name]) > 1 else ''} "
                     f"{', '.join(seeds[name])}" for name in arms)


def pack_items(packs: Sequence[Any]) -> list[dict[str, Any]]:
    """The training summaries of a fan-in, whether its tasks trained packs (lists) or single items (dicts)."""
    out: list[dict[str, Any]] = []
    for entry in packs:
        out.extend(entry if isinstance(entry, list) else [entry])
    return out


def train_pack_step(
    *, pack: Mapping[str, Any], family: str, dataset: str, data_source: str, epochs: int, train_recipe: str,
    batch_size: int, width: int, max_steps_per_epoch: int, device: str, rule: str, convention: str,
    tracking_uri: str, experiment: str, checkpoint_root: str, s3_endpoint: str, model_dir: str, C: int = 0,
    N: int = 0, checksums_file: str = "", eval_part: str = "", split_file: str = "", amp: str = "", cell: str = "",
    indegree: str = "", extras: Extras | None = None, workers: str = "auto",
) -> list[dict[str, Any]]:
    """Train every item of ``pack`` (module docstring); one summary per item, in the pack's order. The arguments
    are :func:`~ahps_core.steps.training.train_step`'s, for every item; ``extras(item)`` gives an item's extra
    tags, params and metrics; ``workers``: one process per architecture (``auto``: on CUDA with several
    architectures)."""
    items = [dict(i) for i in pack.get("items", [])]
    if not items:
        log("train", f"pack {pack.get('pack', '?')}: no training")
        return []
    if workers not in WORKER_MODES:
        raise ConfigError(f"workers {workers!r}: accepted are {', '.join(WORKER_MODES)}")
    args = dict(family=family, dataset=dataset, data_source=data_source, epochs=epochs, train_recipe=train_recipe,
                batch_size=batch_size, width=width, max_steps_per_epoch=max_steps_per_epoch, device=device,
                rule=rule, convention=convention, tracking_uri=tracking_uri, experiment=experiment,
                checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint, model_dir=model_dir, C=C, N=N,
                checksums_file=checksums_file, eval_part=eval_part, split_file=split_file, amp=amp, cell=cell,
                indegree=indegree)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(str(item["arch"]), []).append(item)
    summaries: dict[tuple[str, str, int], dict[str, Any]] = {}
    if len(groups) > 1 and _use_workers(workers, device):
        import concurrent.futures
        import multiprocessing

        log("train", f"pack {pack.get('pack', '?')}: {len(groups)} architectures in {len(groups)} worker processes "
                     "sharing the GPU")
        with concurrent.futures.ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) \
                as pool:
            futures = [pool.submit(train_arch_group, group, args, extras) for group in groups.values()]
            for future in futures:
                for s in future.result():
                    summaries[_key(s)] = s
    else:
        for group in groups.values():
            for s in train_arch_group(group, args, extras):
                summaries[_key(s)] = s
    return [summaries[_key(i)] for i in items]


def run_dir(model_dir: str | Path, item: Mapping[str, Any]) -> Path:
    """Where a pack writes one training's files: ``<model_dir>/<arch>/<arm>/<seed>``."""
    from ahps_core.storage import slug

    return Path(model_dir) / slug(str(item["arch"])) / slug(str(item["arm"])) / str(as_int(item["seed"], "seed"))


def _key(entry: Mapping[str, Any]) -> tuple[str, str, int]:
    return str(entry["arch"]), str(entry.get("arm") or entry.get("recipe")), as_int(entry["seed"], "seed")


def _use_workers(mode: str, device: str) -> bool:
    if mode != "auto":
        return mode == "on"
    if device == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def train_arch_group(items: list[dict[str, Any]], args: Mapping[str, Any], extras: Extras | None = None
                     ) -> list[dict[str, Any]]:
    """The runs of one architecture of a pack: every finished run reused, the others trained together."""
    from ahps_core.tracking import tracked_step

    a = dict(args)
    root = Path(a.pop("model_dir"))
    tracking_uri, experiment = a.pop("tracking_uri"), a.pop("experiment")
    checkpoint_root, s3_endpoint = a.pop("checkpoint_root"), a.pop("s3_endpoint")
    checksums_file = a.pop("checksums_file")
    specs, metrics_fns = [], []
    for item in items:
        tags, params, metrics = extras(item) if extras is not None else ({}, {}, None)
        specs.append(run_spec(item=item, model_dir=str(run_dir(root, item)), extra_tags=tags, extra_params=params,
                              **a))
        metrics_fns.append(metrics)
    run_group = str(items[0]["run_group"])
    tr = tracker(tracking_uri, experiment, run_group)
    summaries: list[dict[str, Any] | None] = [None] * len(specs)
    with contextlib.ExitStack() as stack:
        runs = []
        for spec in specs:
            spec.model_path.mkdir(parents=True, exist_ok=True)
            runs.append(stack.enter_context(tracked_step(
                tr, tr.key(spec.arch, spec.arm, spec.seed), name=spec.run_name, kind="train", identity=spec.chash,
                tags=spec.tags, params=spec.params, log=lambda line: log("train", line))))
        todo = []
        for i, (spec, run) in enumerate(zip(specs, runs, strict=True)):
            if run.reused:
                summaries[i] = reused_summary(run, spec)
            else:
                log_start(run, spec)
                todo.append(i)
        if todo:
            recorders = {i: RunRecorder(runs[i], specs[i], checkpoint_root=checkpoint_root, s3_endpoint=s3_endpoint,
                                        run_group=run_group) for i in todo}
            data = step_data(a["dataset"], a["data_source"], checksums_file=checksums_file,
                             eval_part=a["eval_part"], split_file=a["split_file"], s3_endpoint=s3_endpoint)
            from ahps_core.packed import train_pack

            results = train_pack([recorders[i].config for i in todo], data=data,
                                 callbacks=[recorders[i].on_epoch for i in todo], progress=False)
            for i, result in zip(todo, results, strict=True):
                summary = recorders[i].finish(result, data)
                add_extra_metrics(runs[i], summary, metrics_fns[i])
                runs[i].summary = summaries[i] = summary
    for i in todo:
        log_end(specs[i], summaries[i])  # type: ignore[arg-type]
    log_journaled("train", tr, f"{specs[0].arch} ({len(specs)} run(s))")  # the group's runs share the tracker
    return [s for s in summaries if s is not None]


__all__ = ["WORKER_MODES", "Extras", "make_packs", "pack_items", "run_dir", "train_arch_group", "train_pack_step"]

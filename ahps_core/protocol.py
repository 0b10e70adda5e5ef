"""Benchmark protocols: NAS-Bench-201's exact setup per dataset, each family's fixed arm, and a run's deviations.

A re-evaluation is comparable with NAS-Bench-201 (Dong & Yang, ICLR 2020; docs/conventions.md §1.7) only when it
trains and evaluates as the benchmark did. :class:`BenchmarkProtocol` states that setup for each of NB201's datasets
(:func:`nb201_protocol`):

* the split: NB201's split file of the dataset (``cifar10-valid``: ``cifar-split.txt``; ``cifar100``:
  ``cifar100-test-split.txt``; ``ImageNet16-120``: ``imagenet-16-120-test-split.txt``; ``cifar10``: none, its whole
  test set), the benchmark's headline set (``ori-test``, ``x-valid``, ``x-test``) and the part of ours holding it;
* the seeds 777, 888, 999 (the benchmark's accuracy is their mean);
* fp32 (the benchmark was not trained with mixed precision);
* the recipe: the ``nb201`` preset (:mod:`ahps_core.presets`), 200 epochs at batch 256, C=16, N=5;
* the network: the unpruned cell (``cell=full``, every op built, :mod:`ahps_core.models.nb201`) and the reference's
  in-degree count (``indegree=all``, every non-zero input, :func:`ahps_core.scaling.in_degrees`);
* the fixed arm: LR 0.1 with PyTorch's default init (:data:`FIXED_ARMS`, the one definition of each family's fixed
  arm, which the transfer pipeline trains too).

The ``reevaluate`` pipeline's defaults *are* this protocol (:meth:`BenchmarkProtocol.pipeline_params`; a test
compares the compiled defaults with it field by field). Every knob turned away from it is a named deviation
(:func:`protocol_status`, the only place they are computed): ``budget`` (a smaller network, fewer epochs, another
batch size, truncated epochs, generated data: the REDUCED banner), ``split`` (no NB201 split file, or another file),
``seeds``, ``amp``, ``cell``, ``indegree``. A run is tagged ``protocol=nb201`` only with none, otherwise
``protocol=deviated`` with the list (MLflow tags, ``summary.json``, the printed report).

Pure Python: no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ahps_core.checks import check_choice
from ahps_core.errors import ConfigError

NB201_SEEDS = (777, 888, 999)
#: NB201's split file of each dataset that has one (``cifar10`` is evaluated on its whole test set); what they hold
#: and how they are verified: :mod:`ahps_core.data.splits`.
NB201_SPLIT_FILES: dict[str, str] = {
    "cifar10-valid": "cifar-split.txt",
    "cifar100": "cifar100-test-split.txt",
    "ImageNet16-120": "imagenet-16-120-test-split.txt",
}
NB201_BUDGET = {"C": 16, "N": 5, "epochs": 200, "batch_size": 256}
#: The benchmark's headline set of each dataset, and the part of our split that holds it.
NB201_HEADLINE = {"cifar10": ("ori-test", "test"), "cifar10-valid": ("x-valid", "valid"),
                  "cifar100": ("x-test", "test"), "ImageNet16-120": ("x-test", "test")}
#: The deviations, in the order they are reported: name -> what it covers.
DEVIATIONS = {
    "budget": "network and budget (C, N, epochs, batch size, truncated epochs) or generated data",
    "split": "NB201's split file of the dataset",
    "seeds": "the seeds 777, 888, 999",
    "amp": "fp32 (no mixed precision)",
    "cell": "the unpruned cell (cell=full)",
    "indegree": "in-degrees of every non-zero input (indegree=all)",
}


@dataclass(frozen=True)
class FixedArm:
    """The fixed-recipe arm of a family: one LR for every architecture (``lr`` None: the base LR) and an init."""

    family: str
    lr: float | None
    init: str
    source: str

    def lr_for(self, base_lr: float) -> float:
        return float(self.lr) if self.lr is not None else float(base_lr)


#: The fixed arm of every family, defined here only: NB201's recipe for nb201; the base LR for mlp/cnn (they have no
#: benchmark recipe), always with PyTorch's default init.
FIXED_ARMS: dict[str, FixedArm] = {
    "nb201": FixedArm("nb201", 0.1, "default", "NAS-Bench-201's recipe: LR 0.1 for every cell, PyTorch's default init"),
    "mlp": FixedArm("mlp", None, "default", "the base LR for every architecture, PyTorch's default init"),
    "cnn": FixedArm("cnn", None, "default", "the base LR for every architecture, PyTorch's default init"),
}


def fixed_arm(family: str) -> FixedArm:
    """The fixed arm of ``family`` (:data:`FIXED_ARMS`)."""
    return FIXED_ARMS[check_choice("family", family, FIXED_ARMS)]


@dataclass(frozen=True)
class BenchmarkProtocol:
    """NAS-Bench-201's training and evaluation setup on one dataset (module docstring)."""

    name: str
    dataset: str
    headline_set: str
    eval_part: str
    split_file: str | None
    seeds: tuple[int, ...]
    amp: str
    recipe: str
    epochs: int
    batch_size: int
    C: int
    N: int
    max_steps_per_epoch: int
    cell: str
    indegree: str
    fixed_arm: FixedArm

    def pipeline_params(self) -> dict[str, Any]:
        """The ``reevaluate`` pipeline's parameters that are this protocol, as the pipeline takes them (the split
        file's *location* is the user's: ``split_file`` has no default; its name is :attr:`split_file`)."""
        return {"dataset": self.dataset, "seeds": list(self.seeds), "amp": self.amp, "epochs": self.epochs,
                "batch_size": self.batch_size, "C": self.C, "N": self.N,
                "max_steps_per_epoch": self.max_steps_per_epoch, "cell": self.cell, "indegree": self.indegree}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "seeds": list(self.seeds)}

    def describe(self) -> str:
        split = f"split file {self.split_file}" if self.split_file else "the whole test set (no split file)"
        return (f"NAS-Bench-201's protocol on {self.dataset}: {split} ({self.headline_set}), seeds "
                f"{'/'.join(map(str, self.seeds))}, fp32, the {self.recipe} recipe ({self.epochs} epochs, batch "
                f"{self.batch_size}), C={self.C} N={self.N}, cell={self.cell}, indegree={self.indegree}")


def nb201_protocol(dataset: str) -> BenchmarkProtocol:
    """NAS-Bench-201's protocol on ``dataset`` (cifar10, cifar10-valid, cifar100 or ImageNet16-120)."""
    check_choice("dataset", dataset, NB201_HEADLINE)
    headline, part = NB201_HEADLINE[dataset]
    return BenchmarkProtocol(
        name="nb201", dataset=dataset, headline_set=headline, eval_part=part,
        split_file=NB201_SPLIT_FILES.get(dataset), seeds=NB201_SEEDS, amp="off", recipe="nb201",
        epochs=NB201_BUDGET["epochs"], batch_size=NB201_BUDGET["batch_size"], C=NB201_BUDGET["C"],
        N=NB201_BUDGET["N"], max_steps_per_epoch=0, cell="full", indegree="all", fixed_arm=FIXED_ARMS["nb201"],
    )


# --- deviations ------------------------------------------------------------------------------------------------


def budget_info(*, C: int, N: int, epochs: int, batch_size: int = 0, max_steps_per_epoch: int = 0,
                synthetic: bool = False, benchmark: str = "") -> dict[str, Any]:
    """Whether a re-evaluation runs NB201's network and budget (:data:`NB201_BUDGET`) on real data, and if not,
    why: ``{"reduced": bool, "label": "nb201" | "reduced", "reasons": [...], "notes": [...], "text": one line}``. A
    reduced run is a smoke test of the pipeline, not a re-evaluation of the benchmark; every report and MLflow run
    says so (the ``budget`` deviation)."""
    from ahps_core.benchmarks import FIXTURE

    reasons = []
    if int(C) != NB201_BUDGET["C"]:
        reasons.append(f"C={int(C)} channels (NB201: 16)")
    if int(N) != NB201_BUDGET["N"]:
        reasons.append(f"N={int(N)} cells per stage (NB201: 5)")
    if int(epochs) != NB201_BUDGET["epochs"]:
        reasons.append(f"{int(epochs)} epoch{'s' if int(epochs) != 1 else ''} (NB201: 200)")
    if batch_size and int(batch_size) != NB201_BUDGET["batch_size"]:
        reasons.append(f"batch {int(batch_size)} (NB201: 256)")
    if max_steps_per_epoch:
        reasons.append(f"epochs truncated to {int(max_steps_per_epoch)} steps")
    if synthetic:
        reasons.append("synthetic data (generated in the dataset's format, not the real images)")
    notes = []
    if benchmark == FIXTURE:
        notes.append("benchmark: the 3-architecture NATS-Bench fixture shipped with ahps: rank correlations exist "
                     "only for top-K sets of 3 cells (K >= 67%) and are coarse (tau-b of 3 cells is -1, -1/3, "
                     "1/3 or 1)")
    reduced = bool(reasons)
    text = ("REDUCED network/budget: " + "; ".join(reasons) + " -- a smoke test of the pipeline, NOT a "
            "re-evaluation of NAS-Bench-201") if reduced else "NB201 network and budget (C=16, N=5, 200 epochs)"
    return {"reduced": reduced, "label": "reduced" if reduced else "nb201", "reasons": reasons, "notes": notes,
            "text": text}


def _split_deviation(protocol: BenchmarkProtocol, split: Mapping[str, Any] | None) -> str | None:
    if protocol.split_file is None:
        return None
    if not split:
        return (f"no NB201 split file ({protocol.split_file}): evaluated on a seeded stratified half of the set, "
                f"not NB201's {protocol.headline_set}")
    if not split.get("nb201"):
        return (f"split file {split.get('source')} (md5 {split.get('md5')}) is not NB201's {protocol.split_file}: "
                f"the evaluated part is not NB201's {protocol.headline_set}")
    return None


def protocol_status(dataset: str, *, seeds: Sequence[int], amp: str, cell: str, indegree: str,
                    budget: Mapping[str, Any], split: Mapping[str, Any] | None) -> dict[str, Any]:
    """The deviations of a re-evaluation on ``dataset`` from :func:`nb201_protocol` (module docstring).

    ``budget``: :func:`budget_info`'s result; ``split``: the split file read (``{"source", "md5", "nb201"}``) or
    None when none was given. Returns ``{"protocol": "nb201", "label": "nb201" | "deviated", "deviations": [{name,
    text}], "names": [...], "text": one line, "reference": the protocol}``."""
    protocol = nb201_protocol(dataset)
    found: dict[str, str] = {}
    if budget.get("reduced"):
        found["budget"] = str(budget.get("text"))
    split_text = _split_deviation(protocol, split)
    if split_text:
        found["split"] = split_text
    if sorted(int(s) for s in seeds) != sorted(protocol.seeds):
        found["seeds"] = f"seeds {[int(s) for s in seeds]} (NB201: {', '.join(map(str, protocol.seeds))})"
    if amp != protocol.amp:
        found["amp"] = f"amp {amp}: bf16 autocast{' on CUDA' if amp == 'auto' else ''} (NB201: fp32)"
    if cell != protocol.cell:
        found["cell"] = f"cell {cell}: ops off every input->output path are not built (NB201 builds them)"
    if indegree != protocol.indegree:
        found["indegree"] = (f"indegree {indegree}: the init counts live inputs only (the reference: every "
                             "non-zero input)")
    unknown = set(found) - set(DEVIATIONS)
    if unknown:
        raise ConfigError(f"unknown deviation(s) {sorted(unknown)}")
    names = [n for n in DEVIATIONS if n in found]
    label = "deviated" if names else "nb201"
    text = (f"DEVIATED from NAS-Bench-201's protocol ({', '.join(names)})" if names
            else protocol.describe())
    return {"protocol": protocol.name, "label": label, "names": names,
            "deviations": [{"name": n, "text": found[n]} for n in names], "text": text,
            "reference": protocol.to_dict()}


def protocol_tags(status: Mapping[str, Any]) -> dict[str, str]:
    """The MLflow tags of a run's protocol status: ``protocol`` (``nb201`` or ``deviated``) and
    ``protocol_deviations`` (comma-separated names, ``none``)."""
    return {"protocol": str(status.get("label") or "deviated"),
            "protocol_deviations": ",".join(status.get("names") or []) or "none"}


__all__ = ["DEVIATIONS", "FIXED_ARMS", "NB201_BUDGET", "NB201_HEADLINE", "NB201_SEEDS", "NB201_SPLIT_FILES",
           "BenchmarkProtocol",
           "FixedArm", "budget_info", "fixed_arm", "nb201_protocol", "protocol_status", "protocol_tags"]

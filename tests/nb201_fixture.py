"""Benchmark test data built from the real NATS-Bench records shipped with the package (MIT, D-X-Y).

``FIXTURE_DIR`` is a partial NATS-Bench topology ``-simple`` directory: the full ``meta.pickle.pbz2`` and the
records of architectures 0, 11 and 284. :func:`nb201_dict` rebuilds those records in the NAS-Bench-201
``.pth`` layout (``NAS-Bench-201-v1_0-e61699.pth`` / ``v1_1-096897.pth``)::

    {"meta_archs": [15,625 arch strings], "total_archs": 15625, "evaluated_indexes": [...],
     "arch2infos": {index: {"less": ArchResults state (12 epochs), "full": ArchResults state (200 epochs)}}}

where an ArchResults state is ``{arch_index, arch_str, all_results: {(dataset, seed): ResultsCount state},
dataset_seed: {dataset: [seeds]}, clear_net_done}``, which ``NASBench201API`` turns back into objects with
``ArchResults.create_from_state_dict``. The NATS files hold the same states under ``'12'``/``'200'``; they are
read with the official ``nats_bench.api_utils.pickle_load``, independently of the code under test.
"""

from __future__ import annotations

import copy
from pathlib import Path

from ahps_core.resources import NATS_TSS_FIXTURE

from nats_bench.api_utils import pickle_load

#: The records live in the package (ahps_core/resources), so the tests need nothing outside the repository.
#: Where the team's own fixture copy is checked out beside the repository, tests/test_benchmarks.py checks
#: that the packaged files are byte-identical to it (and skips otherwise).
FIXTURE_DIR = NATS_TSS_FIXTURE
SHARED_FIXTURE_DIR = (Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
                      / "nats-tss-v1_0-3ffb9-simple")
FIXTURE_INDICES = (0, 11, 284)


def nats_states(index: int) -> dict:
    """``{'12': ArchResults state, '200': ArchResults state}`` of one fixture architecture."""
    return pickle_load(str(FIXTURE_DIR / f"{index:06d}.pickle.pbz2"))


def meta_archs() -> list[str]:
    return list(pickle_load(str(FIXTURE_DIR / "meta.pickle.pbz2"))["meta_archs"])


def nb201_dict(indices: tuple[int, ...] = FIXTURE_INDICES) -> dict:
    """The fixture records in the NAS-Bench-201 ``.pth`` dict layout."""
    archs = meta_archs()
    arch2infos = {}
    for i in indices:
        states = nats_states(i)
        arch2infos[i] = {"less": states["12"], "full": states["200"]}
    return {
        "meta_archs": archs,
        "arch2infos": arch2infos,
        "evaluated_indexes": list(indices),
        "total_archs": len(archs),
    }


def nats_dict(indices: tuple[int, ...] = FIXTURE_INDICES) -> dict:
    """The fixture records in the single-file NATS-Bench layout (``NATS-tss-v1_0-3ffb9.pickle.pbz2``)."""
    return {
        "meta_archs": meta_archs(),
        "arch2infos": {i: nats_states(i) for i in indices},
        "evaluated_indexes": list(indices),
    }


def drop_seed(state: dict, dataset: str, seed: int) -> dict:
    """A copy of an ArchResults state without the trial of ``seed`` on ``dataset`` (NB201 v1_1 has such gaps)."""
    state = copy.deepcopy(state)
    state["dataset_seed"][dataset].remove(seed)
    del state["all_results"][(dataset, seed)]
    return state

"""Sampling NB201 cells: dedup counts over the whole space, equivalence semantics, reproducibility, strata."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest
from nb201_fixture import FIXTURE_DIR

from ahps_core.benchmarks import open_benchmark
from ahps_core.errors import ConfigError
from ahps_core.graph import parse_arch, parse_nb201_arch_str
from ahps_core.sampling import NO_PATH_REASON, all_cells, iso_key, sample_cells

SHARED_CONV = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|skip_connect~1|skip_connect~2|"  # 2 * c(x)
TWO_CONVS = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|"  # c(x) + c'(x)


@pytest.fixture(scope="module")
def classes():
    """rule -> key -> member cells, over all 15,625 cells (keys None = no path)."""
    out = {}
    for rule in ("function", "graph", "nb201"):
        groups = defaultdict(list)
        for a in all_cells():
            groups[iso_key(a, rule)].append(a)
        out[rule] = groups
    return out


def test_space_and_class_counts(classes):
    cells = all_cells()
    assert len(cells) == len(set(cells)) == 5**6
    no_path = [a for a in cells if not parse_arch(a).has_path]
    assert len(no_path) == 341
    for rule, with_path in (("function", 5424), ("graph", 8764), ("nb201", 6461)):
        assert len(classes[rule]) - 1 == with_path, rule
        assert sorted(classes[rule][None]) == sorted(no_path)
    # The literature's 6,466 is NB201's own key over every cell, the 5 keys of path-less cells included.
    from nats_bench.genotype_utils import topology_str2structure

    assert len({topology_str2structure(a).to_unique_str(consider_zero=True) for a in cells}) == 6466


def _op_counts(arch, ops=("nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")):
    return frozenset(Counter(e.name for e in parse_arch(arch).path_edges if e.name in ops).items())


def test_function_classes_refine_nothing_they_should_not(classes):
    # every graph-isomorphism class lies inside one function class ...
    fkey = {a: k for k, members in classes["function"].items() for a in members}
    for key, members in classes["graph"].items():
        if key is not None:
            assert len({fkey[a] for a in members}) == 1

    # ... and a function class never mixes numbers of convs/pools (parameters), unlike NB201's key
    def mixed(rule, **kw):
        return sum(1 for k, m in classes[rule].items() if k is not None and len({_op_counts(a, **kw) for a in m}) > 1)

    assert mixed("function") == 0
    assert mixed("nb201") == 644
    assert mixed("nb201", ops=("nor_conv_1x1", "nor_conv_3x3")) == 430
    assert iso_key(SHARED_CONV, "nb201") == iso_key(TWO_CONVS, "nb201")
    assert iso_key(SHARED_CONV) != iso_key(TWO_CONVS)


def _surrogate_output(arch, x):
    """The cell with every conv/pool replaced by one fixed function per op type; a function class must map
    to one output (the converse need not hold: fixed functions hide weight sharing)."""
    f = {
        "nor_conv_1x1": lambda v: np.tanh(1.3 * v + 0.2),
        "nor_conv_3x3": lambda v: np.tanh(np.roll(v, 1) - 0.7 * v),
        "avg_pool_3x3": lambda v: 0.5 * (v + np.roll(v, -1)),
    }
    nodes = [x]
    for group in parse_nb201_arch_str(arch):
        total = np.zeros_like(x)
        for src, op in enumerate(group):
            if op == "skip_connect":
                total = total + nodes[src]
            elif op != "none" and np.any(nodes[src]):
                total = total + f[op](nodes[src])
        nodes.append(total)
    return nodes[-1]


def test_cells_of_one_function_class_compute_the_same_output(classes):
    x = np.random.default_rng(0).normal(size=8)
    for key, members in classes["function"].items():
        if key is not None:
            ref = _surrogate_output(members[0], x)
            for a in members[1:]:
                np.testing.assert_allclose(_surrogate_output(a, x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        # a node fed by a skip from the input is the input: the skip chain collapses
        ("|skip_connect~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",
         "|none~0|+|nor_conv_3x3~0|none~1|+|none~0|none~1|skip_connect~2|", True),
        # swapping the two intermediate nodes
        ("|nor_conv_1x1~0|+|avg_pool_3x3~0|none~1|+|none~0|skip_connect~1|skip_connect~2|",
         "|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|none~0|skip_connect~1|skip_connect~2|", True),
        # dead branches (not reaching the output) do not matter
        ("|nor_conv_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|nor_conv_3x3~0|none~1|none~2|",
         "|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|", True),
        # conv(pool(x)) is not pool(conv(x))
        ("|avg_pool_3x3~0|+|none~0|nor_conv_3x3~1|+|none~0|none~1|skip_connect~2|",
         "|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|", False),
        # x + c(x) is not c(x)
        ("|none~0|+|none~0|none~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         "|none~0|+|none~0|none~1|+|none~0|none~1|nor_conv_3x3~2|", False),
    ],
)
def test_function_equivalence_examples(a, b, same):
    assert (iso_key(a) == iso_key(b)) is same


def test_samples_are_reproducible_nested_unique_and_have_paths():
    s = sample_cells(50, seed=7)
    assert s.cells == sample_cells(50, seed=7).cells
    assert s.cells != sample_cells(50, seed=8).cells
    assert sample_cells(20, seed=7).cells == s.cells[:20]
    assert len({iso_key(a) for a in s.cells}) == 50
    assert all(parse_arch(a).has_path for a in s.cells)
    assert (s.n_candidates, s.pool_size, s.n_duplicates, len(s.skipped)) == (15625, 5424, 9860, 341)
    assert s.skipped[0] == {"arch": all_cells()[0], "reason": NO_PATH_REASON}
    d = s.to_dict()
    assert d["n_skipped"] == 341 and d["dedup"] == "function" and d["cells"] == s.cells


def test_without_dedup_the_pool_is_every_cell_with_a_path():
    s = sample_cells(15625 - 341, seed=0, dedup=False)
    assert sorted(s.cells) == sorted(a for a in all_cells() if parse_arch(a).has_path)
    assert s.iso is None and s.n_duplicates == 0


def test_graph_and_nb201_rules_are_selectable():
    assert sample_cells(5, 0, iso="graph").pool_size == 8764
    assert sample_cells(5, 0, iso="nb201").pool_size == 6461


def test_a_sample_larger_than_the_space_is_refused_with_its_size():
    with pytest.raises(ConfigError, match=r"k=5,425.*only 5,424 unique cells.*341 without a path"):
        sample_cells(5425, 0)
    sample_cells(5424, 0)  # the whole pool is fine


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0, "seed": 0}, "positive integer"),
        ({"k": 3, "seed": -1}, "non-negative"),
        ({"k": 3, "seed": 0, "space": "nb101"}, "accepted spaces are nb201"),
        ({"k": 3, "seed": 0, "iso": "wl"}, "accepted rules are function, graph, nb201"),
        ({"k": 3, "seed": 0, "stratify": True}, "needs benchmark records"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        sample_cells(**kwargs)


@pytest.fixture(scope="module")
def fixture_records():
    return open_benchmark(FIXTURE_DIR)


def test_stratified_on_the_three_fixture_architectures(fixture_records):
    acc = fixture_records.accuracies("cifar10")  # 85.86 (0), 91.58 (11), 88.79 (284)
    best = max(acc, key=acc.get)
    s = sample_cells(3, 0, records=fixture_records, dataset="cifar10", stratify=True)
    assert sorted(s.cells) == sorted(acc) and len(s.strata) == 3 and s.pool_size == 3
    for seed in range(10):  # 2 bins (2 lowest | best): the best architecture is always drawn
        s = sample_cells(2, seed, records=fixture_records, dataset="cifar10", stratify=True, strata=10)
        assert best in s.cells and [b["n_sampled"] for b in s.strata] == [1, 1]
    with pytest.raises(ConfigError, match="only 3 unique cells"):
        sample_cells(4, 0, records=fixture_records, dataset="cifar10")


class FakeRecords:
    """A stand-in for BenchmarkRecords over 600 real cells with made-up accuracies."""

    def __init__(self, cells):
        self.acc = {a: float(i % 97) + 0.001 * i for i, a in enumerate(cells)}

    def arch_strs(self):
        return list(self.acc)

    def accuracies(self, dataset, archs=None):
        return {a: self.acc[a] for a in archs}


def test_stratified_draws_equal_counts_per_accuracy_quantile():
    pool = [a for a in all_cells() if iso_key(a) is not None]
    firsts = {}
    for a in pool:
        firsts.setdefault(iso_key(a), a)
    records = FakeRecords(list(firsts.values())[:600])
    s = sample_cells(40, 3, records=records, dataset="cifar100", stratify=True, strata=4)
    edges = np.quantile(sorted(records.acc.values()), [0.25, 0.5, 0.75])
    per_bin = Counter(int(np.searchsorted(edges, records.acc[a])) for a in s.cells)
    assert per_bin == {0: 10, 1: 10, 2: 10, 3: 10}
    assert [b["n_pool"] for b in s.strata] == [150] * 4
    assert s.cells == sample_cells(40, 3, records=records, dataset="cifar100", stratify=True, strata=4).cells
    uneven = sample_cells(42, 3, records=records, dataset="cifar100", stratify=True, strata=4)
    assert sorted(b["n_sampled"] for b in uneven.strata) == [10, 10, 11, 11]
    full = sample_cells(600, 3, records=records, dataset="cifar100", stratify=True, strata=7)
    assert sorted(full.cells) == sorted(records.acc)

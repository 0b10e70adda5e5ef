"""Graph extraction from PyTorch modules with torch.fx, and loading ``MODULE:FACTORY`` model references."""

from __future__ import annotations

import random
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.errors import ArchSpecError, ConfigError, NoPathError
from ahps_core.graph import Op, parse_arch
from ahps_core.models import build_model, extract_graph, load_model_factory
from ahps_core.paths import enumerate_paths
from ahps_core.scaling import Transferer, depth_stats

torch.set_num_threads(1)

CONVENTIONS = ("reference", "paper", "wu")


def _codes(count: int, nodes: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["_".join("".join(rng.choice("012") for _ in range(i)) for i in range(1, nodes)) for _ in range(count)]


DAG_CODES = [
    "1", "2", "1_11", "2_12_002_0012", "2_22_222_2222", "1_11_111_1111", "0_12_022_1020", "2_11_111_1111",
    "0_00_000_0000", *_codes(24, 5, seed=0), *_codes(6, 7, seed=1),
]


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_dag_models_extract_to_their_path_statistics(family):
    """The extracted graph of a built mlp/cnn model (stem and readout are weight layers in it) has the same path
    statistics as the DAG code under both conventions; the reference convention's all-skip collapse is the
    only exception (a DAG whose paths have no weight edge counts as one base path there). Its merges are the
    DAG's, so the effective depth agrees too, and so does the transferred LR, kernel factor included: the graph
    family's default base kernel is the reference's 3 for convolutional graphs."""
    checked = collapsed = 0
    for code in DAG_CODES:
        dag = parse_arch(code, family)
        try:
            model = build_model(dag, num_classes=3, in_shape=(2, 4, 4), width=4)
        except NoPathError:
            assert not dag.has_path
            continue
        graph = extract_graph(model, name=code)
        assert graph.family == "graph" and graph.spec == code
        assert {e.kernel for e in graph.edges if e.op is Op.WEIGHT} == ({1} if family == "mlp" else {3, 1})
        for conv in CONVENTIONS:
            expected = depth_stats(dag, conv)
            if expected.collapsed:
                collapsed += 1
                continue
            assert depth_stats(graph, conv).to_dict() == expected.to_dict(), (code, conv)
            checked += 1
            got = Transferer("graph", 0.1, convention=conv)(graph)
            assert got.lr == pytest.approx(Transferer(family, 0.1, convention=conv)(dag).lr, rel=1e-12)
        for conv in CONVENTIONS:
            want = Transferer(family, 0.1, rule="effective-depth", convention=conv)(dag)
            got = Transferer("graph", 0.1, rule="effective-depth", convention=conv)(graph)
            assert (got.effective_depth, got.lr) == (want.effective_depth, pytest.approx(want.lr)), (code, conv)
    assert checked > 50 and collapsed >= 2


def test_extracted_cnn_kernel_factor_matches_the_cnn_family():
    dag = parse_arch("2_12_002_0012", "cnn", kernel_size=5)
    model = build_model(dag, num_classes=3, in_shape=(2, 6, 6), width=4)
    got = Transferer("graph", 0.1)(extract_graph(model))
    want = Transferer("cnn", 0.1, kernel_size=5)(dag)
    assert (got.kernel, got.base_kernel, got.kernel_factor) == (5, 3, pytest.approx(3 / 5))
    assert got.lr == pytest.approx(want.lr, rel=1e-12)


def _poly_mul(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for i, x in a.items():
        for j, y in b.items():
            out[i + j] = out.get(i + j, 0) + x * y
    return out


def _nb201_expected(cell_code: str, N: int) -> dict[int, int]:
    """Number of paths of the whole NB201 network per weight-layer count k, composed independently of fx: stem
    conv (k=1), N cells, reduction block (two paths: conv_a-conv_b, k=2; shortcut 1x1 conv, k=1), N cells,
    reduction, N cells, classifier (k=1). A cell contributes the path counts of its own graph."""
    cell: dict[int, int] = {}
    for k in enumerate_paths(parse_arch(cell_code, "nb201")):
        cell[k] = cell.get(k, 0) + 1
    net = {1: 1}
    for stage in range(3):
        for _ in range(N):
            net = _poly_mul(net, cell)
        if stage < 2:
            net = _poly_mul(net, {1: 1, 2: 1})
    return _poly_mul(net, {1: 1})


@pytest.mark.parametrize("cell_code", ["3_33_133", "1_01_001", "4_44_444", "2_02_002", "0_11_111", "3_34_140",
                                       "3_03_101", "2_34_111"])
def test_nb201_network_extracts_to_the_composed_path_counts(cell_code):
    model = build_model(parse_arch(cell_code, "nb201"), num_classes=10, in_shape=(3, 8, 8), C=4, N=2)
    hist = _nb201_expected(cell_code, N=2)
    for conv, offset in (("reference", 1), ("paper", -1), ("wu", 0)):  # graph family: L = k + 1 / k - 1 / k
        stats = depth_stats(extract_graph(model), conv)
        assert stats.num_paths == sum(hist.values())
        assert stats.sum_l3 == sum(n * (k + offset) ** 3 for k, n in hist.items())
        assert (stats.min_depth, stats.max_depth) == (min(hist) + offset, max(hist) + offset)


@pytest.mark.parametrize("cell_code", ["3_33_133", "1_01_001", "4_44_444", "2_02_002", "0_11_111", "3_34_140",
                                       "3_03_101", "2_34_111", "1_11_111", "0_42_102"])
def test_wu_unit_of_an_nb201_cell_is_its_extracted_network(cell_code):
    """Wu's unit counts an NB201 cell over the macro network composed without torch
    (:func:`ahps_core.nb201_graph.nb201_network_graph`); that is the graph fx extracts from the built network: the
    same paths and depths, the same additions (effective depth), for N = 2 cells per stage."""
    from ahps_core.nb201_graph import nb201_network_graph
    from ahps_core.paths import effective_depth

    cell = parse_arch(cell_code, "nb201")
    extracted = extract_graph(build_model(cell, num_classes=10, in_shape=(3, 8, 8), C=4, N=2))
    composed = nb201_network_graph(cell, 2)
    assert depth_stats(composed, "wu") == depth_stats(extracted, "wu") == depth_stats(cell, "wu", cells_per_stage=2)
    assert effective_depth(composed) == effective_depth(extracted)
    t = Transferer("nb201", 0.46, rule="effective-depth", cells_per_stage=2)(cell)
    assert t.effective_depth == Transferer("graph", 0.46, rule="effective-depth")(extracted).effective_depth


def test_full_nb201_network_extracts_fast():
    model = build_model(parse_arch("3_33_133", "nb201"), num_classes=10, in_shape=(3, 32, 32), init="default")
    start = time.perf_counter()
    graph = extract_graph(model)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    hist = _nb201_expected("3_33_133", N=5)
    assert depth_stats(graph).num_paths == sum(hist.values()) == 4**15 * 4


def test_hand_written_resnet():
    """TinyResNet: stem conv, blocks B1, B2 (identity shortcuts: paths with 2 or 0 convs), B3 (projection
    shortcut: 2 or 1 convs), B4 (identity), fc. Path polynomial z (1+z^2)^2 (z+z^2) (1+z^2) z = z^3 (1+z) (1+z^2)^3:
    k = 3..10 with counts 1, 1, 3, 3, 3, 3, 1, 1 (16 paths).
    Reference (L = k + 1 = 4..11): 64 + 125 + 3*216 + 3*343 + 3*512 + 3*729 + 1000 + 1331 = 7920.
    Paper (L = k - 1 = 2..9): 8 + 27 + 3*64 + 3*125 + 3*216 + 3*343 + 512 + 729 = 3520."""
    from fx_models import tiny_resnet

    graph = extract_graph(tiny_resnet())
    ref, paper = depth_stats(graph, "reference"), depth_stats(graph, "paper")
    assert (ref.num_paths, ref.sum_l3, ref.min_depth, ref.max_depth) == (16, 7920, 4, 11)
    assert (paper.num_paths, paper.sum_l3, paper.min_depth, paper.max_depth) == (16, 3520, 2, 9)
    assert sum(e.op is Op.WEIGHT for e in graph.edges) == 1 + 2 * 4 + 1 + 1  # stem, 8 convs, projection, fc
    assert {e.kernel for e in graph.edges if e.op is Op.WEIGHT} == {1, 3}


@pytest.mark.parametrize("ref", ["fx_models:mlp_2_12_002_0012", "tests.fx_models:mlp_2_12_002_0012"])
def test_acceptance_hand_written_mlp_transfers_like_its_dag_code(ref, monkeypatch):
    """``ahps lr --model tests.fx_models:mlp_2_12_002_0012`` must give the mlp DAG's LR: the graph family's
    default base (input -> hidden -> output, two weight edges) has the mlp base's statistics (reference L=3,
    paper L=1), and the extracted paths carry the stem and the readout."""
    monkeypatch.chdir(__file__.rsplit("/", 2)[0])  # the repository root, for the tests.fx_models form
    graph = extract_graph(load_model_factory(ref))
    dag = parse_arch("2_12_002_0012", "mlp")
    for conv in CONVENTIONS:
        got = Transferer("graph", 0.1, convention=conv)(graph)
        want = Transferer("mlp", 0.1, convention=conv)(dag)
        assert got.lr == pytest.approx(want.lr, rel=1e-12), conv
        assert got.target.sum_l3 == want.target.sum_l3
    assert Transferer("graph", 0.1)(graph).lr == pytest.approx(0.1 * (27 / 620) ** 0.5)


# --- extraction rules -------------------------------------------------------------------------------------------


class _Functional(nn.Module):
    """Parameters used through F.linear and a matrix product: both are weight edges."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 4))
        self.w2 = nn.Parameter(torch.randn(8, 3))
        self.scale = nn.Parameter(torch.ones(8))

    def forward(self, x):
        h = F.relu(F.linear(x, self.w1)) * self.scale
        return h @ self.w2


def test_functional_weights_are_weight_edges():
    graph = extract_graph(_Functional())
    assert [e.op for e in graph.edges] == [Op.WEIGHT, Op.WEIGHT]
    assert depth_stats(graph).sum_l3 == 3**3


class _Merges(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        s = sum([self.a(x), self.b(x), self.c(x)])  # one vertex with three inputs
        d = s + s  # the same tensor twice: two parallel paths
        zero = d.mul(0.0) + torch.zeros_like(d) + 0 * d  # no signal (NB201's 'none' op is x.mul(0.))
        e = torch.cat([d + zero, x.view(x.size(0), -1)], dim=1)  # concatenation merges; size() is no signal
        return self.out(e)


def test_merge_rules():
    graph = extract_graph(_Merges())
    three = [v for v in range(graph.num_nodes) if graph.in_degree(v) == 3]
    assert len(three) == 1  # the partial sums of sum([...]) are fused
    stats = depth_stats(graph, "paper")
    # paths: 3 branches x 2 (s + s) with 2 weight layers each, plus x -> cat -> out with 1
    assert stats.num_paths == 7 and stats.sum_l3 == 6 * 1**3 + 1 * 0**3


def test_kernel_sides():
    class Convs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 2, 7, padding=3)
            self.c2 = nn.Conv2d(2, 2, (3, 5), padding=(1, 2))

        def forward(self, x):
            return self.c2(self.c1(x).unsqueeze(-1).expand(-1, -1, -1, 4))

    graph = extract_graph(Convs())
    assert [e.kernel for e in graph.edges if e.op is Op.WEIGHT] == [7, 5]  # non-square: the largest side


def test_defaulted_extra_arguments_are_fixed_and_reported_outputs():
    class WithFlag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x, return_features=False, *, scale=None):
            h = self.l1(x)
            out = self.l2(h)
            return (h, out) if return_features else out

    assert depth_stats(extract_graph(WithFlag()), "paper").sum_l3 == 1


@pytest.mark.parametrize("module,match", [
    (nn.Sequential(nn.Linear(2, 2), nn.ConvTranspose2d(2, 2, 3)), "ConvTranspose2d with parameters"),
    (nn.Sequential(nn.ReLU(), nn.Dropout()), "no weight layer"),
])
def test_rejected_modules(module, match):
    with pytest.raises(ArchSpecError, match=match):
        extract_graph(module)


def test_untraceable_model_says_why():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.l(x)
            return x

    with pytest.raises(ArchSpecError, match="cannot be traced by torch.fx: TraceError: symbolically traced") as exc:
        extract_graph(Branchy())
    assert "\n" not in str(exc.value)


def test_several_inputs_several_outputs_and_constant_outputs_are_errors():
    class TwoIn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(2, 2)

        def forward(self, x, y):
            return self.l(x + y)

    class TwoOut(TwoIn):
        def forward(self, x):
            h = self.l(x)
            return h, self.l(h)

    class Constant(TwoIn):
        def forward(self, x):
            return self.l.weight * 2

    with pytest.raises(ArchSpecError, match=r"takes several inputs \(x, y\)"):
        extract_graph(TwoIn())
    with pytest.raises(ArchSpecError, match="returns 2 tensors computed from its input"):
        extract_graph(TwoOut())
    with pytest.raises(ArchSpecError, match="does not depend on its input"):
        extract_graph(Constant())
    with pytest.raises(ConfigError, match="expects a torch.nn.Module, got str"):
        extract_graph("resnet18")


# --- load_model_factory ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref,match", [
    ("fx_models.mlp", "one colon"),
    ("a:b:c", "one colon"),
    (":factory", "both parts non-empty"),
    ("no_such_module_ahps:f", "module 'no_such_module_ahps' not found"),
    ("fx_models:missing", "'fx_models' has no attribute 'missing'"),
    ("fx_models:DIGITS_CLASSES", "is a int, not callable"),
    ("builtins:dict", r"dict\(\) returned a dict, expected a torch.nn.Module"),
    ("json:loads", r"calling loads\(\) failed: TypeError"),
])
def test_bad_model_references(ref, match):
    with pytest.raises(ConfigError, match=match):
        load_model_factory(ref)


def test_module_import_errors_and_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "ahps_broken_mod.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "ahps_bad_dep.py").write_text("import ahps_missing_dependency\n")
    (tmp_path / "ahps_good_mod.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Linear(2, 2)\n\nclass Zoo:\n    make = staticmethod(make)\n"
    )
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    with pytest.raises(ConfigError, match="importing 'ahps_broken_mod' failed: RuntimeError: boom"):
        load_model_factory("ahps_broken_mod:make")
    with pytest.raises(ConfigError, match="importing 'ahps_bad_dep' failed: ModuleNotFoundError"):
        load_model_factory("ahps_bad_dep:make")
    assert isinstance(load_model_factory("ahps_good_mod:Zoo.make"), nn.Linear)  # found in the current directory
    assert sys.path == path_before

"""The worked examples E1-E7 of docs/worked-examples.md as fixed vectors (the conventions: docs/conventions.md)."""

from __future__ import annotations

import math

import pytest

from ahps_core.errors import ConfigError, NoPathError
from ahps_core.graph import parse_arch
from ahps_core.paths import effective_depth, path_stats
from ahps_core.scaling import Transferer, default_base, depth_stats, init_plan, sum_cubed_ratio, transfer_lr


def chain(h: int) -> str:
    """DAG code of a plain MLP with h hidden layers (h-1 weight edges after the stem)."""
    if h == 1:
        return "1"
    return "_".join("0" * (i - 1) + "2" for i in range(1, h))


@pytest.mark.parametrize("h,ref,paper", [
    (1, 1.0, 1.0), (2, 0.649519, 0.353553), (4, 0.353553, 0.125000), (5, 0.280566, 0.089443),
    (8, 0.164317, 0.044194),
])
def test_e1_plain_mlp_depths(h, ref, paper):
    g = parse_arch(chain(h), "mlp")
    assert Transferer("mlp", 1.0)(g).ratio == pytest.approx(ref, abs=1e-6)
    assert Transferer("mlp", 1.0, convention="paper")(g).ratio == pytest.approx(paper, abs=1e-6)
    # both conventions agree with the effective-depth rule on a chain: (L^3)^(-1/2) = L^(-3/2)
    for conv in ("reference", "paper"):
        eff = Transferer("mlp", 1.0, rule="effective-depth", convention=conv)(g).ratio
        assert eff == pytest.approx(Transferer("mlp", 1.0, convention=conv)(g).ratio, rel=1e-12)


def test_e1_h8_arithmetic():
    t = Transferer("mlp", 0.1)(parse_arch(chain(8), "mlp"))
    assert (t.target.sum_l3, t.base.sum_l3) == (1000, 27)
    assert t.lr == pytest.approx(0.0164317, abs=1e-7)


@pytest.mark.parametrize("code,depths,total,ratio", [
    ("1_01_001_0001", [3], 27, 1.0),
    ("2_02_002_0002", [7], 343, 0.280566),
    ("2_12_002_0012", [7, 5, 5, 3], 620, 0.208683),
    ("2_22_222_2222", [7, 6, 6, 5, 6, 5, 5, 4], 1430, 0.137409),
    ("2_11_111_1111", [4] * 4 + [3] * 4, 364, 0.272352),
    ("1_11_111_1111", [3], 27, 1.0),  # the all-skip quirk: one path of L=3
])
def test_e2_five_node_dags_reference(code, depths, total, ratio):
    t = Transferer("mlp", 0.1)(parse_arch(code, "mlp"))
    assert t.target.sum_l3 == total == sum(d**3 for d in depths)
    assert t.target.num_paths == len(depths)
    assert (t.target.min_depth, t.target.max_depth) == (min(depths), max(depths))
    assert t.ratio == pytest.approx(ratio, abs=1e-6)


def test_e2c_exact_lr():
    t = Transferer("mlp", 0.1)(parse_arch("2_12_002_0012", "mlp"))
    assert t.lr == pytest.approx(0.1 * math.sqrt(27 / 620), rel=1e-15)


def test_e2f_quirks_and_paper_literal_sum():
    g = parse_arch("1_11_111_1111", "mlp")
    assert path_stats(g, offset=3).sum_l3 == 216  # literal sum at the reference's unit
    assert math.sqrt(27 / 216) == pytest.approx(0.353553, abs=1e-6)
    assert depth_stats(g, "paper").sum_l3 == 8  # paper: 8 paths of one ReLU each
    # no path at all: an error under both conventions (the reference code treats it as the base)
    for conv in ("reference", "paper"):
        with pytest.raises(NoPathError, match="0_00_000_0000"):
            Transferer("mlp", 0.1, convention=conv)(parse_arch("0_00_000_0000", "mlp"))


@pytest.mark.parametrize("k,ratio", [(3, 0.280566), (5, 0.168340), (7, 0.120243)])
def test_e3_cnn_kernel_factor(k, ratio):
    g = parse_arch("2_02_002_0002", "cnn", kernel_size=k)
    t = Transferer("cnn", 1.0, kernel_size=k)(g)
    assert t.ratio == pytest.approx(ratio, abs=1e-6)
    assert t.kernel_factor == pytest.approx(3 / k)  # q = side length, not k^2 taps


@pytest.mark.parametrize("code,depths,total,lr", [
    ("1_01_001", [1], 1, 0.46),
    ("3_03_101", [3, 1], 28, 0.086932),
    ("3_13_113", [4, 2, 2, 1], 81, 0.051111),
    ("3_33_133", [4, 3, 3, 1], 119, 0.042168),
    ("3_33_333", [4, 3, 3, 2], 126, 0.040980),
    ("2_02_002", [4], 64, 0.057500),
    ("4_44_444", [1, 1, 1, 1], 4, 0.230000),
])
def test_e4_nb201_cells(code, depths, total, lr):
    t = Transferer("nb201", 0.46)(parse_arch(code, "nb201"))
    assert t.target.sum_l3 == total and t.target.num_paths == len(depths)
    assert t.lr == pytest.approx(lr, abs=1e-6)
    assert t.kernel_factor == 1.0  # reference: 1x1 and 3x3 alike, no kernel factor


def test_e4_exact_and_arch_string_equivalence():
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    a = Transferer("nb201", 0.46)(parse_arch("3_33_133", "nb201"))
    b = Transferer("nb201", 0.46)(parse_arch(s))
    assert a.lr == b.lr == pytest.approx(0.46 * 119 ** -0.5, rel=1e-15)


def test_e4_no_path_cell():
    with pytest.raises(NoPathError, match=r"'3_00_003' has no input->output path"):
        Transferer("nb201", 0.46)(parse_arch("3_00_003", "nb201"))


def test_nb201_paper_convention_kernel_factor():
    # paper: q = largest conv side in the cell vs q_base = 3; a 1x1-only chain gets 3x
    t = Transferer("nb201", 0.46, convention="paper")
    assert t(parse_arch("2_02_002", "nb201")).kernel_factor == 3.0
    assert t(parse_arch("3_33_333", "nb201")).kernel_factor == 1.0
    assert t(parse_arch("4_44_444", "nb201")).kernel_factor == 1.0  # no conv: no kernel


def test_e5_in_degree_init():
    g = parse_arch("2_12_002_0012", "mlp")
    assert [g.in_degree(v) for v in range(5)] == [1, 1, 2, 1, 2]
    src = [(p.edge.src, p.edge.dst, p.variance_scale) for p in init_plan(g)]
    dst = [(p.edge.src, p.edge.dst, p.variance_scale) for p in init_plan(g, "destination")]
    assert src == [(0, 1, 2.0), (1, 2, 2.0), (2, 3, 1.0), (3, 4, 2.0)]
    assert dst == [(0, 1, 2.0), (1, 2, 1.0), (2, 3, 2.0), (3, 4, 1.0)]
    full = parse_arch("2_22_222_2222", "mlp")
    assert [p.degree for p in init_plan(full)] == [1, 1, 1, 1, 1, 2, 1, 1, 2, 3]
    assert [p.degree for p in init_plan(full, "destination")] == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    mf = init_plan(full, "mean-field")
    assert [p.degree for p in mf] == [p.degree for p in init_plan(full, "destination")]
    mf_divisors = [d * (1 + (d - 1) / math.pi) for d in (1, 2, 2, 3, 3, 3, 4, 4, 4, 4)]
    assert [p.divisor for p in mf] == pytest.approx(mf_divisors)
    with pytest.raises(ConfigError, match="degree rule"):
        init_plan(g, "middle")


def resnet(k: int) -> dict:
    """x <- x + F(x), K one-layer blocks: block i is a skip and a weight edge from v{i} to v{i+1}."""
    edges = []
    for i in range(k):
        edges += [{"from": f"v{i}", "to": f"v{i + 1}", "op": "skip"},
                  {"from": f"v{i}", "to": f"v{i + 1}", "op": "weight"}]
    return {"edges": edges}


@pytest.mark.parametrize("k,plain,offset3", [
    (1, 1, 91), (2, 10, 280), (3, 54, 810), (4, 224, 2240), (5, 800, 5984), (10, 166_400, 585_728),
    (20, 1_205_862_400, 2_508_193_792),
])
def test_e6_resnet_path_sums(k, plain, offset3):
    g = parse_arch(resnet(k))
    assert path_stats(g).sum_l3 == plain
    assert plain * 8 == k * k * (k + 3) * 2**k  # closed form K^2 (K+3) 2^(K-3)
    assert path_stats(g, offset=3).sum_l3 == offset3
    assert effective_depth(g) == k  # the all-skip path passes k additions


def test_e6_chen_vs_wu_transfer_10_to_20():
    g10, g20 = parse_arch(resnet(10)), parse_arch(resnet(20))
    assert sum_cubed_ratio(path_stats(g10).sum_l3, path_stats(g20).sum_l3) == pytest.approx(0.011747, abs=1e-6)
    assert sum_cubed_ratio(path_stats(g10, offset=3).sum_l3, path_stats(g20, offset=3).sum_l3) == pytest.approx(
        0.015282, abs=1e-6)
    wu = (effective_depth(g10) / effective_depth(g20)) ** 1.5
    assert wu == pytest.approx(0.353553, abs=1e-6)
    # through the Transferer, base = the K=10 net, graph-family offsets declared in the file (0 + unit)
    t = Transferer("graph", 1.0, base=g10, rule="effective-depth")(g20)
    assert t.effective_depth - t.base_effective_depth == 10


def test_e7_wu_examples():
    def cnn_chain(layers: int) -> dict:
        return {"edges": [{"from": f"v{i}", "to": f"v{i + 1}", "op": "weight", "kernel": 3} for i in range(layers)]}

    cnn = (effective_depth(parse_arch(cnn_chain(10))) / effective_depth(parse_arch(cnn_chain(30)))) ** 1.5
    assert cnn == pytest.approx(0.192450, abs=1e-6)
    assert 0.05 * cnn == pytest.approx(0.0096225, abs=1e-7)

    def vit(blocks: int, embed: bool = False) -> dict:
        """2 residual units per block (attention and MLP: x <- x + F(x) each), optionally a patch embedding."""
        g = resnet(2 * blocks)
        if embed:
            g["edges"].insert(0, {"from": "x", "to": "v0", "op": "weight"})
        return g

    def wu(ref: dict, target: dict) -> float:
        return (effective_depth(parse_arch(ref)) / effective_depth(parse_arch(target))) ** 1.5

    assert effective_depth(parse_arch(vit(6))) == 12 and effective_depth(parse_arch(vit(6, embed=True))) == 13
    assert wu(vit(6), vit(12)) == pytest.approx(0.353553, abs=1e-6)
    assert wu(vit(6, embed=True), vit(12, embed=True)) == pytest.approx(0.374977, abs=1e-6)


def test_e7_offsets_through_the_transferer():
    """The Transferer adds the convention's unit to both effective depths; under ``paper`` (unit -1) a file's
    ``depth_offset: 1`` cancels it, leaving the raw layer counts of the worked example."""
    def cnn_chain(layers: int, depth_offset: int = 0) -> dict:
        edges = [{"from": f"v{i}", "to": f"v{i + 1}", "op": "weight", "kernel": 3} for i in range(layers)]
        return {"edges": edges, "depth_offset": depth_offset}

    def transfer(conv: str, depth_offset: int = 0):
        t = Transferer("graph", 0.05, base=parse_arch(cnn_chain(10, depth_offset)), rule="effective-depth",
                       convention=conv)
        return t(parse_arch(cnn_chain(30, depth_offset)))

    for conv, unit, ratio in (("reference", 1, 0.211372), ("paper", -1, 0.172889)):
        r = transfer(conv)
        assert (r.base_effective_depth, r.effective_depth) == (10 + unit, 30 + unit)
        assert r.ratio == pytest.approx(ratio, abs=1e-6) and r.kernel_factor == 1.0
    bare = transfer("paper", depth_offset=1)
    assert (bare.base_effective_depth, bare.effective_depth) == (10, 30)
    assert bare.ratio == pytest.approx(0.192450, abs=1e-6)
    assert bare.lr == pytest.approx(0.0096225, abs=1e-7)


def test_graph_family_matches_mlp_code_through_offsets():
    # a whole-network graph (stem and readout are weight layers) equals its DAG code under both conventions
    g = parse_arch({"edges": [
        {"from": "x", "to": "n0", "op": "linear"},                                     # stem
        {"from": "n0", "to": "n1", "op": "linear"}, {"from": "n1", "to": "n2", "op": "linear"},
        {"from": "n0", "to": "n2", "op": "skip"}, {"from": "n2", "to": "n3", "op": "linear"},
        {"from": "n3", "to": "n4", "op": "linear"}, {"from": "n2", "to": "n4", "op": "skip"},
        {"from": "n4", "to": "y", "op": "linear"},                                     # readout
    ]})
    code = parse_arch("2_12_002_0012", "mlp")
    for conv in ("reference", "paper"):
        a = Transferer("graph", 0.1, convention=conv)(g)
        b = Transferer("mlp", 0.1, convention=conv)(code)
        assert a.target.sum_l3 == b.target.sum_l3 and a.lr == pytest.approx(b.lr, rel=1e-15)
    assert default_base("graph").num_nodes == 3


# --- Wu's unit (convention wu, docs/conventions.md §2.7) ---------------------------------------------------------


@pytest.mark.parametrize("h", [1, 2, 3, 4, 6, 8])
def test_wu_counts_the_linear_layers_of_the_whole_mlp(h):
    """An MLP chain of h hidden layers has h + 1 Linear layers (stem and readout included): L = H + 1 under wu,
    against H + 2 (reference) and H (paper); effective-depth defaults to it, sum-cubed agrees on a chain."""
    g = parse_arch(chain(h), "mlp")
    t = Transferer("mlp", 1.0, rule="effective-depth")(g)
    assert t.convention == "wu" and (t.effective_depth, t.base_effective_depth) == (h + 1, 2)
    assert t.ratio == pytest.approx((2 / (h + 1)) ** 1.5, rel=1e-12)
    assert Transferer("mlp", 1.0, convention="wu")(g).ratio == pytest.approx(t.ratio, rel=1e-12)
    assert Transferer("mlp", 1.0).convention == "reference"  # sum-cubed keeps the reference code's unit
    for conv, unit in (("reference", h + 2), ("paper", h)):
        r = Transferer("mlp", 1.0, rule="effective-depth", convention=conv)(g)
        assert r.effective_depth == unit


def test_wu_counts_nb201_over_the_whole_macro_network():
    """Per cell (reference) the largest cell 3_33_333 gets ratio (1/3)^(3/2) = 0.19; over the whole network (wu):
    the identity-cell proxy has stem 1 + two reductions (shortcut conv + addition) 2 + 2 + classifier 1 = 6, the
    cell a conv and an addition per cell, 15 x 2 + 6 = 36, ratio (6/36)^(3/2) = 0.068. With N cells per stage the
    whole network changes; the existing conventions do not look at it."""
    from ahps_core.nb201_graph import nb201_network_graph

    big = parse_arch("3_33_333", "nb201")
    per_cell = Transferer("nb201", 0.46, rule="effective-depth", convention="reference")(big)
    assert (per_cell.effective_depth, per_cell.base_effective_depth) == (3, 1)
    assert per_cell.ratio == pytest.approx(3 ** -1.5, rel=1e-12) == pytest.approx(0.19245, abs=1e-5)
    whole = Transferer("nb201", 0.46, rule="effective-depth")(big)
    assert (whole.convention, whole.effective_depth, whole.base_effective_depth) == ("wu", 36, 6)
    assert whole.ratio == pytest.approx((6 / 36) ** 1.5, rel=1e-12) == pytest.approx(0.068041, abs=1e-6)
    assert whole.arch == big.spec and whole.family == "nb201" and whole.kernel_factor == 1.0
    small = Transferer("nb201", 0.46, rule="effective-depth", cells_per_stage=1)(big)
    assert (small.effective_depth, small.base_effective_depth) == (12, 6)
    for code, per_cell_eff in (("1_01_001", 6), ("3_33_133", 21), ("2_02_002", 51), ("4_44_444", 21)):
        g = parse_arch(code, "nb201")
        net = nb201_network_graph(g)
        assert net.family == "graph" and effective_depth(net) == per_cell_eff, code
        assert depth_stats(g, "wu") == path_stats(net)  # every weight layer on the path; no offset
    with pytest.raises(ConfigError, match="take unit_graph"):
        from ahps_core.scaling import depth_convention

        depth_convention(big, "wu")
    with pytest.raises(NoPathError):
        nb201_network_graph(parse_arch("3_00_003", "nb201"))


def test_the_existing_conventions_are_unchanged_by_wu():
    """E4's numbers and the reference/paper outputs stay what they were (pinned above, and here through the
    defaults a caller gets without naming a convention)."""
    g = parse_arch("3_33_133", "nb201")
    assert Transferer("nb201", 0.46)(g).lr == pytest.approx(0.04216813086329772, rel=1e-15)
    assert Transferer("nb201", 0.46, convention="paper")(g).to_dict()["convention"] == "paper"
    eff = Transferer("nb201", 0.46, rule="effective-depth", convention="reference")(g)
    assert (eff.effective_depth, eff.base_effective_depth) == (2, 1)


def test_huge_sums_do_not_overflow():
    assert sum_cubed_ratio(27, 10**800) == pytest.approx(math.exp(0.5 * (math.log(27) - 800 * math.log(10))))
    assert sum_cubed_ratio(27, 27) == 1.0


def test_bad_options():
    g = parse_arch("2_02", "mlp")
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="base learning rate"):
            transfer_lr(g, bad)
    with pytest.raises(ConfigError, match="unknown rule 'sqrt'"):
        transfer_lr(g, 0.1, rule="sqrt")
    with pytest.raises(ConfigError, match="unknown convention"):
        transfer_lr(g, 0.1, convention="mine")

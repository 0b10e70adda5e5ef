"""Models built from architecture graphs: structure, faithfulness to the reference networks, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ahps_core.errors import ConfigError, NoPathError
from ahps_core.graph import parse_arch
from ahps_core.models import DagNet, TinyNetwork, build_model, build_proxy, proxy_graph
from ahps_core.models.nb201 import InferCell, ReLUConvBN, ResNetBasicblock
from ahps_core.scaling import default_base, depth_stats

torch.set_num_threads(1)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _mlp(code: str, width: int = 8, **kw) -> DagNet:
    return build_model(parse_arch(code, "mlp"), num_classes=3, in_shape=(2, 3), width=width, **kw)


# --- MLP / CNN DAG networks ---------------------------------------------------------------------------------


def test_mlp_layout_matches_reference():
    """Stem Linear(in, w)+ReLU, one Linear(w, w)+ReLU per weight edge, readout Linear(w, classes)."""
    m = _mlp("2_12_002_0012", width=8)
    assert isinstance(m.stem, nn.Linear) and (m.stem.in_features, m.stem.out_features) == (6, 8)
    assert len(m.layers) == 4  # 0->1, 1->2, 2->3, 3->4
    for layer in m.layers:
        assert isinstance(layer[0], nn.Linear) and isinstance(layer[1], nn.ReLU)
        assert (layer[0].in_features, layer[0].out_features) == (8, 8)
    assert (m.readout.in_features, m.readout.out_features) == (8, 3)
    assert _params(m) == (6 * 8 + 8) + 4 * (8 * 8 + 8) + (8 * 3 + 3)


def test_mlp_forward_equals_hand_computation():
    """Vertex t = sum of op(vertex f); weight op = ReLU(Linear); skip = identity; readout on the last vertex."""
    m = _mlp("2_12_002_0012", width=8)
    x = torch.randn(5, 2, 3)
    relu = torch.relu
    L = {(m.graph.edges[i].src, m.graph.edges[i].dst): layer[0]
         for i, layer in zip(m.edge_index, m.layers, strict=True)}
    h0 = relu(m.stem(x.flatten(1)))
    h1 = relu(L[0, 1](h0))
    h2 = h0 + relu(L[1, 2](h1))
    h3 = relu(L[2, 3](h2))
    h4 = h2 + relu(L[3, 4](h3))
    torch.testing.assert_close(m(x), m.readout(h4))


def test_zero_edges_and_signal_free_vertices_are_not_built():
    # vertex 1 has only a zero input, so its out-edges 1->2, 1->3 carry no signal; vertex 3 reaches nothing
    m = _mlp("0_12_022_1020", width=8)
    built = {(m.graph.edges[i].src, m.graph.edges[i].dst) for i in m.edge_index}
    assert built == {(2, 4)}
    out = m.forward_vertices(torch.randn(4, 6))
    assert out[1] is None and out[3] is None and out[2] is not None and out[4] is not None
    assert _params(m) == (6 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)


def test_cnn_layout_matches_reference():
    m = build_model(parse_arch("2_02", "cnn", kernel_size=5), num_classes=4, in_shape=(3, 9, 7), width=6)
    assert isinstance(m.stem, nn.Conv2d)
    assert (m.stem.in_channels, m.stem.out_channels, m.stem.kernel_size, m.stem.padding) == (3, 6, (5, 5), (2, 2))
    assert [tuple(layer[0].kernel_size) for layer in m.layers] == [(5, 5), (5, 5)]
    assert all(layer[0].padding == (2, 2) and layer[0].stride == (1, 1) for layer in m.layers)
    x = torch.randn(2, 3, 9, 7)
    h = torch.relu(m.stem(x))
    for layer in m.layers:
        h = layer(h)
    torch.testing.assert_close(m(x), m.readout(h.mean((2, 3))))


def test_cnn_kernel_size_overrides_the_graph_and_is_recorded():
    m = build_model(parse_arch("2", "cnn"), num_classes=2, in_shape=(1, 5, 5), width=4, kernel_size=7)
    assert m.stem.kernel_size == (7, 7) and m.layers[0][0].kernel_size == (7, 7)
    assert m.graph.weight_kernels == {7}


def test_default_widths():
    assert build_model(parse_arch("2", "mlp"), num_classes=2, in_shape=(4,)).width == 256
    assert build_model(parse_arch("2", "cnn"), num_classes=2, in_shape=(1, 4, 4)).width == 64


@pytest.mark.parametrize("family,code,shape,kw", [
    ("mlp", "2_12_002_0012", (3, 6, 6), {"width": 8}),
    ("cnn", "2_12_002_0012", (3, 6, 6), {"width": 8}),
    ("nb201", "3_34_140", (3, 8, 8), {"C": 4, "N": 1}),
])
def test_channels_last_and_bf16_autocast(family, code, shape, kw):
    model = build_model(parse_arch(code, family), num_classes=5, in_shape=shape, **kw)
    x = torch.randn(3, *shape)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_plan_is_precomputed():
    """The forward pass walks a tuple plan made in __init__ (no graph traversal per call)."""
    m = _mlp("2_22_222_2222", width=4)
    assert isinstance(m._plan, tuple) and [v for v, _ in m._plan] == [1, 2, 3, 4]
    assert [len(terms) for _, terms in m._plan] == [1, 2, 3, 4]


# --- NAS-Bench-201 -------------------------------------------------------------------------------------------

# Parameter counts recorded by NATS-Bench topology search space (= NAS-Bench-201), file format v1.0, for
# architecture indexes 0, 11 and 284 at 200 epochs (CIFAR-10 / CIFAR-100 / ImageNet16-120), in millions.
NB201_PARAMS = [
    ("|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
     (0.129306, 0.135156, 0.136456)),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|",
     (0.802426, 0.808276, 0.809576)),
    ("|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|",
     (0.101306, 0.107156, 0.108456)),
]


@pytest.mark.parametrize("arch,params", NB201_PARAMS)
def test_nb201_parameter_counts_match_the_benchmark(arch, params):
    graph = parse_arch(arch)
    shapes = [(10, (3, 32, 32)), (100, (3, 32, 32)), (120, (3, 16, 16))]
    for (classes, shape), expected in zip(shapes, params, strict=True):
        model = build_model(graph, num_classes=classes, in_shape=shape, init="default")
        assert _params(model) == round(expected * 1e6)


@pytest.mark.parametrize("arch,params", NB201_PARAMS)
def test_full_cells_have_the_benchmarks_parameter_counts(arch, params):
    """``cell=full`` is NB201's exact network: the recorded counts on all three datasets (as ``pruned`` for these
    three cells, whose ops are all on input->output paths or parameter-free)."""
    graph = parse_arch(arch)
    shapes = [(10, (3, 32, 32)), (100, (3, 32, 32)), (120, (3, 16, 16))]
    for (classes, shape), expected in zip(shapes, params, strict=True):
        full = build_model(graph, num_classes=classes, in_shape=shape, init="default", cell="full")
        assert _params(full) == round(expected * 1e6)


# Cells with convs off every input->output path: ``full`` builds them (NB201's count), ``pruned`` does not.
OFF_PATH_CELLS = ["0_42_102", "0_02_314", "0_03_132", "0_41_320", "2_42_400", "1_24_020", "2_30_003", "3_00_303"]


def test_every_cells_full_count_follows_the_records():
    """Parameter counts are additive over a cell's ops, so the three recorded architectures give the count of every
    cell: with P the records (10 / 100 / 120 classes), one conv1x1 op in every cell adds P(0) - P(284), the rest of
    the network is 2 P(284) - P(0), and a conv3x3 op adds (P(11) - rest) / 3. ``full`` has that count for every cell
    (its ops all counted); ``pruned`` counts only the convs on input->output paths."""
    from ahps_core.graph import Op

    recorded = {index: params for index, (_, params) in zip((0, 11, 284), NB201_PARAMS, strict=True)}
    shapes = [(10, (3, 32, 32)), (100, (3, 32, 32)), (120, (3, 16, 16))]
    differ = 0
    for code in OFF_PATH_CELLS:
        graph = parse_arch(code, "nb201")
        path = set(graph.path_edges)
        for d, (classes, shape) in enumerate(shapes):
            p = {i: round(v[d] * 1e6) for i, v in recorded.items()}
            conv1, rest = p[0] - p[284], 2 * p[284] - p[0]
            conv3 = (p[11] - rest) // 3
            assert rest + 3 * conv3 == p[11]

            def count(edges, conv1=conv1, conv3=conv3, rest=rest) -> int:
                k = [e.kernel for e in edges if e.op is Op.WEIGHT]
                return rest + k.count(1) * conv1 + k.count(3) * conv3

            full = build_model(graph, num_classes=classes, in_shape=shape, init="default", cell="full")
            pruned = build_model(graph, num_classes=classes, in_shape=shape, init="default", cell="pruned")
            assert _params(full) == count(graph.edges), (code, classes)
            assert _params(pruned) == count([e for e in graph.edges if e in path]) < _params(full), (code, classes)
            differ += 1
    assert differ == 3 * len(OFF_PATH_CELLS)


def test_full_cells_compute_every_op_and_match_pruned_at_init():
    """A full cell evaluates the ops off every path as NB201 does (a node whose inputs are all ``none`` holds zeros;
    a conv out of it gives its BN shift, a learnable constant, 0 at init); with the pruned network's weights its
    output equals the pruned network's at init, and after the BN shift moves it does not."""
    graph = parse_arch("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|", "nb201")
    assert 2 not in graph.live_nodes  # node 2 has only none inputs: zeros
    full = build_model(graph, num_classes=4, in_shape=(3, 8, 8), C=4, N=1, cell="full")
    pruned = build_model(graph, num_classes=4, in_shape=(3, 8, 8), C=4, N=1, cell="pruned")
    cell = full.cells[0]
    assert isinstance(cell, InferCell) and len(cell.layers) == 2 and len(pruned.cells[0].layers) == 0
    # the pruned network's parameters, by name, into the full one (the convs off every path keep theirs)
    state = full.state_dict()
    assert set(pruned.state_dict()) < set(state)
    state.update(pruned.state_dict())
    full.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8)
    full.eval()
    pruned.eval()
    torch.testing.assert_close(full(x), pruned(x))
    dead = cell.layers[cell.edge_index.index(next(i for i, e in enumerate(graph.edges) if (e.src, e.dst) == (2, 3)))]
    with torch.no_grad():
        dead.op[2].bias.fill_(0.5)  # the BN shift of the conv out of the dead node reaches the output
    assert not torch.allclose(full(x), pruned(x))


def test_nb201_macro_structure():
    m = build_model(parse_arch("3_33_133", "nb201"), num_classes=10, in_shape=(3, 32, 32), C=8, N=2)
    assert isinstance(m, TinyNetwork)
    stem_conv, stem_bn = m.stem
    assert (stem_conv.in_channels, stem_conv.out_channels, stem_conv.kernel_size) == (3, 8, (3, 3))
    assert stem_conv.bias is None and isinstance(stem_bn, nn.BatchNorm2d)
    kinds = [type(c).__name__ for c in m.cells]
    stage = ["InferCell"] * 2
    assert kinds == stage + ["ResNetBasicblock"] + stage + ["ResNetBasicblock"] + stage
    assert [c.out_dim for c in m.cells] == [8, 8, 16, 16, 16, 32, 32, 32]
    red = m.cells[2]
    assert isinstance(red, ResNetBasicblock)
    assert red.conv_a.conv.stride == (2, 2) and red.conv_b.conv.stride == (1, 1)
    assert isinstance(red.downsample[0], nn.AvgPool2d) and red.downsample[0].kernel_size == 2
    assert red.downsample[1].kernel_size == (1, 1) and red.downsample[1].bias is None
    assert isinstance(m.lastact[0], nn.BatchNorm2d) and isinstance(m.lastact[1], nn.ReLU)
    assert m.classifier.in_features == 32
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_nb201_cell_ops_are_exactly_nb201s():
    graph = parse_arch("2_34_111", "nb201")
    cell = build_model(graph, num_classes=2, in_shape=(3, 8, 8), C=4, N=1).cells[0]
    assert isinstance(cell, InferCell)
    ops = {(graph.edges[i].src, graph.edges[i].dst): layer
           for i, layer in zip(cell.edge_index, cell.layers, strict=True)}
    assert set(ops) == {(0, 1), (0, 2), (1, 2)}  # skips are identities, not modules
    conv1, conv3, pool = ops[0, 1], ops[0, 2], ops[1, 2]
    for op, k in ((conv1, 1), (conv3, 3)):
        assert isinstance(op, ReLUConvBN)
        relu, conv, bn = op.op
        assert isinstance(relu, nn.ReLU) and not relu.inplace
        assert conv.kernel_size == (k, k) and conv.padding == ((k - 1) // 2,) * 2 and conv.bias is None
        assert bn.affine and bn.track_running_stats
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 3 and pool.stride == 1
    assert pool.padding == 1 and pool.count_include_pad is False
    cell.eval()
    x = torch.randn(2, 4, 8, 8)
    n1 = conv1(x)
    n2 = conv3(x) + pool(n1)
    torch.testing.assert_close(cell(x), x + n1 + n2)


def test_nb201_cell_sums_in_source_order():
    graph = parse_arch("3_31_133", "nb201")
    cell = build_model(graph, num_classes=2, in_shape=(3, 8, 8), C=4, N=1).cells[0].eval()
    op = {(graph.edges[i].src, graph.edges[i].dst): layer
          for i, layer in zip(cell.edge_index, cell.layers, strict=True)}
    x = torch.randn(2, 4, 8, 8)
    n1 = op[0, 1](x)
    n2 = op[0, 2](x) + n1
    n3 = x + op[1, 3](n1) + op[2, 3](n2)
    torch.testing.assert_close(cell(x), n3)


# --- proxies ---------------------------------------------------------------------------------------------------


def test_proxies_are_the_one_hidden_layer_bases():
    for fam in ("mlp", "cnn", "nb201"):
        assert depth_stats(proxy_graph(fam)) == depth_stats(default_base(fam))
    mlp = build_proxy("mlp", num_classes=10, in_shape=(1, 8, 8), width=16)
    assert len(mlp.layers) == 0 and _params(mlp) == (64 * 16 + 16) + (16 * 10 + 10)  # input -> hidden -> output
    cnn = build_proxy("cnn", num_classes=10, in_shape=(3, 8, 8), width=4, kernel_size=5)
    assert cnn.stem.kernel_size == (5, 5) and len(cnn.layers) == 0
    nb = build_proxy("nb201", num_classes=10, in_shape=(3, 16, 16), C=4, N=2)
    assert all(len(c.layers) == 0 for c in nb.cells if isinstance(c, InferCell))  # identity cells
    x = torch.randn(2, 3, 16, 16)
    assert nb(x).shape == (2, 10)


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,family", [("0_00_000", "mlp"), ("2_00_002", "cnn"), ("3_00_003", "nb201")])
def test_graphs_without_path_are_rejected(spec, family):
    with pytest.raises(NoPathError, match="no input->output path"):
        build_model(parse_arch(spec, family), num_classes=2, in_shape=(1, 4, 4))


@pytest.mark.parametrize("kwargs,match", [
    ({"num_classes": 0}, "num_classes 0"),
    ({"in_shape": (3, 0, 4)}, "in_shape"),
    ({"in_shape": (12,)}, r"\(channels, height, width\)"),
    ({"width": -1}, "width -1"),
    ({"kernel_size": 0}, "kernel_size 0"),
    ({"init": "xavier"}, "unknown init scheme 'xavier'"),
    ({"degree": "out"}, "unknown degree rule 'out'"),
])
def test_bad_options_are_config_errors(kwargs, match):
    args = {"num_classes": 2, "in_shape": (1, 4, 4)} | kwargs
    with pytest.raises(ConfigError, match=match):
        build_model(parse_arch("2", "cnn"), **args)


def test_options_that_do_not_apply_are_config_errors():
    with pytest.raises(ConfigError, match="width 8 does not apply to nb201"):
        build_model(parse_arch("3_33_133", "nb201"), num_classes=2, in_shape=(3, 8, 8), width=8)
    with pytest.raises(ConfigError, match="kernel_size 5 does not apply to mlp"):
        build_model(parse_arch("2", "mlp"), num_classes=2, in_shape=(4,), kernel_size=5)
    graph = parse_arch({"edges": [{"from": "a", "to": "b", "op": "weight"}]})
    with pytest.raises(ConfigError, match="family 'graph'"):
        build_model(graph, num_classes=2, in_shape=(4,))
    with pytest.raises(ConfigError, match="unknown model family 'rnn'"):
        build_proxy("rnn", num_classes=2, in_shape=(4,))


def test_proxy_is_the_transfer_rules_base():
    from ahps_core.models import PROXY_SPECS, proxy_graph
    from ahps_core.scaling import default_base

    for family, spec in PROXY_SPECS.items():
        g = proxy_graph(family)
        assert g.spec == spec and g.edges == default_base(family).edges

"""Architecture graphs from arbitrary PyTorch modules, by symbolic tracing with torch.fx.

:func:`extract_graph` traces ``module.forward`` and keeps only the structure the transfer rules need
(docs/conventions.md §1.3: paths and the weight layers on them):

* **weight edges**: ``nn.Linear`` and ``nn.Conv1d/2d/3d`` modules, and the functional forms ``F.linear``,
  ``F.conv1d/2d/3d`` (also ``torch.conv*d``), ``torch.addmm`` and matrix products (``@``, ``torch.matmul``,
  ``mm``, ``bmm``) whose weight operand is a parameter of the module (e.g. a custom module calling
  ``F.linear(x, self.weight)``). The edge's kernel is the kernel's side length (1 for linear layers); for a
  non-square kernel the largest side, which is what the kernel factor q of docs/conventions.md §1.3/§1.7 reads as "the
  kernel size" of a 1-D derivation.
* **merges**: an op that combines several input-derived tensors creates a vertex with one skip edge per
  tensor: additions (``+``, ``torch.add``, ``sum(...)``, in-place adds), and also concatenation, stacking and
  products of two input-derived tensors (the graph records that paths meet there; a concatenation is a merge
  of paths in the same sense). A chain of binary additions ``a + b + c`` whose partial sums are used nowhere
  else is one vertex with three inputs (so ``(a + b) + c`` with ``a + b`` used only there also counts as one
  addition for the effective depth). The same tensor added to itself (``x + x``) gives two parallel edges:
  two paths. Our own models sum each DAG vertex's terms in one recorded call
  (:func:`ahps_core.models.dag.vertex_sum`), so their extracted merges are exactly the DAG's.
* **transparent ops**: every other op on a single input-derived tensor (activations, norms, pooling, dropout,
  reshapes, flatten, mean, scaling by a parameter, ...) maps to the vertex of its input: identity-like edges
  collapse and create no vertex. Pooling therefore counts like a skip, as the reference code counts NB201's
  average pooling (docs/conventions.md §1.7).
* **no signal**: multiplication by a literal zero (NB201's ``none`` op, ``x.mul(0.)``), ``zeros_like`` and
  the other ``*_like``/``new_*`` constructors, and shape/dtype/device queries carry no signal.

The graph's input is the traced forward's (single) tensor argument, its output the tensor it returns; only
vertices on input->output paths are kept. Leaf ``torch.nn`` modules with parameters other than the weight
layers above and the norms/PReLU are rejected (the graph inside them is unknown), as are models fx cannot
trace (data-dependent control flow such as ``if x.sum() > 0:``).

The result is a ``graph``-family :class:`ArchGraph` of the *whole* network, stem and head included, so
:mod:`ahps_core.scaling`'s ``graph`` conventions apply (reference ``L = k + 1``, paper ``L = k - 1``): the graph
of a built ``mlp``/``cnn`` model has the DAG code's path statistics, effective depth and transferred LR (for
``cnn``, with ``base_kernel_size=3``, the cnn base's kernel). For NB201 it spans all 15 cells and the reduction
blocks, unlike the reference's per-cell ``nb201`` convention.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ahps_core.errors import ArchSpecError, ConfigError
from ahps_core.graph import ArchGraph, Edge, Op

WEIGHT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPARENT_PARAM_MODULES = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.PReLU,
)
#: functional weight layers: function -> (position of the input, position of the weight)
WEIGHT_FUNCTIONS = {
    F.linear: (0, 1),
    F.conv1d: (0, 1),
    F.conv2d: (0, 1),
    F.conv3d: (0, 1),
    torch.conv1d: (0, 1),
    torch.conv2d: (0, 1),
    torch.conv3d: (0, 1),
    torch.addmm: (1, 2),
}
MATMUL_FUNCTIONS = frozenset({operator.matmul, torch.matmul, torch.mm, torch.bmm})
MATMUL_METHODS = frozenset({"matmul", "mm", "bmm"})
MUL_FUNCTIONS = frozenset({operator.mul, torch.mul})
ADD_FUNCTIONS = frozenset({operator.add, operator.iadd, torch.add})
ADD_METHODS = frozenset({"add", "add_"})
MUL_METHODS = frozenset({"mul", "mul_"})
SIGNAL_FREE_FUNCTIONS = frozenset({
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
    torch.randint_like,
})
SIGNAL_FREE_METHODS = frozenset({
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
    "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset", "element_size",
    "is_contiguous", "is_floating_point", "is_complex", "get_device", "data_ptr", "tolist", "item",
})
TENSOR_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "real", "imag", "data"})


def extract_graph(module: nn.Module, *, name: str | None = None) -> ArchGraph:
    """The architecture graph (family ``graph``) of ``module``: see the module docstring for the rules.

    ``name`` becomes the graph's ``spec`` (default: the module's class name). Raises :class:`ArchSpecError` when
    the module cannot be traced, takes several inputs, uses an unknown parameterized layer, or has no weight
    layer between its input and its output.
    """
    if not isinstance(module, nn.Module):
        raise ConfigError(f"extract_graph expects a torch.nn.Module, got {type(module).__name__}")
    spec = name or type(module).__name__
    fx_graph = _trace(module, spec)
    return _Builder(module, spec).build(fx_graph)


def load_model_factory(ref: str, *args: Any) -> nn.Module:
    """Import ``package.module`` of ``ref = "package.module:factory"`` and return ``factory(*args)``, which must be
    an ``nn.Module``. ``factory`` may be a dotted attribute path (``module:Class.build``). Modules are looked up on
    ``sys.path`` and then in the current directory (:mod:`ahps_core.refs`). Every bad ref is a
    :class:`ConfigError`."""
    from ahps_core.refs import call_ref, load_ref, split_ref

    what = "model reference"
    factory = load_ref(ref, what)
    model = call_ref(factory, ref, what, *args)
    if not isinstance(model, nn.Module):
        _, attr_path = split_ref(ref, what)
        shown = ", ".join(repr(a) for a in args)
        raise ConfigError(
            f"{what} {ref!r}: {attr_path}({shown}) returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    return model


# --- internals ----------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    from ahps_core.refs import one_line

    return one_line(exc)


def _trace(module: nn.Module, spec: str) -> torch.fx.Graph:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params) or not positional:
        raise ArchSpecError(f"model {spec!r}: forward must take one tensor argument (no *args/**kwargs)")
    extra = positional[1:] + [p for p in params if p.kind is p.KEYWORD_ONLY]
    if any(p.default is p.empty for p in extra):
        raise ArchSpecError(
            f"model {spec!r} takes several inputs ({', '.join(p.name for p in [positional[0], *extra])}); "
            "extract_graph needs a model with a single tensor input (extra arguments need default values)"
        )
    concrete = {p.name: p.default for p in extra}
    try:
        return torch.fx.Tracer().trace(module, concrete_args=concrete or None)
    except Exception as exc:  # fx raises TraceError, TypeError, RuntimeError, ...
        raise ArchSpecError(f"model {spec!r} cannot be traced by torch.fx: {_one_line(exc)}") from exc


def _iter_nodes(arg: Any) -> Iterator[torch.fx.Node]:
    """fx nodes inside an argument structure, in order, with repetitions."""
    if isinstance(arg, torch.fx.Node):
        yield arg
    elif isinstance(arg, (list, tuple)):
        for a in arg:
            yield from _iter_nodes(a)
    elif isinstance(arg, dict):
        for a in arg.values():
            yield from _iter_nodes(a)
    elif isinstance(arg, slice):
        yield from _iter_nodes((arg.start, arg.stop, arg.step))


def _is_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _kernel_side(shape: tuple[int, ...] | torch.Size) -> int:
    """Side length of a kernel: 1 for linear weights, the largest side for (non-square) conv kernels."""
    return max(shape) if len(shape) else 1


class _Builder:
    """Walks an fx graph, mapping every node that carries input signal to a vertex."""

    def __init__(self, root: nn.Module, spec: str) -> None:
        self.root = root
        self.spec = spec
        self.vertex: dict[torch.fx.Node, int] = {}  # signal-carrying fx node -> vertex
        self.names: list[str] = []
        self.edges: list[Edge] = []
        self.sum_of: dict[torch.fx.Node, int] = {}  # fx addition node that created a merge vertex -> that vertex
        self.param_nodes: set[torch.fx.Node] = set()  # nodes computed from parameters/buffers only
        self.input_seen = False

    def new_vertex(self, node: torch.fx.Node) -> int:
        self.names.append(node.name)
        return len(self.names) - 1

    def build(self, fx_graph: torch.fx.Graph) -> ArchGraph:
        out_vertices: list[int] = []
        for node in fx_graph.nodes:
            if node.op == "output":
                out_vertices = sorted({self.vertex[n] for n in _iter_nodes(node.args) if n in self.vertex})
            else:
                v = self.visit(node)
                if v is not None:
                    self.vertex[node] = v
        if not out_vertices:
            raise ArchSpecError(f"model {self.spec!r}: its output does not depend on its input")
        if len(out_vertices) > 1:
            raise ArchSpecError(
                f"model {self.spec!r} returns {len(out_vertices)} tensors computed from its input; "
                "extract_graph needs a model that returns one tensor (the logits)"
            )
        output = out_vertices[0]
        full = ArchGraph(len(self.names), tuple(self.edges), "graph", self.spec, 0, output, tuple(self.names))
        if output == 0 or not full.weight_kernels:
            raise ArchSpecError(
                f"model {self.spec!r} has no weight layer (Linear/Conv) between its input and its output"
            )
        return _prune(full)

    # -- one fx node -------------------------------------------------------------------------------------
    def visit(self, node: torch.fx.Node) -> int | None:
        op = node.op
        if op == "placeholder":
            if self.input_seen:
                return None  # an argument fixed to its default value (concrete_args)
            self.input_seen = True
            return self.new_vertex(node)
        if op == "get_attr":
            self.param_nodes.add(node)
            return None
        signals = [n for n in _iter_nodes((node.args, node.kwargs)) if n in self.vertex]
        if not signals:
            if all(n in self.param_nodes for n in _iter_nodes((node.args, node.kwargs))):
                self.param_nodes.add(node)
            return None
        target = node.target
        if op == "call_module":
            sub = self.root.get_submodule(str(target))
            if isinstance(sub, WEIGHT_MODULES):
                kernel = 1 if isinstance(sub, nn.Linear) else _kernel_side(sub.kernel_size)
                return self.weight_edge(node, signals[0], kernel, str(target))
            if any(True for _ in sub.parameters()) and not isinstance(sub, TRANSPARENT_PARAM_MODULES):
                raise ArchSpecError(
                    f"model {self.spec!r}: layer {target!r} is a {type(sub).__name__} with parameters, which "
                    "extract_graph does not know: accepted parameterized layers are Linear, Conv1d/2d/3d "
                    "(weight layers) and normalization layers / PReLU (transparent)"
                )
        elif op == "call_function":
            if target is getattr and node.args[1] not in TENSOR_ATTRIBUTES:
                return None  # x.shape, x.dtype, ...
            if target in SIGNAL_FREE_FUNCTIONS:
                return None
            if target in MUL_FUNCTIONS and any(_is_zero(a) for a in node.args):
                return None
            if target in WEIGHT_FUNCTIONS:
                i_in, i_w = WEIGHT_FUNCTIONS[target]
                args = list(node.args) + [None] * 3
                x, w = args[i_in], node.kwargs.get("weight", args[i_w])
                if self.is_signal(x) and self.is_param(w):
                    kernel = 1 if target in (F.linear, torch.addmm) else _kernel_side(self.param_shape(w)[2:])
                    return self.weight_edge(node, x, kernel, getattr(target, "__name__", str(target)))
            if target in MATMUL_FUNCTIONS:
                edge = self.matmul_edge(node)
                if edge is not None:
                    return edge
        elif op == "call_method":
            if target in SIGNAL_FREE_METHODS:
                return None
            if target in MUL_METHODS and any(_is_zero(a) for a in node.args[1:]):
                return None
            if target in MATMUL_METHODS:
                edge = self.matmul_edge(node)
                if edge is not None:
                    return edge
        return self.combine(node, signals)

    def weight_edge(self, node: torch.fx.Node, src: torch.fx.Node, kernel: int, label: str) -> int:
        v = self.new_vertex(node)
        self.edges.append(Edge(self.vertex[src], v, Op.WEIGHT, kernel, label))
        return v

    def matmul_edge(self, node: torch.fx.Node) -> int | None:
        """``x @ W`` or ``W @ x`` with exactly one input-derived operand and a parameter: a weight edge."""
        if len(node.args) != 2:
            return None
        a, b = node.args
        if self.is_signal(a) and self.is_param(b):
            return self.weight_edge(node, a, 1, "matmul")
        if self.is_signal(b) and self.is_param(a):
            return self.weight_edge(node, b, 1, "matmul")
        return None

    def is_signal(self, arg: Any) -> TypeGuard[torch.fx.Node]:
        return isinstance(arg, torch.fx.Node) and arg in self.vertex

    def is_param(self, arg: Any) -> TypeGuard[torch.fx.Node]:
        return isinstance(arg, torch.fx.Node) and arg in self.param_nodes

    def combine(self, node: torch.fx.Node, signals: list[torch.fx.Node]) -> int:
        """One input tensor: the same vertex (transparent op). Several: a merge vertex with one skip edge each;
        an addition absorbs an addition among its arguments that nothing else uses (a partial sum)."""
        if len(signals) == 1:
            return self.vertex[signals[0]]
        is_add = node.target in (ADD_METHODS if node.op == "call_method" else ADD_FUNCTIONS)
        fused = None
        if is_add:
            fused = next((s for s in signals if s in self.sum_of and len(s.users) == 1 and signals.count(s) == 1),
                         None)
        v = self.sum_of[fused] if fused is not None else self.new_vertex(node)
        label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "merge")
        for s in signals:
            if s is not fused:
                self.edges.append(Edge(self.vertex[s], v, Op.SKIP, 1, label))
        if is_add:
            self.sum_of[node] = v
        return v

    def param_shape(self, node: torch.fx.Node) -> torch.Size:
        """Shape of a parameter-derived tensor, evaluating its (input-free) computation."""
        try:
            return self._param_value(node, {}).shape
        except Exception as exc:
            raise ArchSpecError(
                f"model {self.spec!r}: cannot determine the kernel of weight {node.name!r}: {_one_line(exc)}"
            ) from exc

    def _param_value(self, node: Any, memo: dict) -> Any:
        if not isinstance(node, torch.fx.Node):
            return node
        if node in memo:
            return memo[node]
        ev = lambda a: torch.fx.node.map_aggregate(a, lambda n: self._param_value(n, memo))  # noqa: E731
        if node.op == "get_attr":
            value: Any = self.root
            for part in str(node.target).split("."):
                value = getattr(value, part)
        elif node.op == "call_function":
            value = cast(Callable[..., Any], node.target)(*ev(node.args), **ev(node.kwargs))
        elif node.op == "call_method":
            self_arg, *rest = ev(node.args)
            value = getattr(self_arg, str(node.target))(*rest, **ev(node.kwargs))
        else:
            value = self.root.get_submodule(str(node.target))(*ev(node.args), **ev(node.kwargs))
        memo[node] = value
        return value


def _prune(graph: ArchGraph) -> ArchGraph:
    """Keep the vertices on input->output paths, numbered in topological order (the input first)."""
    useful = graph.useful_nodes
    order = [v for v in graph.topological_order if v in useful]
    new = {v: i for i, v in enumerate(order)}
    edges = tuple(
        Edge(new[e.src], new[e.dst], e.op, e.kernel, e.name) for e in graph.edges if e.src in new and e.dst in new
    )
    names = tuple(graph.node_names[v] for v in order)
    return ArchGraph(len(order), edges, "graph", graph.spec, new[graph.input], new[graph.output], names)

"""Architecture specs: every accepted form, parsed into a validated :class:`~ahps_core.graph.ArchGraph`.

Accepted specs (``family``):

* ``mlp`` / ``cnn``: the reference code's DAG codes, e.g. ``2_02_002``. Group *i* (1-based) lists the ops on
  the edges from vertices ``0..i-1`` into vertex *i*: ``0`` zero, ``1`` skip, ``2`` weight layer.
* ``nb201``: NAS-Bench-201 cells, as arch strings ``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...|`` or as
  digit codes ``3_10_...`` (``0`` none, ``1`` skip_connect, ``2`` nor_conv_1x1, ``3`` nor_conv_3x3,
  ``4`` avg_pool_3x3).
* ``graph``: a YAML or JSON file (or mapping) with nodes and typed edges, for anything else::

      nodes: [x, h1, h2, y]          # optional; defaults to the vertices the edges name
      input: x                       # optional when the graph has exactly one source
      output: y                      # optional when the graph has exactly one sink
      depth_offset: 0                # optional: constant added to every path depth (e.g. stem + readout)
      edges:
        - {from: x, to: h1, op: weight, kernel: 3}
        - {from: h1, to: y, op: skip}

A spec may carry its family as a prefix, ``FAMILY:SPEC`` (e.g. ``nb201:3_33_133``); NB201 arch strings
(starting with ``|``) are recognised without one. :func:`nb201_arch_string` and :func:`nb201_code` write an
NB201 cell back as an arch string (the benchmarks' key) or a digit code.

This module is pure Python: no torch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from ahps_core.checks import check_choice, check_int
from ahps_core.errors import ArchSpecError, ConfigError
from ahps_core.graph import FAMILIES, ArchGraph, Edge, Op


# --- reference encodings ---------------------------------------------------------------------------------

DAG_DIGITS = {"0": Op.ZERO, "1": Op.SKIP, "2": Op.WEIGHT}

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_OP_TYPES = {
    "none": (Op.ZERO, 1),
    "skip_connect": (Op.SKIP, 1),
    "nor_conv_1x1": (Op.WEIGHT, 1),
    "nor_conv_3x3": (Op.WEIGHT, 3),
    "avg_pool_3x3": (Op.POOL, 1),
}
NB201_NODES = 4

GRAPH_OP_ALIASES = {
    "weight": Op.WEIGHT,
    "linear": Op.WEIGHT,
    "conv": Op.WEIGHT,
    "skip": Op.SKIP,
    "identity": Op.SKIP,
    "skip_connect": Op.SKIP,
    "pool": Op.POOL,
    "avg_pool": Op.POOL,
    "max_pool": Op.POOL,
    "zero": Op.ZERO,
    "none": Op.ZERO,
}


# --- parsing ------------------------------------------------------------------------------------------------


def split_family_prefix(spec: str) -> tuple[str | None, str]:
    """``"nb201:3_33_133"`` -> ``("nb201", "3_33_133")``; a spec without a known prefix is returned as is."""
    head, sep, rest = spec.partition(":")
    if sep and head in FAMILIES:
        return head, rest
    return None, spec


def detect_family(spec: str, family: str | None) -> tuple[str, str]:
    """Resolve the family of ``spec``: an explicit ``FAMILY:`` prefix wins, NB201 arch strings are ``nb201``,
    file paths are ``graph``, digit codes take ``family`` (required for them: they are ambiguous)."""
    if family is not None:
        check_choice("family", family, FAMILIES)
    prefixed, body = split_family_prefix(spec.strip())
    if prefixed is not None:
        return prefixed, body
    body = body.strip()
    if body.startswith("|"):
        return "nb201", body
    if body.endswith((".yaml", ".yml", ".json")) or os.sep in body:
        return "graph", body
    if family is None:
        raise ArchSpecError(
            f"architecture {body!r}: digit codes are ambiguous, pass --family (one of mlp, cnn, nb201) "
            "or prefix the spec with FAMILY:"
        )
    return family, body


def parse_arch(spec: str | Mapping, family: str | None = None, *, kernel_size: int | None = None) -> ArchGraph:
    """Parse any accepted spec into a validated :class:`ArchGraph`.

    ``spec`` may also be a mapping in the ``graph`` format. ``kernel_size`` sets the kernel of the weight
    edges of ``cnn`` DAG codes (default 3, the reference code's base kernel).
    """
    if isinstance(spec, Mapping):
        return _parse_graph_mapping(spec, str(spec.get("name", "<mapping>")))
    if not isinstance(spec, str) or not spec.strip():
        raise ArchSpecError(f"empty architecture spec {spec!r}")
    fam, body = detect_family(spec, family)
    if fam in ("mlp", "cnn"):
        graph = _parse_dag_code(body, fam)
        if fam == "cnn":
            graph = graph.with_kernel(3 if kernel_size is None else check_int("kernel size", kernel_size, 1))
        return graph
    if fam == "nb201":
        return _parse_nb201(body)
    return _parse_graph_file(body)


def _groups(code: str, spec: str, allowed: str, family: str) -> list[str]:
    groups = code.split("_")
    if not code or any(not g for g in groups):
        raise ArchSpecError(f"architecture {spec!r}: malformed {family} code (empty group)")
    for i, g in enumerate(groups, start=1):
        bad = [c for c in g if c not in allowed]
        if bad:
            raise ArchSpecError(
                f"architecture {spec!r}: unknown op {bad[0]!r} in group {i}; "
                f"accepted digits for {family} are {', '.join(allowed)}"
            )
        if len(g) != i:
            raise ArchSpecError(
                f"architecture {spec!r}: group {i} ({g!r}) has {len(g)} digits, expected {i} "
                f"(group i lists the ops from nodes 0..i-1 into node i)"
            )
    return groups


def _parse_dag_code(code: str, family: str) -> ArchGraph:
    groups = _groups(code, code, "012", family)
    edges = []
    for dst, group in enumerate(groups, start=1):
        for src, digit in enumerate(group):
            op = DAG_DIGITS[digit]
            edges.append(Edge(src, dst, op, 1, "linear" if op is Op.WEIGHT and family == "mlp" else op.value))
    return ArchGraph(len(groups) + 1, tuple(edges), family, code)


def _nb201_graph(ops: list[list[str]], spec: str) -> ArchGraph:
    edges = []
    for dst, group in enumerate(ops, start=1):
        for src, name in enumerate(group):
            op, kernel = NB201_OP_TYPES[name]
            edges.append(Edge(src, dst, op, kernel, name))
    return ArchGraph(NB201_NODES, tuple(edges), "nb201", spec)


def _parse_nb201(body: str) -> ArchGraph:
    if body.startswith("|"):
        return _nb201_graph(parse_nb201_arch_str(body), body)
    groups = _groups(body, body, "01234", "nb201")
    if len(groups) != NB201_NODES - 1:
        raise ArchSpecError(
            f"architecture {body!r}: a NAS-Bench-201 cell code has {NB201_NODES - 1} groups "
            f"(like 3_33_133), got {len(groups)}"
        )
    return _nb201_graph([[NB201_OPS[int(c)] for c in g] for g in groups], body)


def parse_nb201_arch_str(arch: str) -> list[list[str]]:
    """``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|`` -> ``[[a], [b, c], [d, e, f]]`` with full validation."""
    nodes = arch.split("+")
    if len(nodes) != NB201_NODES - 1:
        raise ArchSpecError(
            f"architecture {arch!r}: a NAS-Bench-201 arch string has {NB201_NODES - 1} '+'-separated "
            f"node groups, got {len(nodes)}"
        )
    out: list[list[str]] = []
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")) or len(node) < 2:
            raise ArchSpecError(f"architecture {arch!r}: node group {node!r} must look like |op~0|op~1|")
        items = [s for s in node[1:-1].split("|")]
        if len(items) != i:
            raise ArchSpecError(
                f"architecture {arch!r}: node {i} has {len(items)} inputs, expected {i} (from nodes 0..{i - 1})"
            )
        ops = [""] * i
        for item in items:
            name, sep, src = item.partition("~")
            if not sep or not src.isdigit():
                raise ArchSpecError(f"architecture {arch!r}: malformed edge {item!r}, expected op~source")
            if name not in NB201_OP_TYPES:
                raise ArchSpecError(
                    f"architecture {arch!r}: unknown op {name!r}; accepted ops are {', '.join(NB201_OPS)}"
                )
            j = int(src)
            if j >= i or ops[j]:
                raise ArchSpecError(
                    f"architecture {arch!r}: node {i} lists source {j} "
                    f"{'twice' if j < i else 'out of range'} (sources are 0..{i - 1}, once each)"
                )
            ops[j] = name
        out.append(ops)
    return out


def nb201_arch_str(ops: Iterable[Iterable[str]]) -> str:
    return "+".join("|" + "|".join(f"{op}~{j}" for j, op in enumerate(group)) + "|" for group in ops)


def nb201_arch_string(arch: str | ArchGraph) -> str:
    """The canonical NB201 arch string (``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``, the key of the benchmarks'
    architecture lists) of an NB201 arch string, digit code or cell graph."""
    return nb201_arch_str(_cell_ops(arch))


def nb201_code(arch: str | ArchGraph) -> str:
    """The digit code (``3_33_133``) of an NB201 arch string, digit code or cell graph."""
    return "_".join("".join(str(NB201_OPS.index(op)) for op in group) for group in _cell_ops(arch))


def _cell_ops(arch: str | ArchGraph) -> list[list[str]]:
    """The op names of an NB201 cell's edges, grouped by destination vertex, each group ordered by source."""
    graph = arch if isinstance(arch, ArchGraph) else parse_arch(arch, family="nb201")
    if graph.family != "nb201":
        raise ConfigError(f"architecture {graph.spec!r} is a {graph.family} graph: NB201 arch strings and codes "
                          "(and benchmark records) exist only for nb201 cells")
    ops: dict[int, dict[int, str]] = {}
    for e in graph.edges:
        ops.setdefault(e.dst, {})[e.src] = e.name
    return [[ops[d][src] for src in sorted(ops[d])] for d in sorted(ops)]


def _parse_graph_file(path: str) -> ArchGraph:
    from ahps_core.graph_files import load_graph_file

    if not os.path.lexists(path):
        raise ArchSpecError(f"graph file {path!r} does not exist (a graph spec is a YAML or JSON file)")
    data = load_graph_file(path)
    if not isinstance(data, Mapping):
        raise ArchSpecError(f"graph file {path!r}: expected a mapping with 'edges', got {type(data).__name__}")
    return _parse_graph_mapping(data, path)


def _short(value: object, limit: int = 80) -> str:
    """A bounded ``repr`` of a (possibly huge or deeply nested) value for a message."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlevel = 3
    return r.repr(value)[: limit * 2]


def _node_name(value: object, spec: str, where: str) -> str:
    """A node name: a string or an integer (YAML reads ``1`` as an int), nothing nested."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ArchSpecError(f"graph {spec!r}: {where} {_short(value)} is not a node name (a string or a number)")
    return str(value)


def _parse_graph_mapping(data: Mapping, spec: str) -> ArchGraph:
    unknown = set(data) - {"nodes", "edges", "input", "output", "depth_offset", "name"}
    if unknown:
        raise ArchSpecError(
            f"graph {spec!r}: unknown keys {_short(sorted(map(str, unknown)))}; accepted: nodes, edges, input, "
            "output, depth_offset"
        )
    raw_edges = data.get("edges")
    if not raw_edges:
        raise ArchSpecError(f"graph {spec!r} is empty: it has no edges")
    if not isinstance(raw_edges, list):
        raise ArchSpecError(f"graph {spec!r}: 'edges' must be a list, got {type(raw_edges).__name__}")
    declared = data.get("nodes")
    if declared is not None and not isinstance(declared, list):
        raise ArchSpecError(f"graph {spec!r}: 'nodes' must be a list of node names, got {_short(declared)}")
    names: list[str] = [_node_name(n, spec, "node") for n in declared] if declared is not None else []
    if len(set(names)) != len(names):
        raise ArchSpecError(f"graph {spec!r}: duplicate node names in 'nodes'")
    index = {n: i for i, n in enumerate(names)}
    edges: list[Edge] = []
    for k, e in enumerate(raw_edges):
        if not isinstance(e, Mapping) or "from" not in e or "to" not in e:
            raise ArchSpecError(f"graph {spec!r}: edge #{k} {_short(e)} needs 'from' and 'to'")
        ends = []
        for key in ("from", "to"):
            name = _node_name(e[key], spec, f"edge #{k} '{key}'")
            if name not in index:
                if declared is not None:
                    raise ArchSpecError(
                        f"graph {spec!r}: edge #{k} refers to undeclared node {_short(name)} (dangling edge)"
                    )
                index[name] = len(names)
                names.append(name)
            ends.append(index[name])
        raw_op = e.get("op", "weight")
        op = GRAPH_OP_ALIASES.get(raw_op) if isinstance(raw_op, str) else None
        if op is None:
            raise ArchSpecError(
                f"graph {spec!r}: edge #{k} has unknown op {_short(raw_op)}; accepted ops are "
                f"{', '.join(sorted(GRAPH_OP_ALIASES))}"
            )
        kernel = e.get("kernel", 1)
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1:
            raise ArchSpecError(f"graph {spec!r}: edge #{k} has kernel {_short(kernel)}, expected a positive integer")
        if ends[0] == ends[1]:
            raise ArchSpecError(f"graph {spec!r}: edge #{k} is a self-loop on {_short(names[ends[0]])} (cycle)")
        edges.append(Edge(ends[0], ends[1], op, kernel, raw_op))
    n = len(names)
    has_in, has_out = [False] * n, [False] * n  # one pass over the edges: linear time
    for edge in edges:
        has_out[edge.src] = True
        has_in[edge.dst] = True
    isolated = [names[v] for v in range(n) if not (has_in[v] or has_out[v])]
    if isolated:
        raise ArchSpecError(f"graph {spec!r}: dangling node(s) {_short(isolated)} have no edges")
    sources = [v for v in range(n) if not has_in[v]]
    sinks = [v for v in range(n) if not has_out[v]]
    inp = _endpoint(data, "input", sources, names, index, spec)
    out = _endpoint(data, "output", sinks, names, index, spec)
    if inp == out:
        raise ArchSpecError(f"graph {spec!r}: input and output are the same node {_short(names[inp])}")
    offset = data.get("depth_offset", 0)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ArchSpecError(f"graph {spec!r}: depth_offset {_short(offset)} must be a non-negative integer")
    graph = ArchGraph(n, tuple(edges), "graph", spec, inp, out, tuple(names), offset)
    graph.topological_order  # noqa: B018 - validates acyclicity now, with a clear error
    return graph


def _endpoint(data: Mapping, key: str, candidates: list[int], names: list[str], index: dict, spec: str) -> int:
    if key in data:
        name = _node_name(data[key], spec, f"'{key}'")
        if name not in index:
            raise ArchSpecError(f"graph {spec!r}: {key} node {_short(name)} is not a node of the graph")
        return index[name]
    if len(candidates) != 1:
        which = "sources (nodes without inputs)" if key == "input" else "sinks (nodes without outputs)"
        raise ArchSpecError(
            f"graph {spec!r}: cannot infer '{key}': the graph has {len(candidates)} {which} "
            f"{_short([names[v] for v in candidates[:20]])}; name it with '{key}:'"
        )
    return candidates[0]

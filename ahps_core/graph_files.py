"""Reading graph-spec files (YAML or JSON) safely and in linear time.

* Only a **regular file** is read (never a FIFO, a device like ``/dev/zero``, or a directory, which could block
  or never end), checked on the open descriptor; at most :func:`max_graph_bytes` bytes (64 MiB by default,
  ``$AHPS_MAX_GRAPH_BYTES`` overrides it).
* YAML is parsed by libyaml's event stream and built **iteratively** (no recursion: a deeply nested file is a
  clear error, never a ``RecursionError``), with the safe loader's scalar types (null, bool, int, float, str);
  no tag can construct anything else. Without libyaml, ``yaml.safe_load`` is used. JSON goes through
  :func:`json.loads`.

Every failure is an :class:`~ahps_core.errors.ArchSpecError` naming the file. Pure Python (PyYAML), no torch.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from ahps_core.errors import ArchSpecError, ConfigError

#: The largest graph file read (bytes); ``$AHPS_MAX_GRAPH_BYTES`` overrides it.
MAX_GRAPH_BYTES = 64 << 20
#: The deepest nesting of lists/mappings accepted in a graph file (a graph spec needs 3).
MAX_NESTING = 64


def max_graph_bytes() -> int:
    """The size limit of graph files: ``$AHPS_MAX_GRAPH_BYTES`` (bytes), else :data:`MAX_GRAPH_BYTES`."""
    raw = os.environ.get("AHPS_MAX_GRAPH_BYTES", "").strip()
    if not raw:
        return MAX_GRAPH_BYTES
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigError(f"AHPS_MAX_GRAPH_BYTES {raw!r} must be a positive integer (bytes)")
    return limit


def read_graph_text(path: str) -> str:
    """The text of the graph file ``path`` (see the module docstring for what is refused)."""
    limit = max_graph_bytes()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ArchSpecError(f"graph file {path!r} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArchSpecError(f"graph file {path!r} is not a regular file (a directory, FIFO or device): a graph "
                                "spec is a YAML or JSON file")
        if info.st_size > limit:
            raise ArchSpecError(f"graph file {path!r} has {info.st_size} bytes, more than the limit of {limit} "
                                "(set AHPS_MAX_GRAPH_BYTES to raise it)")
        try:
            raw = fh.read(limit + 1)
        except OSError as exc:
            raise ArchSpecError(f"graph file {path!r} cannot be read: {exc.strerror}") from None
    if len(raw) > limit:  # it grew while being read
        raise ArchSpecError(f"graph file {path!r} is larger than the limit of {limit} bytes "
                            "(set AHPS_MAX_GRAPH_BYTES to raise it)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArchSpecError(f"graph file {path!r} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None


def load_graph_file(path: str) -> Any:
    """The document of the graph file ``path``: JSON for ``*.json``, else YAML (see the module docstring)."""
    text = read_graph_text(path)
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return load_yaml(text)
    except RecursionError:
        raise ArchSpecError(f"graph file {path!r} is nested too deeply to be a graph spec") from None
    except _TooDeep:
        raise ArchSpecError(f"graph file {path!r} is nested more than {MAX_NESTING} levels deep: not a graph "
                            "spec") from None
    except Exception as exc:  # json's ValueError, yaml.YAMLError (not a ValueError), our loader's refusals
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise ArchSpecError(f"graph file {path!r} is not valid {kind}: {exc}") from None


class _TooDeep(Exception):
    pass


# --- YAML: libyaml events -> Python values, iteratively ------------------------------------------------------------

_NULL = {"", "~", "null", "Null", "NULL"}
_BOOL = {"yes": True, "Yes": True, "YES": True, "true": True, "True": True, "TRUE": True, "on": True, "On": True,
         "ON": True, "no": False, "No": False, "NO": False, "false": False, "False": False, "FALSE": False,
         "off": False, "Off": False, "OFF": False}
_TAGS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool",
         "tag:yaml.org,2002:null", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map", "!"}
_SCALAR_TAGS = _TAGS - {"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map", "!"}


def _plain_scalar(value: str) -> Any:
    """A plain (unquoted) YAML scalar, typed exactly as ``yaml.safe_load`` types it: names (the common case) are
    checked here against YAML 1.1's booleans and nulls, anything else goes through PyYAML's own resolver and safe
    constructor."""
    first = value[:1]
    if first.isalpha() or first == "_":
        if value in _BOOL:
            return _BOOL[value]
        return None if value in _NULL else value
    return _typed(value, None)


def _typed(value: str, tag: str | None) -> Any:
    import yaml

    node = yaml.ScalarNode(tag or yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False)), value)
    if node.tag not in _SCALAR_TAGS:
        return value
    return yaml.constructor.SafeConstructor().construct_object(node)


def _scalar(event: Any) -> Any:
    tag = event.tag
    if tag is None and event.implicit[0]:  # plain: the common case
        return _plain_scalar(event.value)
    if tag is not None and tag not in _TAGS:
        raise ValueError(f"tag {tag!r} is not allowed in a graph file")
    if tag in _SCALAR_TAGS:
        return _typed(event.value, tag)
    return event.value  # quoted, or tagged "!": a string


def load_yaml(text: str) -> Any:
    """One YAML document as plain Python values (module docstring); libyaml when available."""
    try:
        from yaml._yaml import CParser
    except ImportError:  # pragma: no cover - PyYAML without libyaml
        import yaml

        return yaml.safe_load(text)
    from yaml import events as ev

    parser = CParser(text)
    anchors: dict[str, Any] = {}
    # open containers; for a mapping, keys[-1] holds its pending key (_NO_KEY when the next scalar is a key)
    stack: list[Any] = []
    keys: list[Any] = []
    root: list[Any] = []
    scalar_t, alias_t = ev.ScalarEvent, ev.AliasEvent
    seq_start, map_start = ev.SequenceStartEvent, ev.MappingStartEvent
    ends = (ev.SequenceEndEvent, ev.MappingEndEvent)
    get, check = parser.get_event, parser.check_event

    def add(value: Any) -> None:
        if not stack:
            if root:
                raise ValueError("a graph file holds one YAML document, found more")
            root.append(value)
            return
        top = stack[-1]
        if type(top) is list:
            top.append(value)
            return
        pending = keys[-1]
        if pending is _NO_KEY:
            if isinstance(value, (list, dict)):
                raise ValueError("a mapping key must be a scalar")
            keys[-1] = value
        else:
            top[pending] = value
            keys[-1] = _NO_KEY

    while check():
        event = get()
        kind = type(event)
        if kind is scalar_t:
            value = _scalar(event)
            if event.anchor:
                anchors[event.anchor] = value
            add(value)
        elif kind is seq_start or kind is map_start:
            if event.tag is not None and event.tag not in _TAGS:
                raise ValueError(f"tag {event.tag!r} is not allowed in a graph file")
            if len(stack) >= MAX_NESTING:
                raise _TooDeep
            container: Any = [] if kind is seq_start else {}
            if event.anchor:
                anchors[event.anchor] = container
            add(container)
            stack.append(container)
            keys.append(_NO_KEY)
        elif kind in ends:
            stack.pop()
            keys.pop()
        elif kind is alias_t:
            if event.anchor not in anchors:
                raise ValueError(f"unknown alias *{event.anchor}")
            add(anchors[event.anchor])
    return root[0] if root else None


_NO_KEY = object()


__all__ = ["MAX_GRAPH_BYTES", "MAX_NESTING", "load_graph_file", "load_yaml", "max_graph_bytes", "read_graph_text"]

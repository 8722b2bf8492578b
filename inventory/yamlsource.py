"""Reading YAML files while remembering where every key came from.

Validation errors must name ``file:line``; plain ``yaml.safe_load`` forgets positions. The loader
here is PyYAML's ``SafeLoader`` whose mappings come back as :class:`LocatedDict`, which keeps the
line of each key. Everything else behaves like a dict. Every YAML file metalchain reads comes
through :func:`read_yaml_file` or :func:`parse_yaml`.

An operator's file is plain data, and reading it costs time and memory in proportion to its
size, whatever it holds:

- aliases are shared, but every consumer (variable layering, rendering, JSON output) walks the
  values as trees, so an alias costs what its copy would. A "billion laughs" of 400 bytes is 9**7
  nodes once walked; the nodes reached through aliases are counted and capped
  (:data:`MAX_ALIAS_NODES`), and an alias inside its own anchor (a cycle) is refused;
- nesting is capped (:data:`MAX_NESTING`) before Python's recursion limit is;
- files are capped in size (:data:`MAX_YAML_BYTES`);
- only JSON's kinds of value are built: strings, numbers, booleans, null, lists and mappings.
  ``2024-01-31`` stays the string it looks like (not a ``datetime.date``), and the tags
  ``!!timestamp``, ``!!binary``, ``!!set``, ``!!omap`` and ``!!pairs`` are errors.

Every failure is an :class:`InventoryError` naming ``file:line``.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from inventory.errors import InventoryError


class LocatedDict(dict):
    """A dict that knows the file and line of itself and of each of its keys."""

    file: str = ""
    line: int = 0
    key_lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key_lines = {}

    def line_of(self, key: Any) -> int:
        """The 1-based line of ``key``, or of the mapping itself when the key is absent."""
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    """A list that knows the line of each item."""

    file: str = ""
    line: int = 0
    item_lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.item_lines = []

    def line_of(self, index: int) -> int:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return self.line


#: The largest YAML file read (an inventory of 10,000 hosts is about 4 MiB).
MAX_YAML_BYTES = 16 * 1024 * 1024
#: Lists and mappings inside each other deeper than this are refused (real files: < 15).
MAX_NESTING = 100
#: Nodes reached through aliases, each counted as the copy a consumer walks, per document.
MAX_ALIAS_NODES = 100_000

_NOT_DATA = ("timestamp", "binary", "set", "omap", "pairs")
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that records positions; constructs only plain data, boundedly."""

    source_name = "<yaml>"

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}   # id(node) -> values in it, aliases expanded
        self._alias_nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:   # else PyYAML reports the undefined alias
                if node.end_mark is None:   # PyYAML sets it when the collection is complete
                    raise yaml.composer.ComposerError(
                        None, None, f"alias *{event.anchor} is inside its own anchor "
                        "(a recursive structure)", event.start_mark)
                self._alias_nodes += self._expanded_size(node)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise yaml.composer.ComposerError(
                        None, None, f"aliases expand to more than {MAX_ALIAS_NODES} values "
                        f"(at *{event.anchor}); write the values out instead",
                        event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _expanded_size(self, root: yaml.Node) -> int:
        """The values under ``root`` with every alias inside it counted as a copy; computed
        only when an alias is met (files without aliases pay nothing), each node once."""
        sizes = self._sizes
        stack = [root]
        while stack:
            node = stack[-1]
            if id(node) in sizes:
                stack.pop()
                continue
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            todo = [c for c in children if id(c) not in sizes]
            if todo:
                stack.extend(todo)
                continue
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            stack.pop()
        return sizes[id(root)]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, ArithmeticError):
            # e.g. an integer of more than 4300 digits (Python's int() limit), !!float abc.
            # Python's message would quote the value, which may be a secret's.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}",
                node.start_mark) from None

    def construct_not_data(self, node: yaml.Node) -> Any:
        tag = node.tag.rsplit(":", 1)[-1]
        raise yaml.constructor.ConstructorError(
            None, None, f"the tag !!{tag} is not supported (metalchain files hold strings, "
            "numbers, booleans, lists and mappings)", node.start_mark)

    def construct_yaml_map(self, node: yaml.MappingNode):  # type: ignore[override]
        data = LocatedDict()
        data.file = self.source_name
        data.line = node.start_mark.line + 1
        yield data
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping, found {node.id}", node.start_mark)
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "found an unhashable key", key_node.start_mark) from exc
            if key in data:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            data[key] = self.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1

    def construct_yaml_seq(self, node: yaml.SequenceNode):  # type: ignore[override]
        data = LocatedList()
        data.file = self.source_name
        data.line = node.start_mark.line + 1
        yield data
        for item in node.value:
            data.append(self.construct_object(item, deep=True))
            data.item_lines.append(item.start_mark.line + 1)


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_yaml_map)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_yaml_seq)
for _tag in _NOT_DATA:
    _LocatingLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _LocatingLoader.construct_not_data)
# A plain 2024-01-31 is the string it looks like (PyYAML would build a date, or fail on
# 2024-13-01): the implicit timestamp resolver is left out of this loader's copy.
_LocatingLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def parse_yaml(text: str, source_name: str) -> Any:
    """Parse one YAML document with positions; raise InventoryError naming file:line."""
    if len(text) > MAX_YAML_BYTES:
        raise InventoryError(f"file too large ({len(text)} characters; at most "
                             f"{MAX_YAML_BYTES})", file=source_name, line=1)
    try:
        # PyYAML's reader checks every character when the loader is made.
        loader = _LocatingLoader(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise InventoryError(f"invalid YAML: control character U+{char:04X} is not allowed",
                             file=source_name, line=line) from None
    loader.source_name = source_name
    try:
        return loader.get_single_data()
    except RecursionError:
        raise InventoryError("invalid YAML: nested too deeply", file=source_name) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise InventoryError(f"invalid YAML: {problem}", file=source_name, line=line) from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"invalid YAML: {exc}", file=source_name) from None
    finally:
        loader.dispose()


def read_yaml_file(path: Path, display_name: str | None = None) -> Any:
    """Read a UTF-8 YAML file. Binary or non-UTF-8 content is a clear InventoryError."""
    name = display_name or str(path)
    try:
        # A FIFO or a device would block the open or never end: only regular files.
        if not stat.S_ISREG(path.stat().st_mode):
            raise InventoryError("not a regular file", file=name, line=1)
        with path.open("rb") as f:
            # In pieces: read(MAX_YAML_BYTES + 1) would allocate 16 MiB for every small file.
            pieces, size = [], 0
            while size <= MAX_YAML_BYTES and (piece := f.read(1 << 16)):
                pieces.append(piece)
                size += len(piece)
            raw = b"".join(pieces)
    except OSError as exc:
        raise InventoryError(f"cannot read file: {exc.strerror}", file=name) from None
    if len(raw) > MAX_YAML_BYTES:
        raise InventoryError(f"file too large (more than {MAX_YAML_BYTES} bytes)", file=name,
                             line=1)
    if b"\x00" in raw:
        raise InventoryError("not a text file (contains NUL bytes)", file=name, line=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError("not valid UTF-8", file=name, line=line) from None
    return parse_yaml(text, name)

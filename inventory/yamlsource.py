"""Reading YAML files while remembering where every key came from.

Validation errors must name ``file:line``; plain ``yaml.safe_load`` forgets positions. The loader
here is PyYAML's ``SafeLoader`` (no tags beyond the safe set) whose mappings come back as
:class:`LocatedDict`, which keeps the line of each key. Everything else behaves like a dict.
"""

from __future__ import annotations

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


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader that records positions; constructs only the safe tag set."""

    source_name = "<yaml>"

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


def parse_yaml(text: str, source_name: str) -> Any:
    """Parse one YAML document with positions; raise InventoryError naming file:line."""
    loader = _LocatingLoader(text)
    loader.source_name = source_name
    try:
        return loader.get_single_data()
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
        raw = path.read_bytes()
    except OSError as exc:
        raise InventoryError(f"cannot read file: {exc.strerror}", file=name) from None
    if b"\x00" in raw:
        raise InventoryError("not a text file (contains NUL bytes)", file=name, line=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InventoryError("not valid UTF-8", file=name, line=line) from None
    return parse_yaml(text, name)

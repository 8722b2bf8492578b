"""Output for the CLI: one JSON document with --json, rich tables on a terminal, plain
tab-separated lines otherwise (so that `| grep` and `| cut` work)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from inventory.secrets import Secret
from runtime.jsondoc import json_text

JSON_SCHEMA_VERSION = 1


def _default(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def to_json(doc: Any) -> str:
    return json_text(doc, default=_default).rstrip("\n")


def emit_json(kind: str, doc: dict[str, Any]) -> None:
    """Print one versioned JSON document: {"kind": ..., "version": 1, ...}."""
    body = {"kind": kind, "version": JSON_SCHEMA_VERSION, **doc}
    sys.stdout.write(json_text(body, default=_default))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(cell(v) for v in r))
        Console().print(t)
        return
    print("\t".join(columns))
    for r in rows:
        print("\t".join(cell(v) for v in r))


def line(text: str) -> None:
    print(text)

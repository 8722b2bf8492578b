"""One JSON document: UTF-8 text (non-ASCII kept as is), indented, ending in a newline."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.atomicfile import write_atomic


def json_text(doc: Any, *, default: Callable[[Any], Any] | None = None,
              sort_keys: bool = False) -> str:
    """``doc`` as the text of one JSON document (two-space indent, trailing newline)."""
    return json.dumps(doc, default=default, ensure_ascii=False, indent=2,
                      sort_keys=sort_keys) + "\n"


def write_json(path: Path, doc: Any, mode: int = 0o644, *,
               default: Callable[[Any], Any] | None = None, sort_keys: bool = False) -> None:
    """Write ``doc`` to ``path`` atomically (see :func:`runtime.atomicfile.write_atomic`)."""
    write_atomic(path, json_text(doc, default=default, sort_keys=sort_keys), mode)


def content_key(doc: Any) -> str:
    """A short, stable hash of ``doc`` (key order and whitespace do not count): a cache key.

    >>> content_key({"a": 1, "b": [2]}) == content_key({"b": [2], "a": 1})
    True
    """
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]

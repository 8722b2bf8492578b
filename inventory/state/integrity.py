"""Integrity errors as our own: a StateError naming the row and what it broke.

The driver's text is not passed on: PostgreSQL's detail line quotes the values (a token's hash,
say), and neither it nor SQLite's wording names the row the operator knows (the node, the run).
Only column names are taken from it.
"""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError

from inventory.errors import StateError

# PostgreSQL SQLSTATEs of the integrity class.
_PG_UNIQUE, _PG_NOT_NULL, _PG_FOREIGN_KEY, _PG_CHECK = "23505", "23502", "23503", "23514"
_SQLITE = re.compile(r"(UNIQUE|NOT NULL|FOREIGN KEY|CHECK) constraint failed(?::\s*(.*))?")


def integrity_error(row: str, exc: IntegrityError) -> StateError:
    """StateError("node 'n1': name already exists") for the row described by ``row``."""
    return StateError(f"{row}: {integrity_reason(exc)}")


def integrity_reason(exc: IntegrityError) -> str:
    orig = exc.orig
    text = str(orig)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code is not None:
        return _pg_reason(str(code), text)
    m = _SQLITE.search(text)
    if m is None:
        return f"violates a constraint of the store ({_first_line(text)})"
    kind, where = m.group(1), m.group(2) or ""
    # "nodes.name" / "host_keys.node_id, host_keys.key_type": keep the column names.
    columns = [c.strip().rsplit(".", 1)[-1] for c in where.split(",") if c.strip()]
    return _reason(kind, columns)


def _pg_reason(code: str, text: str) -> str:
    if code == _PG_UNIQUE:
        m = re.search(r"Key \(([^)]*)\)", text)
        return _reason("UNIQUE", [c.strip() for c in m.group(1).split(",")] if m else [])
    if code == _PG_NOT_NULL:
        m = re.search(r'column "([^"]+)"', text)
        return _reason("NOT NULL", [m.group(1)] if m else [])
    if code == _PG_FOREIGN_KEY:
        return _reason("FOREIGN KEY", [])
    if code == _PG_CHECK:
        return _reason("CHECK", [])
    return f"violates a constraint of the store ({_first_line(text)})"


def _reason(kind: str, columns: list[str]) -> str:
    cols = ", ".join(columns)
    if kind == "UNIQUE":
        return f"{cols} already exists" if cols else "already exists"
    if kind == "NOT NULL":
        return f"{cols} is missing" if cols else "a required value is missing"
    if kind == "FOREIGN KEY":
        return "refers to a row that does not exist"
    return f"breaks the check {cols}" if cols else "breaks a check of the schema"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no detail"

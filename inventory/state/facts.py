"""Per-host facts, the handlers a host is owed, and the drift found on it."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from inventory.state.base import StoreBase
from inventory.state.integrity import integrity_error
from inventory.state.schema import drift, facts, nodes, owed_handlers


class FactsMixin(StoreBase):
    def save_facts(self, name: str, data: dict[str, Any]) -> None:
        now = time.time()
        with self._write(f"facts of '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(facts.delete().where(facts.c.node_id == node_id))
            conn.execute(insert(facts).values(node_id=node_id, data=json.dumps(data),
                                              gathered_at=now))

    def all_facts(self) -> dict[str, dict[str, Any]]:
        """host name -> its last gathered facts (with ``gathered_at``)."""
        with self._read() as conn:
            rows = conn.execute(select(nodes.c.name, facts.c.data, facts.c.gathered_at)
                                .join(facts, facts.c.node_id == nodes.c.id)).all()
        return {r.name: {**json.loads(r.data), "gathered_at": r.gathered_at} for r in rows}

    # -- owed handlers and drift ----------------------------------------------------------------

    def owed_handlers(self, name: str) -> set[tuple[str, str]]:
        with self._read() as conn:
            rows = conn.execute(select(owed_handlers.c.role, owed_handlers.c.handler)
                                .join(nodes, nodes.c.id == owed_handlers.c.node_id)
                                .where(nodes.c.name == name)).all()
        return {(r.role, r.handler) for r in rows}

    def set_owed_handlers(self, name: str, owed: set[tuple[str, str]]) -> None:
        """Replace the set of handlers ``name`` is owed (written before acting)."""
        now = time.time()
        with self._write(f"owed handlers of '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(owed_handlers.delete().where(owed_handlers.c.node_id == node_id))
            for role, handler in sorted(owed):
                try:
                    conn.execute(insert(owed_handlers).values(node_id=node_id, role=role,
                                                              handler=handler, since=now))
                except IntegrityError as exc:
                    raise integrity_error(f"owed handler {role}/{handler} of '{name}'",
                                          exc) from None

    def save_drift(self, name: str, rows: list[dict[str, Any]]) -> None:
        """The drift found on ``name`` by its latest check (replaces the previous one)."""
        now = time.time()
        with self._write(f"drift of '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(drift.delete().where(drift.c.node_id == node_id))
            for r in rows:
                try:
                    conn.execute(insert(drift).values(
                        node_id=node_id, role=r.get("role"), resource=r.get("resource"),
                        status=r.get("status"), changes=json.dumps(r.get("changes", [])),
                        checked_at=now))
                except IntegrityError as exc:
                    raise integrity_error(f"drift of '{name}', resource {r.get('resource')!r}",
                                          exc) from None

    def drift_report(self) -> dict[str, list[dict[str, Any]]]:
        """host -> its drifted resources from the latest check (monitor/ exports these)."""
        with self._read() as conn:
            rows = conn.execute(select(nodes.c.name, drift).join(
                drift, drift.c.node_id == nodes.c.id).order_by(drift.c.id)).all()
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r.name, []).append({
                "role": r.role, "resource": r.resource, "status": r.status,
                "changes": json.loads(r.changes), "checked_at": r.checked_at})
        return out

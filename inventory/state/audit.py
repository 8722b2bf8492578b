"""The audit log."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from inventory.state.base import StoreBase
from inventory.state.schema import audit


def write_audit(conn: Connection, actor: str, action: str, target: str,
                detail: dict[str, Any]) -> None:
    """One audit row, inside the caller's transaction."""
    conn.execute(insert(audit).values(at=time.time(), actor=actor, action=action,
                                      target=target, detail=json.dumps(detail)))


class AuditMixin(StoreBase):
    @staticmethod
    def _audit(conn: Connection, actor: str, action: str, target: str,
               detail: dict[str, Any]) -> None:
        write_audit(conn, actor, action, target, detail)

    def record_audit(self, actor: str, action: str, target: str,
                     detail: dict[str, Any] | None = None) -> None:
        with self._write(f"audit record {action} of '{target}'") as conn:
            self._audit(conn, actor, action, target, detail or {})

    def audit_log(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(audit.c.target == target)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [{"at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": json.loads(r.detail)} for r in rows]

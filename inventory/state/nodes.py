"""Nodes, their lifecycle state and its history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from inventory.errors import InputError, StateError
from inventory.state.audit import write_audit
from inventory.state.base import StoreBase
from inventory.state.leases import HELD, Owner, lease_claim, lease_from_row
from inventory.state.schema import (
    deploy_tokens,
    drift,
    facts,
    host_keys,
    journal,
    leases,
    node_transitions,
    nodes,
    owed_handlers,
)
from inventory.state.states import NodeState, node_state, stored_state
from runtime.crashpoint import crash_point

#: What a forgotten node is renamed to: ``NAME~forgotten-ID``. "~" is not allowed in an
#: RFC 1123 host name, so no inventory host can ever take the name (or find the old history).
FORGOTTEN = "~forgotten-"
#: What forgetting a node deletes; its journal rows and transitions stay (history).
_FORGET = {"host keys": host_keys, "fact sets": facts, "owed handlers": owed_handlers,
           "drift rows": drift, "deploy tokens": deploy_tokens}


@dataclass(frozen=True)
class NodeRecord:
    id: int
    name: str
    state: NodeState | None
    reason: str
    state_since: float | None


@dataclass(frozen=True)
class Forgotten:
    """What :meth:`NodesMixin.forget_node` did: the rows it deleted per kind, and the name the
    node's history (journal rows, transitions) is kept under."""

    name: str
    kept_as: str
    deleted: dict[str, int]
    journal_rows: int
    transitions: int


class LeaseHeld(StateError):
    """A node cannot be forgotten while a lease on it exists."""


def is_forgotten(name: str) -> bool:
    return FORGOTTEN in name


@dataclass(frozen=True)
class Transition:
    from_state: NodeState | None
    to_state: NodeState
    reason: str
    at: float


def _record(row: Any) -> NodeRecord:
    return NodeRecord(row.id, row.name, stored_state(row.state, row.name), row.reason,
                      row.state_since)


class NodesMixin(StoreBase):
    def ensure_node(self, name: str) -> int:
        """The surrogate id of ``name``, creating its row on first use."""
        with self._write(f"node '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
        return int(node_id or 0)

    def node(self, name: str) -> NodeRecord | None:
        with self._read() as conn:
            row = conn.execute(select(nodes).where(nodes.c.name == name)).first()
        return None if row is None else _record(row)

    def list_nodes(self, *, forgotten: bool = False) -> list[NodeRecord]:
        """Every node (forgotten ones only with ``forgotten=True``)."""
        with self._read() as conn:
            rows = conn.execute(select(nodes).order_by(nodes.c.name)).all()
        return [_record(r) for r in rows if forgotten or not is_forgotten(r.name)]

    def forget_node(self, name: str, *, actor: str, detail: dict[str, Any] | None = None
                    ) -> Forgotten:
        """Remove what the store knows about host ``name``, in one transaction: its pinned
        keys, facts, owed handlers, drift and deploy tokens. Its journal rows and lifecycle
        transitions stay readable under ``NAME~forgotten-ID`` (the row keeps its id; the
        name is free again for a new host), and an audit row records who did it.

        InputError if there is no such node; :class:`LeaseHeld` if a lease on it exists.
        """
        if is_forgotten(name):
            raise InputError(f"'{name}' is already forgotten")
        with self._write(f"node '{name}' forgotten") as conn:
            node_id = self._node_id(conn, name, create=False)
            if node_id is None:
                raise InputError(f"no node named '{name}' in the state store")
            row = conn.execute(select(leases, nodes.c.name)
                               .join(nodes, nodes.c.id == leases.c.node_id)
                               .where(leases.c.node_id == node_id)).first()
            if row is not None:
                # A live lease keeps the host; an expired one, or one whose process on this
                # machine is gone, goes with the node (as a run would take it over).
                lease = lease_from_row(row)
                if lease_claim(lease, Owner.this_process("forget", "metalchain state forget"),
                               time.time()) == HELD:
                    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expires_at))
                    raise LeaseHeld(f"cannot forget '{name}': {lease.describe()}; the lease "
                                    f"expires at {until} unless its run renews it")
                conn.execute(delete(leases).where(leases.c.node_id == node_id))
            deleted = {kind: int(conn.execute(delete(table).where(
                table.c.node_id == node_id)).rowcount or 0) for kind, table in _FORGET.items()}
            kept_as = f"{name}{FORGOTTEN}{node_id}"
            now = time.time()
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(
                name=kept_as, state=None, reason=f"forgotten by {actor}", state_since=now))
            journal_rows = int(conn.execute(select(func.count()).select_from(journal).where(
                journal.c.node_id == node_id)).scalar_one())
            transitions = int(conn.execute(select(func.count()).select_from(node_transitions)
                                           .where(node_transitions.c.node_id == node_id))
                              .scalar_one())
            write_audit(conn, actor, "forget_node", name, {
                "node_id": node_id, "kept_as": kept_as, "deleted": deleted,
                "journal_rows": journal_rows, **(detail or {})})
        return Forgotten(name, kept_as, deleted, journal_rows, transitions)

    def rename_node(self, old: str, new: str) -> None:
        """Rename a node; its history, keys and journal follow (they point at the id)."""
        with self._write(f"node '{old}' renamed to '{new}'") as conn:
            if conn.execute(select(nodes.c.id).where(nodes.c.name == new)).first() is not None:
                raise InputError(f"cannot rename '{old}' to '{new}': that name is taken")
            res = conn.execute(update(nodes).where(nodes.c.name == old).values(name=new))
            if res.rowcount == 0:
                raise InputError(f"no node named '{old}' in the state store")

    def set_node_state(self, name: str, to_state: str, reason: str = "",
                       expect: tuple[str | None, ...] | None = None) -> Transition:
        """Move ``name`` to ``to_state`` and record the transition, atomically.

        With ``expect``, the move happens only if the current state is one of those
        (compare-and-set); otherwise StateError names the state it found. A state that is
        not a :class:`NodeState` is refused with a StateError naming it.
        """
        to_state = node_state(to_state, name)
        if expect is not None:
            expect = tuple(None if e is None else node_state(e, name) for e in expect)
        now = time.time()
        with self._write(f"node '{name}'") as conn:
            node_id = self._node_id(conn, name, create=True)
            current = stored_state(conn.execute(
                select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one(), name)
            if expect is not None and current not in expect:
                raise StateError(f"node '{name}' is {current or 'unmanaged'}, expected "
                                 f"{' or '.join(str(e) for e in expect)}")
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(
                state=to_state.value, reason=reason, state_since=now))
            conn.execute(insert(node_transitions).values(
                node_id=node_id, from_state=None if current is None else current.value,
                to_state=to_state.value, reason=reason, at=now))
        crash_point(f"provision.{to_state.value}")
        return Transition(current, to_state, reason, now)

    def transitions(self, name: str) -> list[Transition]:
        with self._read() as conn:
            rows = conn.execute(
                select(node_transitions).join(nodes, nodes.c.id == node_transitions.c.node_id)
                .where(nodes.c.name == name).order_by(node_transitions.c.id)).all()
        return [Transition(stored_state(r.from_state, name), node_state(r.to_state, name),
                           r.reason, r.at) for r in rows]

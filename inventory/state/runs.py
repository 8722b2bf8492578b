"""Runs and their journal (intent before a step, outcome after)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from inventory.errors import InputError, StateError
from inventory.state.base import StoreBase
from inventory.state.runowner import RunOwner, seen_status
from inventory.state.schema import journal, nodes, runs

JOURNAL_OUTCOMES = ("ok", "changed", "failed", "unreachable", "skipped")
#: The status of an intent whose step a resumed run ran again (its outcome never landed).
SUPERSEDED = "superseded"


@dataclass(frozen=True)
class JournalEntry:
    id: int
    run_uid: str
    host: str
    step_index: int
    step: str
    status: str
    started_at: float
    ended_at: float | None
    detail: dict[str, Any]


class RunsMixin(StoreBase):
    def start_run(self, kind: str, name: str, args: dict[str, Any] | None = None,
                  owner: RunOwner | None = None, outcome: dict[str, Any] | None = None
                  ) -> str:
        """A new run, ``running``; ``owner`` (the calling process) lets readers tell a run
        whose process is gone (see :mod:`inventory.state.runowner`); ``outcome`` is what is
        known of it so far (e.g. the hosts it plans to run), completed by :meth:`end_run`."""
        uid = uuid.uuid4().hex[:12]
        now = time.time()
        with self._write(f"run '{uid}'") as conn:
            conn.execute(insert(runs).values(
                uid=uid, kind=kind, name=name, args=json.dumps(args or {}), status="running",
                started_at=now, outcome=None if outcome is None else json.dumps(outcome),
                **_owner_values(owner, now)))
        return uid

    def heartbeat_run(self, uid: str) -> None:
        """The owner is still at it (readers on other hosts go by this)."""
        with self._write(f"run '{uid}'") as conn:
            conn.execute(update(runs).where(runs.c.uid == uid).values(
                heartbeat_at=time.time()))

    def end_run(self, uid: str, status: str, outcome: dict[str, Any] | None = None) -> None:
        """Record the run's final ``status``; ``outcome`` (e.g. the hosts not run) is merged
        into what :meth:`start_run` recorded and returned by :meth:`get_run` as ``outcome``."""
        with self._write(f"run '{uid}'") as conn:
            values: dict[str, Any] = {"status": status, "ended_at": time.time()}
            if outcome is not None:
                raw = conn.execute(select(runs.c.outcome).where(runs.c.uid == uid)).scalar()
                values["outcome"] = json.dumps({**(json.loads(raw) if raw else {}), **outcome})
            conn.execute(update(runs).where(runs.c.uid == uid).values(**values))

    def get_run(self, uid: str) -> dict[str, Any] | None:
        with self._read() as conn:
            r = conn.execute(select(runs).where(runs.c.uid == uid)).first()
        return None if r is None else _run_doc(r)

    def reopen_run(self, uid: str, owner: RunOwner | None = None) -> None:
        """Mark a run as running again (``--resume``), now owned by ``owner``."""
        now = time.time()
        with self._write(f"run '{uid}'") as conn:
            res = conn.execute(update(runs).where(runs.c.uid == uid).values(
                status="running", ended_at=None, **_owner_values(owner, now)))
            if res.rowcount == 0:
                raise InputError(f"no run '{uid}' in the state store (see: metalchain runs "
                                 "list)")

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent runs, newest first; a ``running`` run whose process is gone is
        shown ``interrupted``."""
        with self._read() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).all()
        return [_run_doc(r) for r in rows]

    def journal_intent(self, run_uid: str, host: str, step_index: int, step: str) -> int:
        """Record that ``step`` is about to run on ``host``; returns the entry id."""
        row = f"journal entry of run '{run_uid}', host '{host}', step {step_index}"
        with self._write(row) as conn:
            run_id = conn.execute(select(runs.c.id).where(runs.c.uid == run_uid)).scalar()
            if run_id is None:
                raise StateError(f"no run '{run_uid}' in the state store")
            node_id = self._node_id(conn, host, create=True)
            now = time.time()
            res = conn.execute(insert(journal).values(
                run_id=run_id, node_id=node_id, step_index=step_index, step=step,
                status="intent", started_at=now, detail="{}"))
            entry = int(res.inserted_primary_key[0])
            # A resumed run runs again a step whose outcome never landed: the old intent is
            # closed (never left looking like a step still in doubt), pointing at this one.
            conn.execute(update(journal).where(
                journal.c.run_id == run_id, journal.c.node_id == node_id,
                journal.c.step_index == step_index, journal.c.status == "intent",
                journal.c.id != entry).values(
                    status=SUPERSEDED, ended_at=now,
                    detail=json.dumps({"superseded_by": entry,
                                       "message": "in doubt; run again by the resumed run"})))
            return entry

    def journal_outcome(self, entry_id: int, status: str,
                        detail: dict[str, Any] | None = None) -> None:
        if status not in JOURNAL_OUTCOMES:
            raise ValueError(f"unknown journal outcome {status!r}")
        with self._write(f"journal entry {entry_id}") as conn:
            conn.execute(update(journal).where(journal.c.id == entry_id).values(
                status=status, ended_at=time.time(), detail=json.dumps(detail or {})))

    def hosts_converged(self, kinds: tuple[str, ...]) -> set[str]:
        """Hosts with at least one step that ended ``ok`` or ``changed`` in a run of one of
        ``kinds`` that was not in check mode (e.g. ``("apply", "playbook")``): what monitor's
        autodiscovery takes for "its roles have been applied"."""
        q = (select(nodes.c.name, runs.c.args).distinct().select_from(journal)
             .join(runs, runs.c.id == journal.c.run_id)
             .join(nodes, nodes.c.id == journal.c.node_id)
             .where(journal.c.status.in_(("ok", "changed")), runs.c.kind.in_(kinds)))
        with self._read() as conn:
            rows = conn.execute(q).all()
        return {r.name for r in rows if not json.loads(r.args or "{}").get("check")}

    def journal_entries(self, run_uid: str | None = None, host: str | None = None
                        ) -> list[JournalEntry]:
        q = (select(journal, runs.c.uid, nodes.c.name)
             .join(runs, runs.c.id == journal.c.run_id)
             .join(nodes, nodes.c.id == journal.c.node_id))
        if run_uid is not None:
            q = q.where(runs.c.uid == run_uid)
        if host is not None:
            q = q.where(nodes.c.name == host)
        with self._read() as conn:
            rows = conn.execute(q.order_by(journal.c.id)).all()
        return [JournalEntry(r.id, r.uid, r.name, r.step_index, r.step, r.status,
                             r.started_at, r.ended_at, json.loads(r.detail)) for r in rows]


def _owner_values(owner: RunOwner | None, now: float) -> dict[str, Any]:
    if owner is None:
        return {}
    return {"owner_host": owner.host, "pid": owner.pid, "pid_start": owner.pid_start,
            "command": owner.command, "heartbeat_at": now}


def _run_doc(r: Any) -> dict[str, Any]:
    args = json.loads(r.args)
    outcome = json.loads(r.outcome) if r.outcome else None
    status = seen_status(r.status, owner_host=r.owner_host, pid=r.pid, pid_start=r.pid_start,
                         heartbeat_at=r.heartbeat_at, started_at=r.started_at,
                         here=socket.gethostname(), now=time.time())
    owner = None if r.owner_host is None else {
        "host": r.owner_host, "pid": r.pid, "command": r.command,
        "heartbeat_at": r.heartbeat_at}
    return {"uid": r.uid, "kind": r.kind, "name": r.name, "status": status,
            "recorded_status": r.status, "started_at": r.started_at,
            "ended_at": r.ended_at, "args": args, "outcome": outcome, "owner": owner}

"""Incidents, their timeline, remediation actions and remediation's switches.

An incident is one occurrence of an alert (or of a pushed event), keyed by ``(fingerprint,
starts_at)``: :meth:`IncidentsMixin.ingest` writes a whole notification in one transaction —
new keys become incidents, known keys only count a delivery — so Alertmanager's retries, its
``repeat_interval`` resends and the second replica's copy never make a second incident, and
the receiver answers 200 only after the rows are committed.

States (``INCIDENT_STATES``): ``open`` (received, not acted on yet) → ``acting`` (a step of
its ladder runs or is being verified) → ``healed`` | ``escalated`` (a human must look: the
ladder ran out, a guard said so, or approval is needed) | ``suppressed`` (a guard refused, and
nothing more will be tried) | ``dry_run`` | ``resolved`` (the alert resolved before anything
was done) | ``unmatched`` (no rule). ``open`` and ``acting`` are the non-terminal ones a
restarted controller picks up again (:meth:`IncidentsMixin.unfinished_incidents`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, Integer, and_, bindparam, case, func, insert, select, update
from sqlalchemy.engine import Connection

from inventory.state.audit import write_audit
from inventory.state.base import StoreBase
from inventory.state.schema import (
    incident_events,
    incidents,
    remediation_actions,
    remediation_settings,
)

INCIDENT_STATES = ("open", "acting", "healed", "escalated", "suppressed", "dry_run",
                   "resolved", "unmatched")
UNFINISHED = ("open", "acting")
ACTION_OUTCOMES = ("running", "ok", "failed", "interrupted")


@dataclass(frozen=True)
class IncidentInput:
    """One alert or event of a notification, as the receiver parsed it."""

    fingerprint: str
    starts_at: str
    status: str                       # firing | resolved
    alertname: str
    target: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ingested:
    """What :meth:`IncidentsMixin.ingest` did with one input: ``new`` — a new incident;
    ``resolved`` — its alert resolved now (it was firing)."""

    incident_id: int
    new: bool
    resolved: bool


@dataclass(frozen=True)
class IncidentRecord:
    id: int
    fingerprint: str
    starts_at: str
    source: str
    alertname: str
    target: str
    labels: dict[str, str]
    annotations: dict[str, str]
    alert_status: str
    state: str
    step: int
    rule: str | None
    deliveries: int
    created_at: float
    updated_at: float
    ended_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "fingerprint": self.fingerprint, "starts_at": self.starts_at,
                "source": self.source, "alertname": self.alertname, "target": self.target,
                "labels": self.labels, "annotations": self.annotations,
                "alert_status": self.alert_status, "state": self.state, "step": self.step,
                "rule": self.rule, "deliveries": self.deliveries,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "ended_at": self.ended_at}


@dataclass(frozen=True)
class ActionRecord:
    id: int
    incident_id: int
    target: str
    action: str
    step: int
    groups: tuple[str, ...]
    started_at: float
    ended_at: float | None
    outcome: str
    run_uid: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "incident": self.incident_id, "target": self.target,
                "action": self.action, "step": self.step, "groups": list(self.groups),
                "started_at": self.started_at, "ended_at": self.ended_at,
                "outcome": self.outcome, "run": self.run_uid, "detail": self.detail}


def _incident(row: Any) -> IncidentRecord:
    return IncidentRecord(
        id=row.id, fingerprint=row.fingerprint, starts_at=row.starts_at, source=row.source,
        alertname=row.alertname, target=row.target, labels=json.loads(row.labels),
        annotations=json.loads(row.annotations), alert_status=row.alert_status,
        state=row.state, step=row.step, rule=row.rule, deliveries=row.deliveries,
        created_at=row.created_at, updated_at=row.updated_at, ended_at=row.ended_at)


def _action(row: Any) -> ActionRecord:
    return ActionRecord(
        id=row.id, incident_id=row.incident_id, target=row.target, action=row.action,
        step=row.step, groups=tuple(g for g in row.groups.split(",") if g),
        started_at=row.started_at, ended_at=row.ended_at, outcome=row.outcome,
        run_uid=row.run_uid, detail=json.loads(row.detail))


#: One notification for :meth:`IncidentsMixin.ingest_batch`: (items, source, received).
IngestBatch = tuple[Sequence[IncidentInput], str, Mapping[str, Any] | None]
_KEY_CHUNK = 500   # fingerprints per IN (...) (SQLite's variable limit is 32766 since 3.32)


@dataclass
class _Seen:
    """A key of the batch: its row and what the batch changes about it."""

    id: int
    alert_status: str
    fresh: bool = False          # inserted by this batch, its first occurrence not yet seen
    more: int = 0                # deliveries to add
    resolves: bool = False       # its alert resolved in this batch


# Built once: constructing SQLAlchemy statements per batch was most of a small batch's cost.
_SELECT_KNOWN = select(incidents.c.id, incidents.c.fingerprint, incidents.c.starts_at,
                       incidents.c.alert_status).where(
    incidents.c.fingerprint.in_(bindparam("b_fingerprints", expanding=True)))
_INSERT_NEW = insert(incidents).returning(incidents.c.id, incidents.c.fingerprint,
                                          incidents.c.starts_at)
_NOW = bindparam("b_now", type_=Float)
_RESOLVES = bindparam("b_resolves", type_=Integer) == 1
# The right-hand sides see the row as it was: an incident still open when its alert resolves
# ends as resolved; one being acted on keeps its state.
_ENDS = and_(_RESOLVES, incidents.c.state == "open")
_UPDATE_SEEN = update(incidents).where(incidents.c.id == bindparam("b_id")).values(
    deliveries=incidents.c.deliveries + bindparam("b_more", type_=Integer),
    updated_at=_NOW,
    alert_status=case((_RESOLVES, "resolved"), else_=incidents.c.alert_status),
    state=case((_ENDS, "resolved"), else_=incidents.c.state),
    ended_at=case((_ENDS, _NOW), else_=incidents.c.ended_at))
_INSERT_EVENTS = insert(incident_events)


def _ingest_batch(conn: Connection, batches: Sequence[IngestBatch],
                  now: float) -> list[list[Ingested]]:
    wanted = {(i.fingerprint, i.starts_at) for items, _s, _r in batches for i in items}
    seen: dict[tuple[str, str], _Seen] = {}
    fingerprints = sorted({fp for fp, _ in wanted})
    for n in range(0, len(fingerprints), _KEY_CHUNK):
        chunk = {"b_fingerprints": fingerprints[n:n + _KEY_CHUNK]}
        for row in conn.execute(_SELECT_KNOWN, chunk):
            if (row.fingerprint, row.starts_at) in wanted:
                seen[(row.fingerprint, row.starts_at)] = _Seen(int(row.id), row.alert_status)
    fresh: dict[tuple[str, str], dict[str, Any]] = {}
    for items, source, _r in batches:
        for item in items:
            key = (item.fingerprint, item.starts_at)
            if key not in seen and key not in fresh:
                resolved = item.status == "resolved"
                fresh[key] = dict(
                    fingerprint=item.fingerprint, starts_at=item.starts_at, source=source,
                    alertname=item.alertname, target=item.target,
                    labels=json.dumps(dict(item.labels), sort_keys=True),
                    annotations=json.dumps(dict(item.annotations), sort_keys=True),
                    alert_status=item.status, state="resolved" if resolved else "open",
                    step=0, deliveries=1, created_at=now, updated_at=now,
                    ended_at=now if resolved else None)
    if fresh:
        rows = conn.execute(_INSERT_NEW, list(fresh.values())).all()
        for row in rows:
            key = (row.fingerprint, row.starts_at)
            seen[key] = _Seen(int(row.id), fresh[key]["alert_status"], fresh=True)
    events: list[dict[str, Any]] = []
    out: list[list[Ingested]] = []
    for items, source, received in batches:
        extra = dict(received or {})
        results: list[Ingested] = []
        for item in items:
            entry = seen[(item.fingerprint, item.starts_at)]
            detail = json.dumps({"status": item.status, "source": source, **extra})
            if entry.fresh:
                entry.fresh = False
                events.append(dict(incident_id=entry.id, at=now, kind="received",
                                   detail=detail))
                results.append(Ingested(entry.id, new=True, resolved=False))
                continue
            resolved_now = item.status == "resolved" and entry.alert_status != "resolved"
            entry.more += 1
            if resolved_now:
                entry.alert_status = "resolved"
                entry.resolves = True
            events.append(dict(incident_id=entry.id, at=now,
                               kind="resolved" if resolved_now else "duplicate", detail=detail))
            results.append(Ingested(entry.id, new=False, resolved=resolved_now))
        out.append(results)
    changed = [{"b_id": e.id, "b_more": e.more, "b_resolves": int(e.resolves), "b_now": now}
               for e in seen.values() if e.more]
    if changed:
        conn.execute(_UPDATE_SEEN, changed)
    if events:
        conn.execute(_INSERT_EVENTS, events)
    return out


class IncidentsMixin(StoreBase):
    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, items: Sequence[IncidentInput], source: str,
               received: Mapping[str, Any] | None = None) -> list[Ingested]:
        """Write one notification (all its alerts) in one transaction; see the module doc.

        Every input adds one timeline event: ``received`` (a new incident), ``duplicate``
        (a known key delivered again) or ``resolved`` (its alert resolved). ``received`` is
        extra detail for those events (e.g. which receiver, the group key)."""
        return self.ingest_batch([(items, source, received)])[0]

    def ingest_batch(self, batches: Sequence[IngestBatch]) -> list[list[Ingested]]:
        """Several notifications ``(items, source, received)`` in ONE transaction (the
        receiver's group commit), with exactly the outcome of :meth:`ingest` called for each
        in order; one result list per notification. A key that appears several times (one
        notification replayed concurrently) is one incident and one ``received`` event, the
        rest ``duplicate``. A handful of statements per batch, whatever its size: one SELECT
        of the known keys, one multi-row INSERT ... RETURNING of the new incidents, one
        executemany UPDATE of the delivery counts and one of the timeline events."""
        now = time.time()
        with self._write("incidents") as conn:
            return _ingest_batch(conn, batches, now)

    # -- reading -----------------------------------------------------------------------------

    def incident(self, incident_id: int) -> IncidentRecord | None:
        with self._read() as conn:
            row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
        return None if row is None else _incident(row)

    def list_incidents(self, states: Sequence[str] | None = None, target: str | None = None,
                       limit: int = 100) -> list[IncidentRecord]:
        """Newest first."""
        q = select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if states:
            q = q.where(incidents.c.state.in_(list(states)))
        if target is not None:
            q = q.where(incidents.c.target == target)
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(q).all()]

    def unfinished_incidents(self) -> list[IncidentRecord]:
        """Incidents ``open`` or ``acting``, oldest first: what a (re)started engine takes."""
        q = select(incidents).where(incidents.c.state.in_(UNFINISHED)) \
            .order_by(incidents.c.id)
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(q).all()]

    def incident_timeline(self, incident_id: int) -> list[dict[str, Any]]:
        q = select(incident_events).where(incident_events.c.incident_id == incident_id) \
            .order_by(incident_events.c.id)
        with self._read() as conn:
            return [{"at": r.at, "kind": r.kind, "detail": json.loads(r.detail)}
                    for r in conn.execute(q).all()]

    def incident_counts(self) -> dict[str, int]:
        """state -> number of incidents."""
        q = select(incidents.c.state, func.count()).group_by(incidents.c.state)
        with self._read() as conn:
            return {state: int(n) for state, n in conn.execute(q).all()}

    def incident_starts(self, since: float) -> dict[str, list[float]]:
        """target -> creation times of its incidents since ``since`` (the flap guard)."""
        q = select(incidents.c.target, incidents.c.created_at) \
            .where(incidents.c.created_at >= since, incidents.c.state != "resolved")
        out: dict[str, list[float]] = {}
        with self._read() as conn:
            for target, at in conn.execute(q).all():
                out.setdefault(target, []).append(float(at))
        return out

    # -- changing an incident ----------------------------------------------------------------

    def update_incident(self, incident_id: int, *, event: str,
                        detail: Mapping[str, Any] | None = None, state: str | None = None,
                        step: int | None = None, rule: str | None = None,
                        expect: Sequence[str] | None = None) -> bool:
        """Add a timeline ``event`` and change the incident's state/step/rule, in one
        transaction. ``expect``: change nothing (and return False) unless the incident is in
        one of these states. A terminal state sets ``ended_at``."""
        if state is not None and state not in INCIDENT_STATES:
            raise ValueError(f"unknown incident state '{state}'")
        now = time.time()
        with self._write(f"incident {incident_id}") as conn:
            cond = [incidents.c.id == incident_id]
            if expect is not None:
                cond.append(incidents.c.state.in_(list(expect)))
            values: dict[str, Any] = {"updated_at": now}
            if state is not None:
                values["state"] = state
                values["ended_at"] = None if state in UNFINISHED else now
            if step is not None:
                values["step"] = step
            if rule is not None:
                values["rule"] = rule
            changed = conn.execute(update(incidents).where(and_(*cond)).values(**values))
            if changed.rowcount != 1:
                return False
            conn.execute(insert(incident_events).values(
                incident_id=incident_id, at=now, kind=event,
                detail=json.dumps(dict(detail or {}), default=str)))
        return True

    def add_incident_event(self, incident_id: int, kind: str,
                           detail: Mapping[str, Any] | None = None) -> None:
        with self._write(f"incident {incident_id}") as conn:
            conn.execute(insert(incident_events).values(
                incident_id=incident_id, at=time.time(), kind=kind,
                detail=json.dumps(dict(detail or {}), default=str)))

    # -- remediation actions -----------------------------------------------------------------

    def start_action(self, incident_id: int, target: str, action: str, step: int,
                     groups: Sequence[str] = (), detail: Mapping[str, Any] | None = None
                     ) -> int:
        """Record an action as running (and an ``action_started`` timeline event)."""
        now = time.time()
        with self._write(f"action on '{target}'") as conn:
            res = conn.execute(insert(remediation_actions).values(
                incident_id=incident_id, target=target, action=action, step=step,
                groups="," + ",".join(groups) + "," if groups else "", started_at=now,
                outcome="running", detail=json.dumps(dict(detail or {}), default=str)))
            action_id = int(res.inserted_primary_key[0])
            conn.execute(insert(incident_events).values(
                incident_id=incident_id, at=now, kind="action_started",
                detail=json.dumps({"action": action, "step": step, "target": target,
                                   "action_id": action_id, **dict(detail or {})},
                                  default=str)))
        return action_id

    def finish_action(self, action_id: int, outcome: str, *, run_uid: str | None = None,
                      detail: Mapping[str, Any] | None = None) -> None:
        """Record how an action ended (and an ``action_finished`` timeline event)."""
        if outcome not in ACTION_OUTCOMES or outcome == "running":
            raise ValueError(f"an action cannot end as '{outcome}'")
        now = time.time()
        with self._write(f"action {action_id}") as conn:
            row = conn.execute(select(remediation_actions)
                               .where(remediation_actions.c.id == action_id)).first()
            if row is None:
                raise ValueError(f"no action {action_id}")
            merged = {**json.loads(row.detail), **dict(detail or {})}
            conn.execute(update(remediation_actions)
                         .where(remediation_actions.c.id == action_id)
                         .values(ended_at=now, outcome=outcome, run_uid=run_uid,
                                 detail=json.dumps(merged, default=str)))
            conn.execute(insert(incident_events).values(
                incident_id=row.incident_id, at=now, kind="action_finished",
                detail=json.dumps({"action": row.action, "step": row.step,
                                   "action_id": action_id, "outcome": outcome,
                                   "run": run_uid, "seconds": round(now - row.started_at, 3),
                                   **dict(detail or {})}, default=str)))

    def actions(self, *, since: float | None = None, running: bool = False,
                incident_id: int | None = None, limit: int = 10_000) -> list[ActionRecord]:
        """Actions started since ``since`` and/or still running, oldest first."""
        q = select(remediation_actions).order_by(remediation_actions.c.id).limit(limit)
        if since is not None and running:
            q = q.where((remediation_actions.c.started_at >= since)
                        | (remediation_actions.c.outcome == "running"))
        elif since is not None:
            q = q.where(remediation_actions.c.started_at >= since)
        elif running:
            q = q.where(remediation_actions.c.outcome == "running")
        if incident_id is not None:
            q = q.where(remediation_actions.c.incident_id == incident_id)
        with self._read() as conn:
            return [_action(r) for r in conn.execute(q).all()]

    def interrupt_running_actions(self, reason: str) -> list[ActionRecord]:
        """Mark every ``running`` action ``interrupted`` (a restarted controller: their
        process is gone); returns them as they were."""
        found = self.actions(running=True)
        for act in found:
            self.finish_action(act.id, "interrupted", detail={"reason": reason})
        return found

    # -- switches ----------------------------------------------------------------------------

    def remediation_setting(self, name: str, default: Any = None) -> Any:
        with self._read() as conn:
            row = conn.execute(select(remediation_settings.c.value)
                               .where(remediation_settings.c.name == name)).first()
        return default if row is None else json.loads(row[0])

    def remediation_settings(self) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(remediation_settings)).all()
        return {r.name: {"value": json.loads(r.value), "actor": r.actor,
                         "updated_at": r.updated_at} for r in rows}

    def set_remediation_setting(self, name: str, value: Any, actor: str) -> None:
        """Set a switch (e.g. ``paused``) and audit who did it."""
        now = time.time()
        with self._write(f"remediation setting '{name}'") as conn:
            conn.execute(remediation_settings.delete()
                         .where(remediation_settings.c.name == name))
            conn.execute(insert(remediation_settings).values(
                name=name, value=json.dumps(value), actor=actor, updated_at=now))
            write_audit(conn, actor, f"remediation {name}", "remediation", {"value": value})

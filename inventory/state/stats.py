"""Aggregate reads for metalchain's own metrics (``monitor/metrics.py``): one query each,
grouped in the database where it can be, so a scrape costs a handful of small queries and
never a walk over every row in Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import JSON, case, cast, func, select, type_coerce

from inventory.state.base import StoreBase
from inventory.state.nodes import is_forgotten
from inventory.state.schema import drift, node_transitions, nodes, remediation_actions, runs

HOST_STATUSES = ("ok", "changed", "failed", "unreachable", "skipped")


@dataclass(frozen=True)
class TransitionRow:
    node_id: int
    to_state: str
    at: float


@dataclass(frozen=True)
class DurationStats:
    """Finished durations of one label set: ``buckets[i]`` = how many took <= ``bounds[i]``."""

    count: int
    total: float
    buckets: tuple[int, ...]


class StatsMixin(StoreBase):
    def transitions_into(self, states: Sequence[str]) -> list[TransitionRow]:
        """Every transition into one of ``states``, in the order they were recorded."""
        q = select(node_transitions.c.node_id, node_transitions.c.to_state,
                   node_transitions.c.at) \
            .where(node_transitions.c.to_state.in_(list(states))) \
            .order_by(node_transitions.c.id)
        with self._read() as conn:
            return [TransitionRow(int(r.node_id), r.to_state, float(r.at))
                    for r in conn.execute(q).all()]

    def run_status_counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) -> number of runs, as recorded (a run still recorded ``running``
        is counted as such; its process may be gone)."""
        q = select(runs.c.kind, runs.c.status, func.count()).group_by(runs.c.kind,
                                                                       runs.c.status)
        with self._read() as conn:
            return {(k, s): int(n) for k, s, n in conn.execute(q).all()}

    def run_host_counts(self) -> dict[tuple[str, str], int]:
        """(kind, host status) -> hosts, summed over the finished runs' recorded outcomes
        (ok, changed, failed, unreachable, skipped: one per host and run); summed in the
        database (SQLite ``json_extract``, PostgreSQL ``->``), not parsed here."""
        # The column is text: SQLite's JSON functions read it as is (a CAST would make it a
        # number), PostgreSQL needs it cast to json for its path operator.
        doc = type_coerce(runs.c.outcome, JSON) if self._engine.dialect.name == "sqlite" \
            else cast(runs.c.outcome, JSON)
        q = select(runs.c.kind,
                   *[func.sum(doc[("counts", s)].as_integer()) for s in HOST_STATUSES]) \
            .where(runs.c.ended_at.is_not(None), runs.c.outcome.is_not(None)) \
            .group_by(runs.c.kind)
        out: dict[tuple[str, str], int] = {}
        with self._read() as conn:
            for row in conn.execute(q).all():
                for status, n in zip(HOST_STATUSES, row[1:], strict=True):
                    if n:
                        out[(row[0], status)] = int(n)
        return out

    def drift_counts(self) -> dict[str, int]:
        """host -> resources its latest drift check found differing (hosts with none: absent)."""
        q = select(nodes.c.name, func.count()).join(drift, drift.c.node_id == nodes.c.id) \
            .group_by(nodes.c.name)
        with self._read() as conn:
            return {name: int(n) for name, n in conn.execute(q).all() if not is_forgotten(name)}

    def action_durations(self, bounds: Sequence[float]
                         ) -> dict[tuple[str, str], DurationStats]:
        """(action, outcome) -> durations of the finished remediation actions, bucketed by
        ``bounds`` (cumulative, as Prometheus histograms count) in the database."""
        took = remediation_actions.c.ended_at - remediation_actions.c.started_at
        cols = [func.sum(case((took <= b, 1), else_=0)) for b in bounds]
        q = select(remediation_actions.c.action, remediation_actions.c.outcome, func.count(),
                   func.sum(took), *cols) \
            .where(remediation_actions.c.ended_at.is_not(None)) \
            .group_by(remediation_actions.c.action, remediation_actions.c.outcome)
        with self._read() as conn:
            return {(r[0], r[1]): DurationStats(int(r[2]), float(r[3] or 0.0),
                                                tuple(int(x or 0) for x in r[4:]))
                    for r in conn.execute(q).all()}

    def running_action_counts(self) -> dict[str, int]:
        """action -> remediation actions recorded as running."""
        q = select(remediation_actions.c.action, func.count()) \
            .where(remediation_actions.c.outcome == "running") \
            .group_by(remediation_actions.c.action)
        with self._read() as conn:
            return {a: int(n) for a, n in conn.execute(q).all()}

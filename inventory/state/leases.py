"""Per-host leases: who is changing a host right now.

Every command that changes hosts holds the lease of each host it acts on (one row per host in
``leases``): its holder (a run uid), the process that owns it (machine, pid and the pid's start
time, so a recycled pid is not mistaken for the owner), a human description of the command,
and an expiry the owner pushes forward with a heartbeat. A lease is free for another holder
when there is none, when it has expired (the owner stopped heartbeating: killed, frozen, on a
machine that went away), or when its owner ran on this machine and that process is provably
gone (pid not alive, or alive with another start time): a ``kill -9`` does not block a host for
the whole expiry.

The decision is :func:`lease_claim` (pure: the lease, who asks, the time and a liveness check
in; a verdict out); the mixin applies it inside one write transaction per call, and every write
is conditional on the row it read, so two controllers sharing a PostgreSQL store cannot both
take one host: the database decides the race.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from inventory.state.audit import write_audit
from inventory.state.base import StoreBase
from inventory.state.schema import leases, nodes
from runtime.pidfile import process_stat, same_process

#: Seconds a lease lasts without a heartbeat.
DEFAULT_TTL = 60.0
#: Seconds between heartbeats: several per expiry, so one slow store write does not lose it.
HEARTBEAT_INTERVAL = 15.0

#: Verdicts of :func:`lease_claim`.
FREE, MINE, EXPIRED, OWNER_GONE, HELD = "free", "mine", "expired", "owner_gone", "held"
TAKEABLE = (FREE, MINE, EXPIRED, OWNER_GONE)


@dataclass(frozen=True)
class Owner:
    """Who asks for a lease: a holder id and the process acting for it."""

    holder: str
    command: str
    owner_host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pid_start: str | None = None

    @classmethod
    def this_process(cls, holder: str, command: str) -> Owner:
        stat = process_stat(os.getpid())
        return cls(holder, command, pid_start=str(stat.start) if stat else None)


@dataclass(frozen=True)
class Lease:
    host: str
    holder: str
    owner_host: str
    pid: int
    pid_start: str | None
    command: str
    acquired_at: float
    heartbeat_at: float
    expires_at: float

    def describe(self) -> str:
        """``held by run 1a2b (pid 42 on ctl1, `metalchain apply --role base`) since T``."""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.acquired_at))
        return (f"held by run {self.holder} (pid {self.pid} on {self.owner_host}, "
                f"`{self.command}`) since {since}")

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "holder": self.holder, "owner_host": self.owner_host,
                "pid": self.pid, "command": self.command, "acquired_at": self.acquired_at,
                "heartbeat_at": self.heartbeat_at, "expires_at": self.expires_at}


#: (pid, pid_start or None) -> is that process still the one running? For leases of this machine.
Liveness = Callable[[int, str | None], bool]


def owner_alive(pid: int, pid_start: str | None) -> bool:
    """True if ``pid`` is alive and (when its start time is known) the same process."""
    if pid_start is None or not pid_start.isdigit():
        stat = process_stat(pid) if pid > 0 else None
        return stat is not None and stat.state not in ("Z", "X")
    return same_process(pid, int(pid_start))


def lease_claim(lease: Lease | None, me: Owner, now: float,
                alive: Liveness = owner_alive) -> str:
    """May ``me`` take the host ``lease`` covers (None: no lease)? One of FREE, MINE, EXPIRED,
    OWNER_GONE (free to take) or HELD.

    >>> lease_claim(None, Owner("run1", "x", "ctl", 7), 100.0)
    'free'
    """
    if lease is None:
        return FREE
    if lease.holder == me.holder:
        return MINE
    if lease.expires_at <= now:
        return EXPIRED
    if lease.owner_host == me.owner_host and not alive(lease.pid, lease.pid_start):
        return OWNER_GONE
    return HELD


@dataclass
class LeaseGrant:
    """What one acquisition got: the hosts now held, those held by others (with their lease),
    and those taken over from an expired or dead owner (with the lease that was replaced)."""

    acquired: list[str] = field(default_factory=list)
    held: dict[str, Lease] = field(default_factory=dict)
    taken_over: dict[str, tuple[str, Lease]] = field(default_factory=dict)


def lease_from_row(r: Any) -> Lease:
    """A row of ``leases`` joined with ``nodes`` as a Lease."""
    return Lease(host=r.name, holder=r.holder, owner_host=r.owner_host, pid=r.pid,
                 pid_start=r.pid_start, command=r.command, acquired_at=r.acquired_at,
                 heartbeat_at=r.heartbeat_at, expires_at=r.expires_at)


_COLUMNS = (nodes.c.name, leases.c.node_id, leases.c.holder, leases.c.owner_host, leases.c.pid,
            leases.c.pid_start, leases.c.command, leases.c.acquired_at, leases.c.heartbeat_at,
            leases.c.expires_at)


class LeasesMixin(StoreBase):
    def acquire_leases(self, hosts: Sequence[str], owner: Owner, *, ttl: float = DEFAULT_TTL,
                       all_or_none: bool = False, now: float | None = None,
                       alive: Liveness = owner_alive) -> LeaseGrant:
        """Take the lease of every host in ``hosts`` that is free for ``owner`` (one
        transaction); with ``all_or_none``, take none unless every one is free."""
        now = time.time() if now is None else now
        grant = LeaseGrant()
        with self._write(f"leases of {', '.join(hosts[:3])}{' ...' if len(hosts) > 3 else ''}"
                         ) as conn:
            plan: list[tuple[str, int, Lease | None, str]] = []
            for host in dict.fromkeys(hosts):
                node_id = self._node_id(conn, host, create=True)
                if node_id is None:   # create=True always gives an id
                    continue
                row = conn.execute(select(*_COLUMNS).join(nodes, nodes.c.id == leases.c.node_id)
                                   .where(leases.c.node_id == node_id)).first()
                current = lease_from_row(row) if row is not None else None
                verdict = lease_claim(current, owner, now, alive)
                if verdict == HELD and current is not None:
                    grant.held[host] = current
                plan.append((host, node_id, current, verdict))
            if all_or_none and grant.held:
                return grant
            values = dict(holder=owner.holder, owner_host=owner.owner_host, pid=owner.pid,
                          pid_start=owner.pid_start, command=owner.command, heartbeat_at=now,
                          expires_at=now + ttl)
            for host, node_id, current, verdict in plan:
                if verdict == HELD:
                    continue
                if self._take(conn, node_id, current, values, now):
                    grant.acquired.append(host)
                    if current is not None and verdict in (EXPIRED, OWNER_GONE):
                        grant.taken_over[host] = (verdict, current)
                        write_audit(conn, owner.holder, "lease_take_over", host,
                                    {"reason": verdict, "from": current.to_json()})
                elif current is not None:
                    grant.held[host] = current
        return grant

    @staticmethod
    def _take(conn: Connection, node_id: int, current: Lease | None,
              values: dict[str, object], now: float) -> bool:
        """Write the lease, conditional on the row read: False if another writer got there."""
        if current is None:
            try:
                with conn.begin_nested():
                    conn.execute(insert(leases).values(node_id=node_id, acquired_at=now,
                                                       **values))
            except IntegrityError:
                return False
            return True
        keep_since = current.acquired_at if current.holder == values["holder"] else now
        res = conn.execute(update(leases).where(
            leases.c.node_id == node_id, leases.c.holder == current.holder,
            leases.c.expires_at == current.expires_at,
        ).values(acquired_at=keep_since, **values))
        return res.rowcount == 1

    def heartbeat_leases(self, holder: str, *, ttl: float = DEFAULT_TTL,
                         now: float | None = None) -> int:
        """Push the expiry of every lease of ``holder`` to now + ``ttl``; how many it has."""
        now = time.time() if now is None else now
        with self._write(f"leases of run '{holder}'") as conn:
            res = conn.execute(update(leases).where(leases.c.holder == holder).values(
                heartbeat_at=now, expires_at=now + ttl))
            return int(res.rowcount)

    def release_leases(self, holder: str, hosts: Sequence[str] | None = None) -> int:
        """Give up ``holder``'s leases (of ``hosts`` only, if given); how many were released."""
        with self._write(f"leases of run '{holder}'") as conn:
            query = delete(leases).where(leases.c.holder == holder)
            if hosts is not None:
                query = query.where(leases.c.node_id.in_(
                    select(nodes.c.id).where(nodes.c.name.in_(list(hosts)))))
            return int(conn.execute(query).rowcount)

    def list_leases(self) -> list[Lease]:
        """Every lease, by host name (expired ones too: ``expires_at`` says)."""
        with self._read() as conn:
            rows = conn.execute(select(*_COLUMNS).join(nodes, nodes.c.id == leases.c.node_id)
                                .order_by(nodes.c.name)).all()
        return [lease_from_row(r) for r in rows]

    def break_lease(self, host: str, actor: str = "metalchain") -> Lease | None:
        """Remove ``host``'s lease whoever holds it (an operator's ``state release``); the
        lease removed, or None if there was none. Audited."""
        with self._write(f"lease of '{host}'") as conn:
            row = conn.execute(select(*_COLUMNS).join(nodes, nodes.c.id == leases.c.node_id)
                               .where(nodes.c.name == host)).first()
            if row is None:
                return None
            gone = lease_from_row(row)
            conn.execute(delete(leases).where(leases.c.node_id == row.node_id,
                                              leases.c.holder == gone.holder))
            write_audit(conn, actor, "lease_break", host, gone.to_json())
        return gone

    def release_orphaned_leases(self, actor: str = "metalchain", *,
                                alive: Liveness = owner_alive) -> list[Lease]:
        """Remove the leases whose owner ran on this machine and is gone (killed: nothing of
        it released them); the leases removed. Each is audited (``lease_orphan_release``).

        A run on this machine would take such a lease over anyway; what this ends is the
        lease that nobody runs on again — e.g. a remediation action cut by a SIGKILL of
        ``serve`` whose effect the restarted engine then verified, so no run followed — which
        ``runs leases`` would show, and a controller on another machine honour, until it
        expired. Leases of other machines are never touched (their owners cannot be checked
        from here)."""
        here = socket.gethostname()
        gone: list[Lease] = []
        with self._write("orphaned leases") as conn:
            rows = conn.execute(select(*_COLUMNS).join(nodes, nodes.c.id == leases.c.node_id)
                                .where(leases.c.owner_host == here)).all()
            for row in rows:
                lease = lease_from_row(row)
                if alive(lease.pid, lease.pid_start):
                    continue
                res = conn.execute(delete(leases).where(
                    leases.c.node_id == row.node_id, leases.c.holder == lease.holder,
                    leases.c.expires_at == lease.expires_at))
                if res.rowcount == 1:
                    write_audit(conn, actor, "lease_orphan_release", lease.host,
                                lease.to_json())
                    gone.append(lease)
        return gone

"""Host leases around a piece of work: take them, keep them alive, give them back.

What a run, a provision, a power action or (next) a remediation action wraps around the work
it does on hosts::

    with host_leases(site.state, ["node1", "node2"], holder=run_uid,
                     command="metalchain apply --role base", wait=None) as grant:
        act_on(grant.acquired)           # grant.held: host -> the Lease that kept it from us

The leases live in the state store (:mod:`inventory.state.leases`), so every process on every
controller sharing the store sees them. While the block runs a daemon thread pushes their
expiry forward every ``heartbeat`` seconds; on exit — normal, an exception, Ctrl-C — they are
released. A process killed with SIGKILL releases nothing: its leases are taken over once they
expire (``ttl``), or at once by a process on the same machine that sees the owner's pid gone.

``wait=None`` takes the free hosts and leaves the held ones (the caller reports them);
``wait=SECONDS`` waits until *every* host is free, all taken in one transaction (never some
held while waiting for others, so two waiting runs cannot deadlock), polling up to that long;
the hosts still held at the deadline are then left as with ``wait=None``.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from inventory.errors import MetalchainError
from inventory.state.leases import DEFAULT_TTL, HEARTBEAT_INTERVAL, LeaseGrant, Owner

log = logging.getLogger("metalchain.leases")

#: Seconds between two tries while waiting for held hosts.
POLL_INTERVAL = 1.0
_MAX_COMMAND = 200

Note = Callable[[str], None]


def describe_command(argv: Sequence[str]) -> str:
    """A short description of a command line for a lease: ``-e`` values left out.

    >>> describe_command(["/venv/bin/metalchain", "apply", "-e", "pw=s3", "--role", "base"])
    'metalchain apply -e pw=... --role base'
    """
    out = ["metalchain"] if argv and argv[0].endswith("metalchain") else list(argv[:1])
    hide = False
    for arg in argv[1:]:
        if hide:
            out.append(_hidden(arg))
            hide = False
        elif arg in ("-e", "--extra-var"):
            out.append(arg)
            hide = True
        elif arg.startswith("--extra-var="):
            out.append("--extra-var=" + _hidden(arg[len("--extra-var="):]))
        elif arg.startswith("-e") and not arg.startswith("--"):
            out.append("-e" + _hidden(arg[2:]))
        else:
            out.append(arg)
    text = " ".join(shlex.quote(a) for a in out)
    return text if len(text) <= _MAX_COMMAND else text[:_MAX_COMMAND - 3] + "..."


def _hidden(assignment: str) -> str:
    return assignment.split("=", 1)[0] + "=..."


def new_holder() -> str:
    """A holder id for work that is not a run (the same shape as run uids)."""
    return uuid.uuid4().hex[:12]


def _acquire(store: Any, hosts: Sequence[str], owner: Owner, wait: float | None, ttl: float,
             poll: float, note: Note, cancelled: Callable[[], bool]) -> LeaseGrant:
    if wait is None:
        return store.acquire_leases(hosts, owner, ttl=ttl)
    deadline = time.monotonic() + wait
    said: set[tuple[str, str]] = set()
    while True:
        grant = store.acquire_leases(hosts, owner, ttl=ttl, all_or_none=True)
        if not grant.held:
            return grant
        for host, lease in grant.held.items():
            if (host, lease.holder) not in said:
                said.add((host, lease.holder))
                note(f"{host}: waiting, {lease.describe()}")
        remaining = deadline - time.monotonic()
        if remaining <= 0 or cancelled():
            return store.acquire_leases(hosts, owner, ttl=ttl)
        end = time.monotonic() + min(poll, remaining)
        while time.monotonic() < end and not cancelled():   # a stop request ends the wait
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


class _Heartbeat(threading.Thread):
    """Push the holder's leases forward until stopped; say so if some were lost."""

    def __init__(self, store: Any, holder: str, count: int, ttl: float, every: float,
                 note: Note, on_lost: Callable[[], None]) -> None:
        super().__init__(name=f"lease-heartbeat-{holder}", daemon=True)
        self.store, self.holder, self.count = store, holder, count
        self.ttl, self.every, self.note, self.on_lost = ttl, every, note, on_lost
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                kept = self.store.heartbeat_leases(self.holder, ttl=self.ttl)
            except MetalchainError as exc:
                self.note(f"lease heartbeat of run {self.holder} failed: {exc}")
                continue
            if kept < self.count:
                self.note(f"run {self.holder} lost {self.count - kept} of its {self.count} "
                          "host leases (expired and taken over, or released by hand)")
                self.count = kept
                self.on_lost()


@contextlib.contextmanager
def host_leases(store: Any, hosts: Sequence[str], holder: str, command: str, *,
                wait: float | None = None, ttl: float = DEFAULT_TTL,
                heartbeat: float = HEARTBEAT_INTERVAL, poll: float | None = None,
                on_note: Note | None = None,
                cancelled: Callable[[], bool] = lambda: False,
                on_lost: Callable[[], None] = lambda: None) -> Iterator[LeaseGrant]:
    """Hold the leases of the free ones of ``hosts`` for ``holder`` while the block runs.

    ``command`` is what other runs are shown ("held by run X (pid N on HOST, `command`)"):
    a description, never secret values. ``on_note`` gets what an operator should hear
    (waiting for a host, a lease taken over from a dead owner); default: a log warning.
    ``cancelled`` ends a wait early (a stop request): the free hosts are taken, as at the
    deadline. ``on_lost`` is called (from the heartbeat thread) when a heartbeat finds fewer
    leases than were taken: another actor may own one of the hosts now.
    """
    note = on_note or log.warning
    owner = Owner.this_process(holder, command)
    grant = _acquire(store, hosts, owner, wait, ttl, POLL_INTERVAL if poll is None else poll,
                     note, cancelled)
    beat = None
    try:
        for host, (reason, old) in grant.taken_over.items():
            why = "expired" if reason == "expired" else "its process is gone"
            note(f"{host}: took over the lease of run {old.holder} (pid {old.pid} on "
                 f"{old.owner_host}, `{old.command}`): {why}")
        if grant.acquired:
            beat = _Heartbeat(store, holder, len(grant.acquired), ttl, heartbeat, note,
                              on_lost)
            beat.start()
        yield grant
    finally:
        if beat is not None:
            beat.stopped.set()
            beat.join(timeout=heartbeat + 5)
        if grant.acquired:
            try:
                store.release_leases(holder)
            except MetalchainError as exc:
                note(f"could not release the leases of run {holder} (they expire in "
                     f"{ttl:.0f} s): {exc}")

"""Watching nodes in progress: woken by the callbacks they receive, not by polling the store.

A node in progress changes state for three kinds of reasons, and each gets its own channel:

- **The node reports** (iPXE fetches its script, the installer posts progress, done, failed).
  These arrive at the boot server's HTTP handler, which calls :class:`provision.deploy.
  DeployService`; the service moves the node in the state store and then
  :meth:`NodeChanges.notify`-es. A watcher in the same process wakes at once and reads the
  store once.
- **Time passes** (a state's timeout, the run's deadline, the next SSH probe of a rebooting
  node). :func:`next_step` computes the earliest of these; the watcher sleeps exactly until
  then, so a timeout fires on time without anyone looking in between.
- **Something we do not hear about** (the node lost power, another process moved it). The
  backstop is slow: the BMC power state every :data:`POWER_SYNC_INTERVAL` seconds over the
  one BMC session the watcher keeps open (like Ironic's ``sync_power_state``), and a re-read of
  the store at the same pace. When the boot server runs in *another* process (``metalchain
  provision`` next to a running ``metalchain serve``) no notification can reach this one; the
  watcher then re-reads the store every :data:`REMOTE_STORE_POLL` seconds instead -- a bounded
  poll, the only one left, and only in that configuration.

The decision part (:func:`next_step`) is pure and takes the clock as an argument; the loop
(:class:`NodeWatcher`) takes the store, the BMC, the SSH probe, the clock and the waiting as
arguments, so both are tested with fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from inventory.errors import BmcError, MetalchainError
from inventory.model import Host, Inventory
from inventory.state import NodeRecord, StateStore
from provision import lifecycle as lc
from provision.bmc import BmcDriver
from provision.deploy import console_tail
from provision.sshcheck import ssh_answers_with

log = logging.getLogger(__name__)

SSH_PROBE_INTERVAL = 1.0     # a rebooting node is probed, not our database
POWER_SYNC_INTERVAL = 30.0   # backstop: BMC power state and a store re-read
REMOTE_STORE_POLL = 2.0      # store re-read when the boot server runs in another process
INSTALLED_GRACE = 5.0        # "done" seen but nobody moved the node on: it reboots anyway
SSH_STATES = (lc.INSTALLED, lc.REBOOTING)
POWER_STATES = (lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING)

StepKind = Literal["timeout", "deadline", "reboot", "ssh", "power", "reread", "wait"]


class NodeChanges:
    """In-process notice that a node's state changed in the store (one per process).

    A version counter per node instead of an Event: a watcher remembers the version it read
    the store at, so a notification that arrives between its read and its wait is not lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}
        self._closed = False
        self._listeners: list[Callable[[str], None]] = []

    def version(self, node: str) -> int:
        with self._cond:
            return self._versions.get(node, 0)

    def notify(self, node: str) -> None:
        with self._cond:
            self._versions[node] = self._versions.get(node, 0) + 1
            self._cond.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(node)

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(node)`` after every notification (quick, on the caller's thread)."""
        with self._cond:
            self._listeners.append(listener)

    def wait(self, node: str, seen: int, timeout: float) -> bool:
        """Until ``node``'s version differs from ``seen`` (True), or ``timeout`` s (False).

        Also returns True at once when closed, so watchers end promptly.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or self._versions.get(node, 0) != seen,
                timeout=max(0.0, timeout))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


# -- the decision (pure) -----------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """When the watcher's own checks are next due (absolute times on the watcher's clock)."""

    ssh_due: float = 0.0
    power_due: float = 0.0
    store_due: float | None = None   # None: never re-read without a notification


@dataclass(frozen=True)
class Step:
    kind: StepKind
    at: float   # "wait": wake up at the latest then; other kinds: act now


def next_step(state: str, since: float | None, now: float, timeouts: Mapping[str, float],
              schedule: Schedule, deadline: float | None = None) -> Step:
    """What a watcher of a node in ``state`` (entered at ``since``) does at ``now``.

    Example: a node installing since t=0 with a 600 s timeout and the power sync due at
    t=30 waits until 30; at t=30 it checks power; at t=600 it times out::

        next_step("installing", 0, 10, {"installing": 600}, Schedule(power_due=30))
        -> Step("wait", 30)
    """
    limit = since + timeouts[state] if since is not None else None
    if limit is not None and now >= limit:
        return Step("timeout", now)
    if deadline is not None and now >= deadline:
        return Step("deadline", now)
    grace = since + INSTALLED_GRACE if state == lc.INSTALLED and since is not None else None
    if grace is not None and now >= grace:
        return Step("reboot", now)
    if state in SSH_STATES and now >= schedule.ssh_due:
        return Step("ssh", now)
    if state in POWER_STATES and now >= schedule.power_due:
        return Step("power", now)
    if schedule.store_due is not None and now >= schedule.store_due:
        return Step("reread", now)
    wakes = [t for t in (limit, deadline, grace, schedule.store_due,
                         schedule.ssh_due if state in SSH_STATES else None,
                         schedule.power_due if state in POWER_STATES else None)
             if t is not None]
    return Step("wait", min(wakes) if wakes else now + POWER_SYNC_INTERVAL)


# -- one node's watcher ------------------------------------------------------------------------

def ssh_ok(host: Host, pinned: str | None) -> bool:
    """Does the host answer SSH with its pinned key (no key or address: no)?"""
    address = host.address or (host.provision.ip if host.provision else None)
    if not pinned or not address:
        return False
    ok, _why = ssh_answers_with(address, pinned, port=host.ssh.port, timeout=2.0)
    return ok


class NodeWatcher:
    """Watches one node until it leaves the in-progress states (or ``changes`` is closed).

    ``bmc`` is the node's one BMC session for the whole watch (the caller opens and closes
    it); None skips the power sync. ``power_first`` is when the first power sync is due,
    in seconds from the start (0: at once, as for a node found in progress after a restart).
    """

    def __init__(self, host: Host, store: StateStore, *, timeouts: Mapping[str, float],
                 changes: NodeChanges, bmc: BmcDriver | None = None,
                 deadline: float | None = None, store_poll: float | None = POWER_SYNC_INTERVAL,
                 power_first: float = POWER_SYNC_INTERVAL,
                 on_change: Callable[[str, str, str], None] | None = None,
                 on_action: Callable[[str, str], None] | None = None,
                 ssh_probe: Callable[[Host, str | None], bool] = ssh_ok,
                 clock: Callable[[], float] = time.time) -> None:
        self.host = host
        self.node = host.name
        self.store = store
        self.timeouts = {**lc.DEFAULT_TIMEOUTS, **timeouts}
        self.life = lc.Lifecycle(store, self.timeouts)
        self.changes = changes
        self.bmc = bmc
        self.deadline = deadline
        self.store_poll = store_poll
        self.power_first = power_first
        self.on_change = on_change or (lambda node, state, reason: None)
        self.on_action = on_action or (lambda node, what: None)
        self.ssh_probe = ssh_probe
        self.clock = clock
        self.seen = 0   # the notification version the last store read reflects

    def _read(self) -> NodeRecord | None:
        self.seen = self.changes.version(self.node)   # before the read: nothing is missed
        return self.store.node(self.node)

    def run(self, last_state: str | None = None) -> str | None:
        """Watch; returns the state the node left progress in (None if stopped first)."""
        start = self.clock()
        sched = Schedule(ssh_due=start, power_due=start + self.power_first,
                         store_due=None if self.store_poll is None else start + self.store_poll)
        pinned: str | None = None
        rec = self._read()
        while True:
            state = rec.state if rec else None
            if state != last_state:
                self.on_change(self.node, state or "-", rec.reason if rec else "")
                last_state = state
                pinned = None
            if rec is None or state not in lc.IN_PROGRESS:
                return state
            if self.changes.closed:
                return None
            now = self.clock()
            step = next_step(state, rec.state_since, now, self.timeouts, sched, self.deadline)
            if step.kind == "wait":
                if self.changes.wait(self.node, self.seen, step.at - now):
                    rec = self._read()
                continue
            if step.kind == "timeout":
                tail = console_tail(self.host)
                reason = (f"timed out after {self.timeouts[state]:g}s in {state}"
                          + (f"; console: {tail}" if tail else ""))
                if self.life.fail(self.node, reason[:4000]):
                    self.on_action(self.node, reason)
            elif step.kind == "deadline":
                self.life.fail(self.node, f"provision run deadline passed while {state}")
            elif step.kind == "reboot":
                self._move(lc.REBOOTING, "installed; rebooting (re-checked)")
            elif step.kind == "ssh":
                sched = _replace(sched, ssh_due=now + SSH_PROBE_INTERVAL)
                if pinned is None:
                    keys = self.store.host_keys_of(self.node)
                    pinned = keys[0] if keys else ""
                if not self.ssh_probe(self.host, pinned):
                    continue
                if self._move(lc.ACTIVE, "SSH answered with the pinned host key"):
                    self.on_action(self.node, "active")
            elif step.kind == "power":
                sched = _replace(sched, power_due=now + POWER_SYNC_INTERVAL)
                if not self._power_is_off():
                    continue
                if self.life.fail(self.node, f"powered off while {state}"):
                    self.on_action(self.node, f"powered off while {state}")
            else:  # reread
                sched = _replace(sched, store_due=now + (self.store_poll or POWER_SYNC_INTERVAL))
            rec = self._read()

    def _move(self, to: str, reason: str) -> bool:
        try:
            self.life.move(self.node, to, reason)
        except MetalchainError:
            return False   # another process moved it first; the re-read tells us where
        return True

    def _power_is_off(self) -> bool:
        if self.bmc is None:
            return False
        try:
            return self.bmc.power_status(timeout=3.0) == "off"
        except BmcError as exc:
            log.info("node %s: power sync skipped: %s", self.node, exc)
            return False


def _replace(sched: Schedule, **changes: float | None) -> Schedule:
    return Schedule(**{**sched.__dict__, **changes})


# -- serve's set of watchers -------------------------------------------------------------------

class WatchSet:
    """``metalchain serve``'s watchers: one thread per node in progress.

    A node is adopted when a callback about it arrives (subscribe :meth:`adopt` to the
    :class:`NodeChanges`) and at every :meth:`sync` (one store query listing the nodes; at
    start, so a restarted controller re-checks what was in progress, then every
    :data:`POWER_SYNC_INTERVAL` seconds as the backstop for nodes started by another process
    that never reached our boot server).
    """

    def __init__(self, inventory: Callable[[], Inventory], store: StateStore, *,
                 timeouts: Mapping[str, float], changes: NodeChanges,
                 bmc_for: Callable[..., BmcDriver] | None,
                 on_action: Callable[[str, str], None] | None = None) -> None:
        self.inventory = inventory
        self.store = store
        self.timeouts = dict(timeouts)
        self.changes = changes
        self.bmc_for = bmc_for
        self.on_action = on_action
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def watching(self) -> set[str]:
        with self._lock:
            return set(self._threads)

    def adopt(self, node: str) -> bool:
        """Start watching ``node`` unless already watched; False if not in the inventory."""
        host = self.inventory().hosts.get(node)
        if host is None or self.changes.closed:
            return False
        with self._lock:
            if node in self._threads:
                return True
            thread = threading.Thread(target=self._watch, args=(host,), daemon=True,
                                      name=f"watch-{node}")
            self._threads[node] = thread
        thread.start()
        return True

    def sync(self) -> None:
        """Adopt every node the store has in progress (one query)."""
        for rec in self.store.list_nodes():
            if rec.state in lc.IN_PROGRESS:
                self.adopt(rec.name)

    def _watch(self, host: Host) -> None:
        node = host.name
        bmc = None
        if self.bmc_for is not None and host.bmc is not None:
            bmc = self.bmc_for(host, timeout=3.0)   # connects on first use, kept till the end
        try:
            while True:
                watcher = NodeWatcher(host, self.store, timeouts=self.timeouts,
                                      changes=self.changes, bmc=bmc, power_first=0.0,
                                      on_action=self.on_action)
                try:
                    watcher.run()
                except MetalchainError as exc:
                    log.warning("node %s: watcher stopped: %s", node, exc)
                    return
                with self._lock:
                    # A callback after our last read (e.g. the node was started again while
                    # we were leaving): watch on instead of waiting for the next sync.
                    if self.changes.closed or self.changes.version(node) == watcher.seen:
                        self._threads.pop(node, None)
                        return
        finally:
            if bmc is not None:
                bmc.close()
            with self._lock:
                if self._threads.get(node) is threading.current_thread():
                    self._threads.pop(node, None)

    def stop(self, timeout: float = 10.0) -> None:
        """Wake every watcher and wait (bounded) for them to end."""
        self.changes.close()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

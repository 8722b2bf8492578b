"""Where a batch's hosts run: the runner's execution backend.

:class:`Backend` is the interface: ``run_batch(play, hosts, job, events) -> {host:
HostReport}``. What crosses it is plain data (:mod:`orchestrate.reports`): no open connection,
no open file, no resolved secret — the backend side resolves variables and secrets from the
inventory and opens connections through its factory, so a distributed engine (workers
sharing a broker and the state store) can implement it later. ``events`` is the controller's
event sink; a remote backend relays its workers' events into it.

:class:`LocalBackend` is the in-process one: a pool of threads, one host each, up to
``parallelism`` at once. Every wait has a limit. A step runs until its ``timeout:`` (plus a
short grace for the step to report its own timeout); a step kind that ignores
``ctx.deadline`` is given up on: the host is reported failed ("timed out after N s"), its
thread is abandoned (threads are daemons and cannot be killed) and its connection closed under
it. The whole batch is bounded too, by a deadline derived from the steps' timeouts (a step
without one counts :data:`orchestrate.hostrun.DEFAULT_STEP_BOUND`): a host still running
past it is reported failed "did not finish in N s".
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from inventory.model import Inventory
from inventory.secrets import Masker
from orchestrate.hostrun import DEFAULT_STEP_BOUND, Connections, HostRunner, HostWatch
from orchestrate.playbook import Play
from orchestrate.reports import BatchJob, EventSink, HostReport
from orchestrate.steps import StepRegistry
from orchestrate.stop import POLL, Stop, announce

DEFAULT_PARALLELISM = 100
#: Seconds a step past its ``timeout:`` gets to return its own timeout error.
TIMEOUT_GRACE = 2.0
#: What a host cut by an abort records (journal and report).
ABORTED = ("aborted while this step ran (a second stop request); it may have partly run, "
           "the host's connection was closed")


class Backend(Protocol):
    def run_batch(self, play: Play, hosts: Sequence[str], job: BatchJob,
                  events: EventSink, stop: Stop | None = None) -> dict[str, HostReport]:
        """Run ``play`` on ``hosts``; a report for every host, whatever happened to it.
        Once ``stop`` is requested no host or step is started (those hosts come back with
        ``stopped`` set); once it aborts, the steps in progress are given up on."""

    def end_run(self, run_uid: str) -> None:
        """The run is over: close what the backend keeps for it (connections)."""


def batch_bound(play: Play, hosts: int, workers: int, grace: float) -> float:
    """Seconds a batch may take: every step at its limit on every retry, in as many waves
    as the hosts need."""
    per_host = sum((s.timeout if s.timeout is not None else DEFAULT_STEP_BOUND) *
                   (s.retries + 1) + s.delay * s.retries + grace for s in play.steps)
    return per_host * math.ceil(hosts / max(1, workers)) + grace


class LocalBackend:
    """In-process execution: daemon threads over one :class:`HostRunner`."""

    def __init__(self, inventory: Inventory, store: Any, registry: StepRegistry,
                 connect: Callable[[str], Any], *, parallelism: int = DEFAULT_PARALLELISM,
                 options: Mapping[str, Any] | None = None, mask: Masker | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 grace: float | None = None) -> None:
        self.hosts = HostRunner(inventory, store, registry, options=options, mask=mask,
                                sleep=sleep)
        self.connect = connect
        self.parallelism = parallelism
        self.grace = TIMEOUT_GRACE if grace is None else grace
        self._runs: dict[str, Connections] = {}
        self._lock = threading.Lock()

    def _connections(self, run_uid: str) -> Connections:
        with self._lock:
            return self._runs.setdefault(run_uid, Connections(self.connect))

    def end_run(self, run_uid: str) -> None:
        with self._lock:
            conns = self._runs.pop(run_uid, None)
        if conns is not None:
            conns.close_all()

    def _overdue(self, running: list[HostWatch], now: float, end: float, bound: float
                 ) -> tuple[list[tuple[HostWatch, str]], float]:
        """The hosts to give up on now, with why, and when to look again."""
        if now >= end:
            return [(w, f"did not finish in {bound:g} s") for w in running], end
        overdue = []
        next_wake = end
        for w in running:
            with w.lock:
                until, limit, own = w.until, w.limit, w.step_timeout
            if until is None:
                continue
            if now < until + self.grace:
                next_wake = min(next_wake, until + self.grace)
                continue
            why = f"timed out after {limit:g} s" if own else f"did not finish in {limit:g} s"
            overdue.append((w, why + " (the step kind did not stop at its deadline; the "
                                     "runner stopped waiting and closed the host's "
                                     "connection)"))
        return overdue, next_wake

    def run_batch(self, play: Play, hosts: Sequence[str], job: BatchJob,
                  events: EventSink, stop: Stop | None = None) -> dict[str, HostReport]:
        if not hosts:
            return {}
        stop = stop or Stop()
        dropped: set[str] = set()   # never started because of a stop request
        conns = self._connections(job.run_uid)
        watches = {h: HostWatch(h) for h in hosts}
        queue = deque(hosts)
        wake = threading.Condition()

        def notify() -> None:
            with wake:
                wake.notify_all()

        for w in watches.values():
            w.on_change = notify
        workers = min(self.parallelism, len(hosts))

        def worker() -> None:
            while True:
                with wake:
                    if not queue or stop.stopping:
                        return
                    watch = watches[queue.popleft()]
                    watch.started = True
                self.hosts.run(play, watch.host, job, events, conns, watch, stop)
                with wake:
                    wake.notify_all()
                with watch.lock:
                    if watch.abandoned:
                        return   # the waiter started a replacement for this thread

        def start_worker() -> None:
            threading.Thread(target=worker, name=f"host-{play.index}", daemon=True).start()

        for _ in range(workers):
            start_worker()
        bound = batch_bound(play, len(hosts), workers, self.grace)
        end = time.monotonic() + bound
        while True:
            with wake:
                now = time.monotonic()
                if stop.stopping and queue:
                    dropped.update(queue)
                    queue.clear()
                running = [w for w in watches.values()
                           if not (w.finished or w.abandoned or w.host in dropped)]
                if stop.stopping:
                    announce(stop, events, _in_progress(running))
                if not running:
                    break
                if stop.aborting:
                    overdue = [(w, ABORTED) for w in running]
                else:
                    overdue, next_wake = self._overdue(running, now, end, bound)
                if not overdue:
                    # Woken by a host that finished or started an attempt; the POLL cap is
                    # for a stop request (set from a signal handler, it cannot notify).
                    wake.wait(timeout=max(0.005, min(next_wake - now, POLL)))
                    continue
                if now >= end:
                    queue.clear()
            for w, message in overdue:
                self.hosts.give_up(play, w, events, conns, message)
                with wake:
                    more = bool(queue)
                if more:
                    start_worker()   # in place of the abandoned thread
        for h in dropped:
            watches[h].report.stopped = True
        return {h: watches[h].report for h in hosts}


def _in_progress(running: Sequence[HostWatch]) -> dict[str, str]:
    """host -> the step it is in, for the hosts running one."""
    now: dict[str, str] = {}
    for w in running:
        with w.lock:
            if w.started and not w.finished:
                now[w.host] = w.step[1] if w.step else "(connecting)"
    return now

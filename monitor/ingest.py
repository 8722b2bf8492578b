"""From a parsed notification or pushed event to committed incidents, then to the listeners.

The order is the contract (issue 11)::

    inputs = alert_inputs(notification)          # pure
    results = ingestor.commit(inputs, "alertmanager", received)   # committed, or raises
    ... the receiver answers 200 ...
    ingestor.notify(results)                     # listeners (the remediation engine) run now

A controller killed after the 200 loses nothing (the incident is in the store and the engine
picks up unfinished incidents when it starts); one killed before the commit never answered
200, so Alertmanager delivers again (it retries on errors and on no answer). Listeners run on
one dispatcher thread, in ingest order, never on the connection's thread: a slow listener
delays nobody's acknowledgement, and a failing one is logged and does not stop the others.

**Group commit.** Once started, :meth:`Ingestor.commit` does not write itself: it queues the
notification for one writer thread and waits. The writer takes everything queued (up to
``max_batch_alerts``) and writes it in one transaction
(:meth:`inventory.state.incidents.IncidentsMixin.ingest_batch`), then wakes each waiter, which
answers 200 only then. Why (measured with bench/ingest.py, see bench/RESULTS.md): with every
connection thread writing its own transaction, the SQLite write lock was the bottleneck —
threads queued in ``BEGIN IMMEDIATE`` inside SQLite's busy handler, whose back-off sleeps
gave a p99 of about a second at 4 clients — and each alert cost three statements. One writer
means no lock contention inside the process and a few statements per batch. A batch that
fails is written again notification by notification, so one bad notification fails alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inventory.errors import MetalchainError, StateError
from inventory.state.incidents import IncidentInput, Ingested
from monitor.webhook import Alert, Notification, alert_target

log = logging.getLogger("metalchain.monitor.ingest")

#: ``on_ingested(results)``: what the engine registers; called after the answer was sent.
Listener = Callable[[list[Ingested]], None]
#: ``observe(route, seconds, status)``: ingest latency per route (the metrics helper's hook).
Observer = Callable[[str, float, int], None]
SOURCE_ALERTMANAGER = "alertmanager"
SOURCE_EVENT = "event"


def alert_input(alert: Alert) -> IncidentInput:
    return IncidentInput(fingerprint=alert.fingerprint, starts_at=alert.starts_at,
                         status=alert.status, alertname=alert.name,
                         target=alert_target(alert.labels), labels=dict(alert.labels),
                         annotations=dict(alert.annotations))


def alert_inputs(notification: Notification) -> list[IncidentInput]:
    """One input per alert of the notification, in order."""
    return [alert_input(a) for a in notification.alerts]


def received_detail(notification: Notification, client: str) -> dict[str, Any]:
    """What the timeline records about a delivery (which sender, which receiver): enough to
    tell the two Alertmanager replicas' copies apart (``sender``: the replica's externalURL;
    two replicas on one machine share the client address and the receiver name), nothing
    from the body at large."""
    return {"receiver": notification.receiver, "client": client,
            "sender": notification.external_url}


def _held_lock() -> Any:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Pending:
    """A notification waiting for the writer. ``done`` is a lock held until the writer
    releases it: one futex wake per waiter (an Event's Condition machinery, under the GIL,
    was a fifth of the writer's time in the profile)."""

    items: list[IncidentInput]
    source: str
    received: Mapping[str, Any] | None
    done: Any = field(default_factory=_held_lock)
    results: list[Ingested] | None = None
    error: BaseException | None = None


class Ingestor:
    """Commits inputs to the store and hands the results to listeners afterwards.

    ``store`` needs ``ingest(items, source, received)`` and, for group commit,
    ``ingest_batch([(items, source, received), ...])``
    (:class:`inventory.state.incidents.IncidentsMixin`). ``listeners`` is a list the caller
    may append to at any time (``serve.ingest_listeners.append(fn)``). Before
    :meth:`start` (and after :meth:`stop`) :meth:`commit` writes directly.
    """

    def __init__(self, store: Any, listeners: list[Listener] | None = None, *,
                 max_batch_alerts: int = 5000, commit_timeout: float = 30.0) -> None:
        self.store = store
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self.max_batch_alerts = max_batch_alerts
        self.commit_timeout = commit_timeout
        self._queue: queue.SimpleQueue[list[Ingested] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        #: Batches written and notifications in them (for the benchmark and tests).
        self.batches = 0
        self.batched = 0

    def commit(self, items: list[IncidentInput], source: str,
               received: Mapping[str, Any] | None = None) -> list[Ingested]:
        """Write ``items`` (one notification) and return once committed; StateError (or
        another MetalchainError) if it was not."""
        if self._writer is None:
            return list(self.store.ingest(items, source, received=received))
        pending = _Pending(list(items), source, received)
        self._pending.put(pending)
        if not pending.done.acquire(timeout=self.commit_timeout):
            raise StateError(f"not committed within {self.commit_timeout:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.results or []

    def notify(self, results: list[Ingested]) -> None:
        """Queue ``results`` for the listeners (returns at once)."""
        if results and self.listeners:
            self._queue.put(list(results))

    # -- the dispatcher ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._dispatch, name="ingest-listeners",
                                            daemon=True)
            self._thread.start()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="ingest-writer",
                                            daemon=True)
            self._writer.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, deliver it to the listeners, then stop (within
        ``timeout`` s)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._pending.put(None)
            writer.join(timeout)
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    # -- the writer ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._pending.get()
            if first is None:
                stopping = True
                batch: list[_Pending] = []
            else:
                batch = [first]
            alerts = sum(len(p.items) for p in batch)
            # Everything that queued up while the previous batch was being written.
            while alerts < self.max_batch_alerts:
                try:
                    more = self._pending.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    continue
                batch.append(more)
                alerts += len(more.items)
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) > 1 and hasattr(self.store, "ingest_batch"):
                try:
                    results = self.store.ingest_batch(
                        [(p.items, p.source, p.received) for p in batch])
                    for p, r in zip(batch, results, strict=True):
                        p.results = list(r)
                except Exception as exc:
                    if not isinstance(exc, MetalchainError):
                        log.exception("group commit of %d notifications failed", len(batch))
                    for p in batch:      # one by one: a bad notification fails alone
                        p.results = None
                        self._write_one(p)
            else:
                for p in batch:
                    self._write_one(p)
            self.batches += 1
            self.batched += len(batch)
        finally:
            for p in batch:
                if p.results is None and p.error is None:
                    p.error = StateError("not committed (internal error, see the log)")
                p.done.release()

    def _write_one(self, p: _Pending) -> None:
        try:
            p.results = list(self.store.ingest(p.items, p.source, received=p.received))
        except MetalchainError as exc:
            p.error = exc
        except Exception as exc:  # a bug: this notification fails, the writer goes on
            log.exception("ingest failed")
            p.error = StateError(f"not committed: {exc.__class__.__name__}")

    def _dispatch(self) -> None:
        while True:
            results = self._queue.get()
            if results is None:
                return
            call_listeners(self.listeners, results)


def call_listeners(listeners: Iterable[Listener], results: list[Ingested]) -> None:
    """Call each listener with ``results``; one that raises is logged, the others still run."""
    for listener in list(listeners):
        try:
            listener(results)
        except Exception:  # one listener's bug must not stop the others
            log.exception("an ingest listener failed (%d incidents)", len(results))

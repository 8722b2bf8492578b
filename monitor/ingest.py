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
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from inventory.state.incidents import IncidentInput, Ingested
from monitor.webhook import Alert, Notification

log = logging.getLogger("metalchain.monitor.ingest")

#: ``on_ingested(results)``: what the engine registers; called after the answer was sent.
Listener = Callable[[list[Ingested]], None]
#: ``observe(route, seconds, status)``: ingest latency per route (the metrics helper's hook).
Observer = Callable[[str, float, int], None]
SOURCE_ALERTMANAGER = "alertmanager"
SOURCE_EVENT = "event"


def alert_target(labels: Mapping[str, str]) -> str:
    """The host an alert is about: its ``host`` label, else ``instance`` without the port.

    >>> alert_target({"instance": "10.0.0.5:9100"}), alert_target({"instance": "[::1]:9100"})
    ('10.0.0.5', '::1')
    """
    host = labels.get("host", "")
    if host:
        return host
    instance = labels.get("instance", "")
    if instance.startswith("["):
        return instance[1:].split("]", 1)[0]
    name, sep, port = instance.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name
    return instance


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
    tell the two Alertmanager replicas' copies apart, nothing from the body at large."""
    return {"receiver": notification.receiver, "client": client}


class Ingestor:
    """Commits inputs to the store and hands the results to listeners afterwards.

    ``store`` needs ``ingest(items, source, received)``
    (:meth:`inventory.state.incidents.IncidentsMixin.ingest`). ``listeners`` is a list the
    caller may append to at any time (``serve.ingest_listeners.append(fn)``).
    """

    def __init__(self, store: Any, listeners: list[Listener] | None = None) -> None:
        self.store = store
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self._queue: queue.SimpleQueue[list[Ingested] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def commit(self, items: list[IncidentInput], source: str,
               received: Mapping[str, Any] | None = None) -> list[Ingested]:
        """Write ``items`` in one transaction; returns once committed (StateError if not)."""
        return list(self.store.ingest(items, source, received=received))

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

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then stop (within ``timeout`` s)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

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

"""serve's BMC poller: every few seconds, each node's power state from its BMC.

The answers feed :class:`monitor.power.PowerCache` (read by ``/metrics``: BMC reachability and
power state without IPMI at scrape time) and :class:`monitor.power.PowerTracker`, whose
incident inputs go into the state store through the same ingest as alerts
(``store.ingest(..., "event")``) and then to serve's ingest listeners (the remediation engine):
an active node powered off behind our back is an incident within one poll interval, without
waiting for Prometheus (which stays the backstop, on ``metalchain_node_power_on == 0``).

One BMC session per node at a time: the poller keeps one driver per node it polls and does not
poll a node that someone else is talking to its BMC for -- a node in progress (the
provisioner's, and serve's :class:`provision.watch.WatchSet` keeps that node's session and
does its power sync) or a node whose lease a run holds (e.g. the power step of a
``power_cycle`` remediation); it closes its own session to such a node and takes it up again
afterwards. Every poll has a timeout, and the nodes are polled in parallel, so one dead BMC
never delays the others.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inventory.errors import MetalchainError
from inventory.model import Host, Inventory
from inventory.state import StateStore
from inventory.state.incidents import IncidentInput, Ingested
from monitor.power import PowerCache, PowerSample, PowerTracker, seed_from
from provision import lifecycle as lc
from provision.bmc import BmcDriver

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 2.0
MAX_PARALLEL = 16

OnIngested = Callable[[list[Ingested]], None]


class PowerWatch:
    """Poll every BMC of the inventory every ``interval`` s (``start``/``stop``), or once
    (:meth:`poll_once`, for tests and embedders).

    ``busy()`` names the hosts whose BMC another part of the process is using (serve passes
    its WatchSet's ``watching``); ``on_ingested`` gets what the store did with the incident
    inputs of a poll (serve passes its ingest listeners)."""

    def __init__(self, inventory: Callable[[], Inventory], store: StateStore, *,
                 cache: PowerCache | None = None, interval: float = DEFAULT_INTERVAL,
                 timeout: float = DEFAULT_TIMEOUT,
                 bmc_for: Callable[..., BmcDriver] | None = None,
                 busy: Callable[[], Iterable[str]] = frozenset,
                 on_ingested: OnIngested | None = None, unreachable_after: int = 2,
                 clock: Callable[[], float] = time.time) -> None:
        if bmc_for is None:
            from provision.drivers import driver_for

            bmc_for = driver_for
        self.inventory = inventory
        self.store = store
        self.cache = cache or PowerCache()
        self.interval = interval
        self.timeout = timeout
        self.bmc_for = bmc_for
        self.busy = busy
        self.on_ingested = on_ingested
        self.tracker = PowerTracker(unreachable_after=unreachable_after)
        self.clock = clock
        self._drivers: dict[str, BmcDriver] = {}
        self._known: set[str] = set()
        self._seeded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="bmc-poll")

    # -- one poll ----------------------------------------------------------------------------

    def poll_once(self) -> list[IncidentInput]:
        """Poll every BMC once; returns the incident inputs it ingested (changes only)."""
        if not self._seeded:
            # A restarted serve resolves what it fired before under the same keys.
            seed_from(self.tracker, self.store.list_incidents(limit=10_000))
            self._seeded = True
        hosts = {n: h for n, h in self.inventory().hosts.items() if h.bmc is not None}
        now = self.clock()
        inputs = self.tracker.gone(self._known - set(hosts), now)
        for name in self._known - set(hosts):
            self._close(name)
        self.cache.forget(self._known - set(hosts))
        self._known = set(hosts)
        states = {rec.name: rec.state for rec in self.store.list_nodes()}
        wall = time.time()
        skip = set(self.busy()) | {lease.host for lease in self.store.list_leases()
                                   if lease.expires_at > wall} \
            | {name for name, state in states.items() if state in lc.IN_PROGRESS}
        for name in skip & set(hosts):
            self._close(name)
            if states.get(name) != lc.ACTIVE:
                inputs += self.tracker.idle(name)
        polled = [h for n, h in sorted(hosts.items()) if n not in skip]
        for sample in self._pool.map(self._probe, polled):
            self.cache.record(sample)
            inputs += self.tracker.observe(sample, active=states.get(sample.host) == lc.ACTIVE)
        if inputs:
            ingested = self.store.ingest(inputs, "event", received={"via": "bmc poller"})
            for item in inputs:
                log.info("bmc poller: %s %s on %s", item.alertname, item.status, item.target)
            if self.on_ingested is not None:
                try:
                    self.on_ingested(ingested)
                except Exception:   # a listener's bug must not stop the polling
                    log.exception("bmc poller: an ingest listener failed")
        return inputs

    def _probe(self, host: Host) -> PowerSample:
        driver = self._drivers.get(host.name)
        try:
            if driver is None:
                driver = self._drivers[host.name] = self.bmc_for(host, timeout=self.timeout)
            power = driver.power_status(timeout=self.timeout)
        except MetalchainError as exc:
            return PowerSample(host.name, False, None, self.clock(), str(exc)[:500])
        return PowerSample(host.name, True, power, self.clock())

    def _close(self, name: str) -> None:
        driver = self._drivers.pop(name, None)
        if driver is not None:
            try:
                driver.close()
            except MetalchainError as exc:
                log.info("bmc poller: closing the session to %s: %s", name, exc)

    # -- the thread --------------------------------------------------------------------------

    def start(self) -> PowerWatch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="bmc-poller", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.poll_once()
            except MetalchainError as exc:   # the store or the inventory: next round
                log.warning("bmc poller: %s", exc)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (bounded wait) and close every BMC session."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
        for name in list(self._drivers):
            self._close(name)

    def status(self) -> dict[str, Any]:
        """For logs and ``serve`` status: what fires now, per host."""
        return {"interval": self.interval, "firing": self.tracker.firing()}

"""metalchain's own metrics, for ``metalchain serve``'s ``/metrics``.

One collector per concern, each reading the state store at scrape time with one or two
aggregate queries (``inventory/state/stats.py``) -- never a BMC or a host: BMC answers come
from the poller's cache (:class:`monitor.power.PowerCache`), filled outside the scrape. What
happens in the process and is not in the store (guard decisions, ingest latency) are ordinary
instruments the engine and the receiver update (:class:`Instruments`).

Everything is registered into a fresh :class:`CollectorRegistry` made by
:func:`build_registry`, never into prometheus_client's global ``REGISTRY``: two serves (or two
tests) in one process never collide. A collector whose query fails yields nothing for that
scrape and counts the failure in ``metalchain_collector_errors_total{collector}``; the other
collectors still answer.

Series (all names exact; the alert rules are written against them)::

    metalchain_node_state{host,state}                  1 for the node's state, 0 for the others
    metalchain_nodes{state}                            nodes per state ("unmanaged": none)
    metalchain_provisioning_seconds{outcome}           histogram: powering_on -> active|failed
    metalchain_runs_total{kind,status}                 finished runs (status as recorded)
    metalchain_runs_running{kind}                      runs recorded as running
    metalchain_run_hosts_total{kind,status}            host results of finished runs (changed..)
    metalchain_drift_resources{host}                   resources differing at the latest check
    metalchain_bmc_reachable{host}                     1 if the BMC answered the last poll
    metalchain_node_power_on{host}                     1 on, 0 off (absent if the BMC is silent)
    metalchain_bmc_poll_timestamp_seconds{host}        when that poll was made
    metalchain_host_reachable{host,kind,hypervisor}    1 if the host answered SSH (serve's prober);
                                                       a guest: kind="vm", hypervisor=its host
                                                       (others: both "", i.e. absent)
    metalchain_incidents{state}                        incidents per state
    metalchain_remediation_actions_total{action,outcome}   finished actions
    metalchain_remediation_actions_running{action}
    metalchain_remediation_action_seconds{action,outcome}  histogram of their durations
    metalchain_guard_decisions_total{guard,verdict}    (instruments.guard_decisions)
    metalchain_ingest_seconds{route,status}            histogram (instruments.ingest_seconds)
    metalchain_collector_errors_total{collector}

Example::

    registry, instruments = build_registry(site.state, bmc_status=cache.snapshot)
    instruments.guard_decisions.labels(guard="cooldown", verdict="suppressed").inc()
    body = exposition(registry)      # bytes for GET /metrics, content type CONTENT_TYPE
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inventory.errors import MetalchainError
from inventory.state import StateStore
from inventory.state.incidents import INCIDENT_STATES
from inventory.state.states import NodeState
from monitor.power import PowerSample
from monitor.targets import GUEST_KIND

CONTENT_TYPE = CONTENT_TYPE_LATEST
PROVISIONING_BUCKETS = (30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
ACTION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
INGEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Runs whose recorded status is one of these are finished (counted in runs_total).
RUNNING = "running"

BmcStatus = Callable[[], Mapping[str, PowerSample]]


@dataclass(frozen=True)
class Instruments:
    """The in-process instruments of one registry.

    ``guard_decisions.labels(guard=..., verdict=...).inc()`` — the engine, once per decision
    (``guard`` "none" when no guard intervened); ``ingest_seconds.labels(route="/v1/alerts",
    status="200").observe(seconds)`` — the receiver, once per request."""

    guard_decisions: Counter
    ingest_seconds: Histogram
    collector_errors: Counter

    def observe_ingest(self, route: str, seconds: float, status: int) -> None:
        """The receiver's observer signature: one request to ``route`` answered ``status``
        after ``seconds``."""
        self.ingest_seconds.labels(route=route, status=str(status)).observe(seconds)


def _histogram(family: HistogramMetricFamily, labels: Sequence[str],
               bounds: Sequence[float], cumulative: Sequence[int], count: int,
               total: float) -> None:
    buckets = [(floatToGoString(b), float(n)) for b, n in zip(bounds, cumulative, strict=True)]
    buckets.append(("+Inf", float(count)))
    family.add_metric(list(labels), buckets, sum_value=total)


class _StoreCollector(Collector):
    """A collector over the store; a failing query yields nothing and counts an error."""

    name = "store"

    def __init__(self, store: StateStore, errors: Counter) -> None:
        self.store = store
        self.errors = errors

    def describe(self) -> Iterable[Metric]:
        return []   # no collect() at registration: it would query the store

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self.families())
        except MetalchainError:
            self.errors.labels(collector=self.name).inc()
            return iter(())
        return iter(families)

    def families(self) -> Iterable[Metric]:
        raise NotImplementedError


class NodeStateCollector(_StoreCollector):
    name = "nodes"

    def families(self) -> Iterable[Metric]:
        per_host = GaugeMetricFamily("metalchain_node_state",
                                     "Lifecycle state of each node: 1 for its state, 0 for "
                                     "the others", labels=["host", "state"])
        counts = GaugeMetricFamily("metalchain_nodes", "Nodes per lifecycle state "
                                   "(unmanaged: outside the lifecycle)", labels=["state"])
        totals = {s.value: 0 for s in NodeState} | {"unmanaged": 0}
        for rec in self.store.list_nodes():
            if rec.state is None:
                totals["unmanaged"] += 1
                continue
            totals[rec.state.value] += 1
            for state in NodeState:
                per_host.add_metric([rec.name, state.value], 1.0 if rec.state == state else 0.0)
        for state, n in totals.items():
            counts.add_metric([state], float(n))
        return [per_host, counts]


class ProvisioningCollector(_StoreCollector):
    """Durations of provisioning attempts, from the lifecycle history: an attempt starts
    when a node goes ``powering_on`` (or is ``enrolled``, if it never powered on) and ends
    ``active`` or ``provision_failed``."""

    name = "provisioning"

    def families(self) -> Iterable[Metric]:
        start_states = (NodeState.ENROLLED.value, NodeState.POWERING_ON.value)
        end_states = (NodeState.ACTIVE.value, NodeState.FAILED.value)
        rows = self.store.transitions_into([*start_states, *end_states])
        pending: dict[int, float] = {}
        done: dict[str, list[float]] = {s: [] for s in end_states}
        for r in rows:
            if r.to_state == NodeState.POWERING_ON.value:
                pending[r.node_id] = r.at
            elif r.to_state == NodeState.ENROLLED.value:
                pending.setdefault(r.node_id, r.at)
            elif r.node_id in pending:
                done[r.to_state].append(max(0.0, r.at - pending.pop(r.node_id)))
        family = HistogramMetricFamily("metalchain_provisioning_seconds",
                                       "Provisioning attempts from power-on to active (or "
                                       "provision_failed)", labels=["outcome"])
        for outcome, seconds in done.items():
            cumulative = [sum(1 for s in seconds if s <= b) for b in PROVISIONING_BUCKETS]
            _histogram(family, [outcome], PROVISIONING_BUCKETS, cumulative, len(seconds),
                       sum(seconds))
        return [family]


class RunsCollector(_StoreCollector):
    name = "runs"

    def families(self) -> Iterable[Metric]:
        finished = CounterMetricFamily("metalchain_runs", "Finished runs by kind and status",
                                       labels=["kind", "status"])
        running = GaugeMetricFamily("metalchain_runs_running", "Runs recorded as running",
                                    labels=["kind"])
        hosts = CounterMetricFamily("metalchain_run_hosts", "Host results of finished runs "
                                    "(ok, changed, failed, unreachable, skipped)",
                                    labels=["kind", "status"])
        running_by_kind: dict[str, int] = {}
        for (kind, status), n in sorted(self.store.run_status_counts().items()):
            if status == RUNNING:
                running_by_kind[kind] = running_by_kind.get(kind, 0) + n
            else:
                finished.add_metric([kind, status], float(n))
        for kind, n in sorted(running_by_kind.items()):
            running.add_metric([kind], float(n))
        for (kind, status), n in sorted(self.store.run_host_counts().items()):
            hosts.add_metric([kind, status], float(n))
        return [finished, running, hosts]


class DriftCollector(_StoreCollector):
    name = "drift"

    def families(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("metalchain_drift_resources", "Resources that differed "
                                   "from their roles at the host's latest drift check",
                                   labels=["host"])
        counts = self.store.drift_counts()
        names = {rec.name for rec in self.store.list_nodes()} | set(counts)
        for name in sorted(names):
            family.add_metric([name], float(counts.get(name, 0)))
        return [family]


class IncidentsCollector(_StoreCollector):
    name = "incidents"

    def families(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("metalchain_incidents", "Incidents per state",
                                   labels=["state"])
        counts = self.store.incident_counts()
        for state in (*INCIDENT_STATES, *sorted(set(counts) - set(INCIDENT_STATES))):
            family.add_metric([state], float(counts.get(state, 0)))
        return [family]


class RemediationCollector(_StoreCollector):
    name = "remediation"

    def families(self) -> Iterable[Metric]:
        total = CounterMetricFamily("metalchain_remediation_actions", "Finished remediation "
                                    "actions by action and outcome", labels=["action", "outcome"])
        running = GaugeMetricFamily("metalchain_remediation_actions_running",
                                    "Remediation actions running", labels=["action"])
        seconds = HistogramMetricFamily("metalchain_remediation_action_seconds",
                                        "Durations of finished remediation actions",
                                        labels=["action", "outcome"])
        stats = self.store.action_durations(ACTION_BUCKETS)
        for (action, outcome), s in sorted(stats.items()):
            total.add_metric([action, outcome], float(s.count))
            _histogram(seconds, [action, outcome], ACTION_BUCKETS, s.buckets, s.count, s.total)
        for action, n in sorted(self.store.running_action_counts().items()):
            running.add_metric([action], float(n))
        return [total, running, seconds]


class BmcCollector(Collector):
    """BMC reachability and power state, from the poller's cache (no IPMI at scrape)."""

    def __init__(self, status: BmcStatus) -> None:
        self.status = status

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        reachable = GaugeMetricFamily("metalchain_bmc_reachable", "1 if the node's BMC "
                                      "answered its latest poll", labels=["host"])
        power = GaugeMetricFamily("metalchain_node_power_on", "1 if the node's BMC says it is "
                                  "powered on, 0 if off (absent when the BMC did not answer)",
                                  labels=["host"])
        polled = GaugeMetricFamily("metalchain_bmc_poll_timestamp_seconds",
                                   "When the node's BMC was last polled", labels=["host"])
        for host, sample in sorted(self.status().items()):
            reachable.add_metric([host], 1.0 if sample.reachable else 0.0)
            if sample.reachable and sample.power in ("on", "off"):
                power.add_metric([host], 1.0 if sample.power == "on" else 0.0)
            polled.add_metric([host], sample.at)
        yield from (reachable, power, polled)


class ReachCollector(Collector):
    """Whether each host answers SSH, from serve's prober cache (no connection at scrape)."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.status = status

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        reachable = GaugeMetricFamily("metalchain_host_reachable", "1 if the host answered "
                                      "SSH (its identification string) at the latest probe; "
                                      "a guest has kind=\"vm\" and its hypervisor",
                                      labels=["host", "kind", "hypervisor"])
        for host, sample in sorted(self.status().items()):
            hypervisor = getattr(sample, "hypervisor", "") or ""
            reachable.add_metric([host, GUEST_KIND if hypervisor else "", hypervisor],
                                 1.0 if sample.reachable else 0.0)
        yield reachable


def build_registry(store: StateStore, *, bmc_status: BmcStatus | None = None,
                   reach_status: Callable[[], Mapping[str, Any]] | None = None,
                   ingest_buckets: Sequence[float] = INGEST_BUCKETS
                   ) -> tuple[CollectorRegistry, Instruments]:
    """A fresh registry with every collector over ``store`` (a StateStore) and
    ``bmc_status`` (e.g. ``PowerCache.snapshot``; None: no BMC series), and its instruments."""
    registry = CollectorRegistry(auto_describe=False)
    # Registered last: a collector that fails during a scrape counts its error in the same one.
    errors = Counter("metalchain_collector_errors", "Scrapes in which a collector's state "
                     "store query failed", ["collector"], registry=None)
    instruments = Instruments(
        guard_decisions=Counter("metalchain_guard_decisions", "Remediation guard decisions "
                                "by guard and verdict", ["guard", "verdict"],
                                registry=registry),
        ingest_seconds=Histogram("metalchain_ingest_seconds", "Time to acknowledge a webhook "
                                 "or pushed event, by route and HTTP status",
                                 ["route", "status"], buckets=tuple(ingest_buckets),
                                 registry=registry),
        collector_errors=errors)
    for cls in (NodeStateCollector, ProvisioningCollector, RunsCollector, DriftCollector,
                IncidentsCollector, RemediationCollector):
        registry.register(cls(store, errors))
    if bmc_status is not None:
        registry.register(BmcCollector(bmc_status))
    if reach_status is not None:
        registry.register(ReachCollector(reach_status))
    registry.register(errors)
    return registry, instruments


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry`` (the body of ``GET /metrics``)."""
    return generate_latest(registry)

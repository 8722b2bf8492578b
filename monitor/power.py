"""What the BMCs last said, and which of it is an incident: the pure half of serve's BMC poller.

orchestrate's poller (``orchestrate/power_watch.py``) asks each node's BMC its power state
every few seconds and hands every answer (or its absence) to two things here:

- :class:`PowerCache` keeps the latest :class:`PowerSample` per host; the metrics collector
  reads it at scrape time (``metalchain_bmc_reachable``, ``metalchain_node_power_on``), so a
  scrape never talks to a BMC.
- :class:`PowerTracker` turns the samples of ``active`` nodes into incident inputs, the same
  ones an alert would make: an active node seen powered off fires ``NodePoweredOff`` at once
  (the BMC's word is authoritative); a BMC that does not answer ``unreachable_after`` polls
  in a row fires ``BmcUnreachable`` (the node may be fine: a dead BMC does not demote it, but a
  human or a rule must know). Each resolves, under the same key, when the condition ends or
  the node is no longer active (maintenance, reprovisioning).

Keys: ``fingerprint`` = :func:`power_fingerprint` (a stable hash of the kind and the host),
``starts_at`` = when the condition was first seen (UTC, Alertmanager's format), so the
poller's repeats are the same incident and a later outage is a new one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from inventory.state.incidents import IncidentInput, IncidentRecord
from monitor.latest import LatestByHost

POWERED_OFF = "NodePoweredOff"
BMC_UNREACHABLE = "BmcUnreachable"
_KIND = {POWERED_OFF: "power", BMC_UNREACHABLE: "bmc"}


@dataclass(frozen=True)
class PowerSample:
    """One poll of one host's BMC: ``power`` is "on", "off" or None (no answer)."""

    host: str
    reachable: bool
    power: str | None
    at: float
    error: str = ""


class PowerCache(LatestByHost[PowerSample]):
    """The latest BMC poll per host (the poller writes, scrapes read)."""


def power_fingerprint(alertname: str, host: str) -> str:
    """A stable 16-hex-digit key for one host's condition (like Alertmanager's)."""
    return hashlib.sha256(f"{_KIND[alertname]}\0{host}".encode()).hexdigest()[:16]


def iso_utc(at: float) -> str:
    """``2026-12-01T16:20:00.123Z`` (Alertmanager's startsAt form)."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return f"{whole}.{int((at % 1) * 1000):03d}Z"


def power_incident(alertname: str, host: str, starts_at: str, status: str,
                   detail: str = "") -> IncidentInput:
    """The incident input for ``host``'s ``alertname`` (firing or resolved)."""
    labels = {"alertname": alertname, "host": host, "source": "bmc"}
    summary = (f"{host} is powered off (its BMC says so) while active"
               if alertname == POWERED_OFF else f"{host}'s BMC does not answer")
    annotations = {"summary": summary, **({"detail": detail[:500]} if detail else {})}
    return IncidentInput(fingerprint=power_fingerprint(alertname, host), starts_at=starts_at,
                         status=status, alertname=alertname, target=host, labels=labels,
                         annotations=annotations)


@dataclass
class _HostTrack:
    firing: dict[str, str] = field(default_factory=dict)   # alertname -> starts_at
    misses: int = 0


class PowerTracker:
    """Samples in, incident inputs out (only on changes). Not thread-safe: one poller."""

    def __init__(self, *, unreachable_after: int = 2) -> None:
        self.unreachable_after = max(1, unreachable_after)
        self._hosts: dict[str, _HostTrack] = {}

    def seed(self, host: str, alertname: str, starts_at: str) -> None:
        """An incident of ours still firing in the store (a restarted serve): resolve it
        under its own key when the condition ends, instead of opening a second one."""
        if alertname in _KIND:
            self._hosts.setdefault(host, _HostTrack()).firing[alertname] = starts_at

    def firing(self) -> dict[str, dict[str, str]]:
        return {h: dict(t.firing) for h, t in self._hosts.items() if t.firing}

    def observe(self, sample: PowerSample, *, active: bool) -> list[IncidentInput]:
        track = self._hosts.setdefault(sample.host, _HostTrack())
        track.misses = 0 if sample.reachable else track.misses + 1
        out: list[IncidentInput] = []
        if sample.reachable:
            out += self._set(track, sample, POWERED_OFF, active and sample.power == "off")
        elif not active:
            out += self._set(track, sample, POWERED_OFF, False)
        out += self._set(track, sample, BMC_UNREACHABLE,
                         active and track.misses >= self.unreachable_after)
        return out

    def idle(self, host: str) -> list[IncidentInput]:
        """``host`` is not active and not polled (another part holds its BMC, e.g. it is
        being reprovisioned): resolve what fires for it; nothing else changes."""
        track = self._hosts.get(host)
        out = []
        for alertname, starts in sorted((track.firing if track else {}).items()):
            out.append(power_incident(alertname, host, starts, "resolved", "no longer active"))
        if track is not None:
            track.firing.clear()
            track.misses = 0
        return out

    def gone(self, hosts: Iterable[str], at: float) -> list[IncidentInput]:
        """Hosts that left the inventory: resolve what fires for them and forget them."""
        out = []
        for host in hosts:
            track = self._hosts.pop(host, None)
            for alertname, starts in sorted((track.firing if track else {}).items()):
                out.append(power_incident(alertname, host, starts, "resolved",
                                          "left the inventory"))
        return out

    @staticmethod
    def _set(track: _HostTrack, sample: PowerSample, alertname: str, cond: bool
             ) -> list[IncidentInput]:
        starts = track.firing.get(alertname)
        if cond and starts is None:
            starts = iso_utc(sample.at)
            track.firing[alertname] = starts
            return [power_incident(alertname, sample.host, starts, "firing", sample.error)]
        if not cond and starts is not None:
            del track.firing[alertname]
            return [power_incident(alertname, sample.host, starts, "resolved")]
        return []


def seed_from(tracker: PowerTracker, incidents: Iterable[IncidentRecord]) -> None:
    """Seed ``tracker`` with our incidents among ``incidents`` whose alert still fires."""
    for inc in incidents:
        if inc.alert_status == "firing" and inc.labels.get("source") == "bmc" \
                and inc.alertname in _KIND \
                and inc.fingerprint == power_fingerprint(inc.alertname, inc.target):
            tracker.seed(inc.target, inc.alertname, inc.starts_at)

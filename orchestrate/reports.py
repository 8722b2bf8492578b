"""What crosses the runner's backend interface: a batch job in, host reports out.

Plain data only: host names, the play (frozen dataclasses), the run uid, extra vars as given,
the check flag and the resume state go in; per-host reports come out. Nothing here holds an
open connection, an open file or a resolved secret, so a distributed backend can serialise
it (see :mod:`orchestrate.backend`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from inventory.contracts import StepOutcome

DONE = ("ok", "changed", "skipped")
FAILED = ("failed", "unreachable")
STATUS_ORDER = ("ok", "skipped", "changed", "failed", "unreachable")
#: The exit code of a run stopped by a request (Ctrl-C: 128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BatchJob:
    """The run-wide inputs of one batch: everything a host needs besides the play."""

    run_uid: str
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    check: bool = False
    #: (host, journal index) -> outcome recorded by the run being resumed ('intent': in doubt)
    done: Mapping[tuple[str, int], str] = field(default_factory=dict)
    #: host -> gathered facts (the snapshot the run started with)
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class EventSink(Protocol):
    """Where a run's events go (orchestrate.events.EventLog, or a relay of a remote one)."""

    run_uid: str

    def emit(self, event: str, **fields: Any) -> None: ...


@dataclass
class StepReport:
    play: str
    step: str
    outcome: StepOutcome
    attempts: int
    duration: float
    resumed: bool = False


@dataclass
class HostReport:
    host: str
    status: str = "ok"          # worst outcome over its steps
    steps: list[StepReport] = field(default_factory=list)
    #: a stop request ended this host before its remaining steps (none run: never started)
    stopped: bool = False

    def add(self, report: StepReport) -> None:
        self.steps.append(report)
        if STATUS_ORDER.index(report.outcome.status) > STATUS_ORDER.index(self.status):
            self.status = report.outcome.status

    @property
    def changed(self) -> int:
        return sum(1 for s in self.steps if s.outcome.status == "changed")


#: A resource's status in an apply step's results (configure.engine.ItemResult.status).
RESOURCE_STATUSES = ("ok", "changed", "unknown", "failed", "skipped")


@dataclass(frozen=True)
class ItemCounts:
    """What a run did, counted per item: the resources of its apply steps when it has any
    (``kind="resource"``), else its host-steps (``kind="step"``). ``hosts`` is how many
    hosts reported items; ``by_status`` counts each item's own outcome."""

    kind: str
    total: int
    hosts: int
    by_status: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "total": self.total, "hosts": self.hosts,
                **self.by_status}


@dataclass
class PlayRun:
    """A play as it ran: its position in the playbook, name, hosts and wall-clock time."""

    index: int
    name: str
    hosts: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RunReport:
    uid: str
    hosts: dict[str, HostReport] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    stopped_reason: str = ""
    duration: float = 0.0
    check: bool = False
    #: "" (ran to its end), "interrupted" (stopped after the steps in progress), "aborted"
    interrupted: str = ""
    #: hosts a stop request ended between two of their steps (some run, the rest not)
    incomplete: list[str] = field(default_factory=list)
    #: host -> why it was not run: its lease is held by another run ("held by run X ...")
    held: dict[str, str] = field(default_factory=dict)
    #: the plays that ran, in order, with their wall-clock times (the stage summary's)
    plays: list[PlayRun] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        bad = any(h.status in FAILED for h in self.hosts.values())
        return 1 if bad or self.stopped_reason or self.held else 0

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in ("ok", "changed", "failed", "unreachable", "skipped")}
        for h in self.hosts.values():
            c[h.status] += 1
        c["not_run"] = len(self.not_run)
        c["held"] = len(self.held)
        return c

    def item_counts(self) -> ItemCounts:
        """Resources (of apply steps; handlers are not resources) counted by their own
        status over every host; a run without apply steps counts its host-steps instead."""
        resources = {k: 0 for k in RESOURCE_STATUSES}
        resource_hosts = 0
        steps = {k: 0 for k in STATUS_ORDER}
        for r in self.hosts.values():
            seen = False
            for s in r.steps:
                steps[s.outcome.status] = steps.get(s.outcome.status, 0) + 1
                for res in s.outcome.data.get("results", []):
                    if res.get("handler") is None:
                        resources[res["status"]] = resources.get(res["status"], 0) + 1
                        seen = True
            resource_hosts += seen
        if resource_hosts:
            return ItemCounts("resource", sum(resources.values()), resource_hosts, resources)
        return ItemCounts("step", sum(steps.values()),
                          sum(1 for r in self.hosts.values() if r.steps), steps)

    def first_outcome(self, host: str) -> StepOutcome | None:
        """The outcome of ``host``'s first step (single-step runs: exec, power, verify)."""
        r = self.hosts.get(host)
        return r.steps[0].outcome if r is not None and r.steps else None

"""The end of a run, per stage: each play's time and host outcomes, and what the chain's
steps report in their outcome data — nodes active (``provision``: ``data["node"]``), roles
applied (``apply_roles``/``apply_role``: ``data["results"]``), VMs running (``vm``:
``data["vms"]``, else ``data["vm"]``: one guest ``{"name", "state"}`` or a list of them,
counted by name), scrape targets up (``monitor``: ``data["targets"]``). Pure: a
:class:`~orchestrate.reports.RunReport` in, plain data and lines out.

::

    stages = stage_summary(report)
    chain_totals(stages)   # {"nodes_active": 2, "nodes": 2, "roles_applied": {...}, ...}

A play is a stage. Steps are matched to their play by name (a step's report carries its
play's name): two plays of one playbook with the same name share their steps' outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrate.reports import STATUS_ORDER, RunReport, StepReport
from runtime.text import plural

HOST_STATUSES = ("ok", "changed", "failed", "unreachable", "skipped", "not_run")
DONE = ("ok", "changed")


@dataclass
class StageFacts:
    """What one stage's steps report, counted over its hosts (None: no step reported it)."""

    nodes_active: int | None = None
    nodes: int | None = None
    roles_applied: dict[str, int] | None = None     # role -> hosts it converged on
    hosts_configured: int | None = None
    vms_running: int | None = None
    vms: int | None = None
    targets_up: int | None = None
    targets: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Stage:
    index: int
    play: str
    seconds: float
    hosts: dict[str, int] = field(default_factory=dict)   # status -> hosts
    facts: StageFacts = field(default_factory=StageFacts)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "play": self.play, "seconds": round(self.seconds, 1),
                "hosts": self.hosts, "facts": self.facts.to_json()}


def _worst(steps: Sequence[StepReport]) -> str:
    status = "ok"
    for s in steps:
        if STATUS_ORDER.index(s.outcome.status) > STATUS_ORDER.index(status):
            status = s.outcome.status
    return status


def _add(current: int | None, n: int) -> int:
    return (current or 0) + n


def _guests(raw: Any) -> list[Mapping[str, Any]]:
    """A ``vm`` step's guests: one mapping, or a list of them."""
    items = raw if isinstance(raw, list) else [raw]
    return [g for g in items if isinstance(g, Mapping)]


def _facts(steps_by_host: Mapping[str, Sequence[StepReport]]) -> StageFacts:
    facts = StageFacts()
    guests: dict[str, bool] = {}     # guest -> running (its last report wins)
    for host, steps in steps_by_host.items():
        node = None
        roles: set[str] = set()
        configured = False
        targets: tuple[int, int] | None = None
        for s in steps:
            data, ok = s.outcome.data, s.outcome.status in DONE
            if isinstance(data.get("node"), Mapping):
                node = ok and data["node"].get("state") == "active"
            # The vm step reports every guest in data["vms"] (and the one in data["vm"]).
            for guest in _guests(data.get("vms", data.get("vm"))):
                guests[str(guest.get("name") or host)] = guest.get("state") == "running"
            if isinstance(data.get("results"), list):
                configured = configured or ok
                if ok:
                    roles.update(str(r["role"]) for r in data["results"]
                                 if isinstance(r, Mapping) and r.get("role")
                                 and r.get("handler") is None)
            if isinstance(data.get("targets"), int) and isinstance(data.get("targets_up"),
                                                                   int):
                targets = (data["targets_up"], data["targets"])
        if node is not None:
            facts.nodes = _add(facts.nodes, 1)
            facts.nodes_active = _add(facts.nodes_active, int(node))
        if configured or roles:
            facts.hosts_configured = _add(facts.hosts_configured, int(configured))
            applied = facts.roles_applied if facts.roles_applied is not None else {}
            for role in sorted(roles):
                applied[role] = applied.get(role, 0) + 1
            facts.roles_applied = applied
        if targets is not None:
            facts.targets_up = _add(facts.targets_up, targets[0])
            facts.targets = _add(facts.targets, targets[1])
    if guests:
        facts.vms, facts.vms_running = len(guests), sum(guests.values())
    return facts


def stage_summary(report: RunReport) -> list[Stage]:
    """One :class:`Stage` per play that ran, in order."""
    stages = []
    for played in report.plays:
        by_host: dict[str, list[StepReport]] = {}
        for host in played.hosts:
            r = report.hosts.get(host)
            by_host[host] = [s for s in r.steps if s.play == played.name] if r else []
        counts = dict.fromkeys(HOST_STATUSES, 0)
        for steps in by_host.values():
            counts[_worst(steps) if steps else "not_run"] += 1
        stages.append(Stage(played.index, played.name, played.seconds,
                            {k: v for k, v in counts.items() if v},
                            _facts({h: s for h, s in by_host.items() if s})))
    return stages


def chain_totals(stages: Sequence[Stage]) -> dict[str, Any]:
    """The facts over every stage (each stage's counts added; roles by role)."""
    out: dict[str, Any] = {}
    for stage in stages:
        for key, value in stage.facts.to_json().items():
            if isinstance(value, dict):
                merged = out.setdefault(key, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            else:
                out[key] = out.get(key, 0) + value
    out["seconds"] = round(sum(s.seconds for s in stages), 1)
    return out


def summary_doc(report: RunReport) -> dict[str, Any]:
    """The ``stages`` and ``chain`` members of the ``run.result`` JSON document."""
    stages = stage_summary(report)
    return {"stages": [s.to_json() for s in stages], "chain": chain_totals(stages)}


def facts_text(facts: Mapping[str, Any]) -> str:
    """``2 of 2 nodes active; roles applied: base 3, node_exporter 3; 5 of 5 targets up``"""
    parts = []
    if "nodes" in facts:
        parts.append(f"{facts['nodes_active']} of {plural(facts['nodes'], 'node')} active")
    if "roles_applied" in facts:
        roles = ", ".join(f"{r} {n}" for r, n in sorted(facts["roles_applied"].items()))
        configured = facts.get("hosts_configured", 0)
        parts.append(f"{plural(configured, 'host')} configured"
                     + (f" (roles applied: {roles})" if roles else ""))
    if "vms" in facts:
        parts.append(f"{facts['vms_running']} of {plural(facts['vms'], 'VM')} running")
    if "targets" in facts:
        parts.append(f"{facts['targets_up']} of {plural(facts['targets'], 'target')} up")
    return "; ".join(parts)


def hosts_text(hosts: Mapping[str, int]) -> str:
    """``3 hosts: 2 changed, 1 ok``"""
    total = sum(hosts.values())
    order = ("changed", "ok", "failed", "unreachable", "skipped", "not_run")
    states = ", ".join(f"{hosts[k]} {k.replace('_', ' ')}" for k in order if hosts.get(k))
    return plural(total, "host") + (f": {states}" if states else "")


def stage_rows(stages: Sequence[Stage]) -> list[list[Any]]:
    """Rows of the human stage table: stage, play, seconds, hosts, facts."""
    return [[i, s.play, f"{s.seconds:.1f}", hosts_text(s.hosts), facts_text(
        s.facts.to_json()) or "-"] for i, s in enumerate(stages, 1)]


def chain_line(stages: Sequence[Stage]) -> str | None:
    """The closing line over the stages, or None when no stage reported chain facts."""
    totals = chain_totals(stages)
    text = facts_text(totals)
    if not text:
        return None
    return f"chain: {text} in {totals['seconds']:.1f} s"

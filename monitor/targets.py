"""Prometheus file_sd targets from the inventory and the roles' ``scrape_targets``.

A host is scraped for every ``scrape_targets`` entry of every role it has (``meta.yml``:
``scrape_targets: [{port: 9100, path: /metrics, job: node}]``), at its inventory address, with
its inventory labels, groups and roles as Prometheus labels. The caller (orchestrate, which
joins inventory and roles; monitor imports neither configure nor orchestrate) passes one
:class:`ScrapeHost` per host whose roles are applied; a host that left the inventory or lost
its role is simply not in the next file, and Prometheus's file_sd refresh drops it without a
restart. The file is replaced atomically, so Prometheus never reads half of one::

    write_file_sd(prometheus_dir / "targets" / "metalchain.json", file_sd_groups(hosts))

Labels: ``job``, ``__metrics_path__``, ``instance`` (the host's name, not its address, so a
renumbered host keeps its series), ``metalchain_host``, ``metalchain_groups`` and
``metalchain_roles`` (``,a,b,``: one regex ``.*,web,.*`` matches a member), and every
inventory label under its own name when it is a valid Prometheus label name that does not
clash with those (a clash or an invalid name is an error naming the host, never a silent drop).
A guest (a host with a ``vm:`` section) also has ``hypervisor`` (the host that holds it) and
``kind="vm"``, so a rule or a dashboard tells a dead VM from a dead machine; other hosts have
neither (Prometheus reads an absent label as ``""``: ``{kind!="vm"}`` selects them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.atomicfile import write_atomic
from runtime.jsondoc import json_text

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_JOB = re.compile(r"^[a-zA-Z0-9_.:-]{1,100}$")
#: Labels metalchain sets itself; inventory labels may not use these names.
OWN_LABELS = frozenset({"job", "instance", "metalchain_host", "metalchain_groups",
                        "metalchain_roles", "hypervisor", "kind"})
#: ``kind`` of a guest's targets (other hosts have no ``kind`` label).
GUEST_KIND = "vm"


class TargetError(ValueError):
    """A scrape target or a label that Prometheus would not take; names the role or host."""


@dataclass(frozen=True)
class ScrapeTarget:
    port: int
    job: str
    path: str = "/metrics"
    role: str = ""


@dataclass(frozen=True)
class ScrapeHost:
    name: str
    address: str
    groups: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[ScrapeTarget, ...] = ()
    #: the host holding this one when it is a guest (its inventory ``vm.hypervisor``)
    hypervisor: str | None = None


def scrape_targets(role: str, raw: Any) -> tuple[ScrapeTarget, ...]:
    """A role's ``scrape_targets`` from its meta.yml, checked (TargetError names the role)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TargetError(f"role {role}: scrape_targets must be a list")
    out = []
    for i, entry in enumerate(raw):
        where = f"role {role}: scrape_targets[{i}]"
        if not isinstance(entry, dict):
            raise TargetError(f"{where} must be a mapping like {{port: 9100, job: node}}")
        unknown = set(entry) - {"port", "path", "job"}
        if unknown:
            raise TargetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        port, job, path = entry.get("port"), entry.get("job"), entry.get("path", "/metrics")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise TargetError(f"{where}: port must be a number 1-65535, got {port!r}")
        if not isinstance(job, str) or not _JOB.match(job):
            raise TargetError(f"{where}: job must be a name of letters, digits and _.:-, "
                              f"got {job!r}")
        if not isinstance(path, str) or not path.startswith("/") or any(
                c.isspace() for c in path):
            raise TargetError(f"{where}: path must start with / and have no spaces, "
                              f"got {path!r}")
        out.append(ScrapeTarget(port=port, job=job, path=path, role=role))
    return tuple(out)


def file_sd_groups(hosts: Iterable[ScrapeHost]) -> list[dict[str, Any]]:
    """The file_sd document: one target group per host and scrape target, sorted (the same
    inventory gives the same bytes, so an unchanged file is not rewritten)."""
    groups = []
    for host in sorted(hosts, key=lambda h: h.name):
        base = _host_labels(host)
        seen: set[tuple[str, int, str]] = set()
        for t in sorted(host.targets, key=lambda t: (t.job, t.port, t.path)):
            if (t.job, t.port, t.path) in seen:    # two roles declaring one exporter
                continue
            seen.add((t.job, t.port, t.path))
            groups.append({"targets": [f"{_host_port(host.address)}:{t.port}"],
                           "labels": {**base, "job": t.job, "__metrics_path__": t.path}})
    return groups


def write_file_sd(path: Path, groups: Sequence[dict[str, Any]]) -> bool:
    """Write ``groups`` to ``path`` atomically unless it already holds them; True if written."""
    return write_atomic(path, json_text(list(groups)), 0o644, unchanged_ok=True)


def _host_labels(host: ScrapeHost) -> dict[str, str]:
    labels = {"instance": host.name, "metalchain_host": host.name,
              "metalchain_groups": _members(host.groups),
              "metalchain_roles": _members(host.roles)}
    if host.hypervisor:
        labels |= {"hypervisor": host.hypervisor, "kind": GUEST_KIND}
    for name, value in sorted(host.labels.items()):
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise TargetError(f"host {host.name}: label {name!r} is not a Prometheus label "
                              "name (letters, digits and _, not starting with __)")
        if name in OWN_LABELS:
            raise TargetError(f"host {host.name}: label {name!r} is one metalchain sets "
                              f"itself ({', '.join(sorted(OWN_LABELS))})")
        labels[name] = str(value)
    return labels


def _members(names: Sequence[str]) -> str:
    return f",{','.join(sorted(names))}," if names else ""


def _host_port(address: str) -> str:
    """An IPv6 address in brackets, as a target's host:port needs."""
    return f"[{address}]" if ":" in address else address

"""What each run did, per host, read from the tools' own output and the hosts' sshd logs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

_MC_CHANGED = re.compile(r"^(?:would change|changed) (?P<n>\d+)")


def metalchain_changed(doc: Mapping[str, Any]) -> dict[str, int]:
    """Per host: resources (handlers included) ``metalchain apply --json`` changed (or, in
    check mode, would change); 0 for a converged host."""
    out: dict[str, int] = {}
    for host, res in doc["hosts"].items():
        n = 0
        for step in res["steps"]:
            m = _MC_CHANGED.match(step.get("message") or "")
            if step["status"] == "changed" and m:
                n += int(m["n"])
        out[host] = n
    return out


def metalchain_changed_items(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per host, the resources (``role/identity``) that changed, in order, each once."""
    out: dict[str, list[str]] = {}
    for host, res in doc["hosts"].items():
        items: list[str] = []
        for step in res["steps"]:
            for change in step.get("changes") or ():
                item = change.split(": ", 1)[0]
                if item not in items:
                    items.append(item)
        out[host] = items
    return out


def metalchain_failures(doc: Mapping[str, Any]) -> list[str]:
    c = doc["counts"]
    if c.get("failed") or c.get("unreachable") or c.get("not_run"):
        return [f"{h}: {s['status']}: {s.get('message')}" for h, r in doc["hosts"].items()
                for s in r["steps"] if s["status"] in ("failed", "unreachable")] or [str(c)]
    return []


# sshd at LogLevel VERBOSE: one "Accepted" line per authenticated connection, one "Starting
# session" line per exec/shell/subsystem channel (a command).
_ACCEPTED = re.compile(r"\bAccepted (?:publickey|password|keyboard-interactive\S*) for ")
_SESSION = re.compile(r"\bStarting session: ")


def sshd_counts(lines: Iterable[str]) -> tuple[int, int]:
    """(SSH connections, commands) in sshd's log lines."""
    sessions = commands = 0
    for line in lines:
        if _ACCEPTED.search(line):
            sessions += 1
        elif _SESSION.search(line):
            commands += 1
    return sessions, commands


def per_host_spread(values: Mapping[str, int]) -> dict[str, int]:
    """min / max over hosts, for a table cell like ``1`` or ``1-3``."""
    vals = list(values.values())
    return {"min": min(vals), "max": max(vals)} if vals else {"min": 0, "max": 0}

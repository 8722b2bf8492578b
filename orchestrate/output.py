"""Output for the CLI: one JSON document with --json, rich tables on a terminal, plain
tab-separated lines otherwise (so that `| grep` and `| cut` work)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from inventory.secrets import Secret
from runtime.jsondoc import json_text

if TYPE_CHECKING:
    from configure.verify import VerifyReport
    from orchestrate.reports import RunReport

JSON_SCHEMA_VERSION = 1
T = TypeVar("T")


def _default(obj: Any) -> Any:
    if isinstance(obj, Secret):
        return obj.to_json()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def to_json(doc: Any) -> str:
    return json_text(doc, default=_default).rstrip("\n")


def emit_json(kind: str, doc: dict[str, Any]) -> None:
    """Print one versioned JSON document: {"kind": ..., "version": 1, ...}."""
    body = {"kind": kind, "version": JSON_SCHEMA_VERSION, **doc}
    sys.stdout.write(json_text(body, default=_default))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(c)
        for r in rows:
            t.add_row(*(cell(v) for v in r))
        Console().print(t)
        return
    print("\t".join(columns))
    for r in rows:
        print("\t".join(cell(v) for v in r))


def line(text: str) -> None:
    print(text)


def timestamp(t: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time (None stays None)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def print_diffs(report: RunReport) -> None:
    """The per-resource diffs of apply steps (what check mode would change, or did)."""
    for h, r in report.hosts.items():
        for s in r.steps:
            for res in s.outcome.data.get("results", []):
                if res["status"] in ("changed", "unknown", "failed") and (
                        res["changes"] or res["diff"] or res["message"]):
                    line(f"--- {h}: {res['role']}/{res['resource']} [{res['status']}]"
                         + (f" ({res['source']})" if res["source"] else ""))
                    for c in res["changes"]:
                        line(f"    {c}")
                    if res["message"]:
                        line(f"    {res['message']}")
                    if res["diff"]:
                        line(res["diff"].rstrip("\n"))


def print_summary(report: RunReport) -> None:
    rows = []
    for h, r in report.hosts.items():
        failed = next((s for s in r.steps if s.outcome.status in ("failed", "unreachable")),
                      None)
        rows.append([h, r.status, len(r.steps), r.changed,
                     f"{failed.step}: {failed.outcome.message}" if failed else ""])
    for h in report.not_run:
        rows.append([h, "not run", 0, 0, ""])
    for h, why in report.held.items():
        rows.append([h, "held", 0, 0, f"not run: {why}"])
    table(f"run {report.uid}", ["host", "status", "steps", "changed", "failure"], rows)
    c = report.counts()
    line(f"run {report.uid}: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    if report.stopped_reason:
        line(f"stopped: {report.stopped_reason}")


def print_verify(report: VerifyReport) -> None:
    """Human output of verify: one line per host, then each failed check with its message."""
    for host, r in report.hosts.items():
        line(f"{host}: {r.status} ({r.message}) in {r.duration:.1f} s")
        for t in r.tests:
            if t.outcome in ("failed", "error"):
                line(f"  {t.outcome.upper()} {t.id}")
                for text in t.message.splitlines()[-8:]:
                    line(f"    {text}")
    c = {"passed": 0, "failed": 0, "error": 0, "no_tests": 0}
    for r in report.hosts.values():
        c[r.status] = c.get(r.status, 0) + 1
    line("verify: " + ", ".join(f"{k}={v}" for k, v in c.items())
         + f" ({report.duration:.1f} s)")


def with_progress(call: Callable[[Callable[[dict[str, Any]], None]], T]) -> T:
    """``call(on_event)`` with the run's progress shown on stderr (a live table on a
    terminal, one line per host-step otherwise); stdout stays for results."""
    from orchestrate.progress import make_progress

    progress = make_progress()
    try:
        return call(progress)
    finally:
        progress.close()

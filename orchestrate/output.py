"""Output for the CLI: one JSON document with --json, rich tables on a terminal, plain
tab-separated lines otherwise (so that `| grep` and `| cut` work).

Colour only on a terminal, and never with ``$NO_COLOR`` set or ``--no-color`` given
(:func:`use_color`). Counts go through :func:`plural`, sizes through :func:`human_size`.

Everything printed here is data first: host names, command output, diffs, facts and error
messages pass through :func:`runtime.text.terminal_safe` (no escape sequence reaches the
terminal) and rich gets ``Text`` objects, never markup (``[link=...]`` from a host stays text).
Commands print through :func:`line` and :func:`table`, never ``print``/``click.echo``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from inventory.secrets import Secret
from runtime.jsondoc import json_text
from runtime.text import human_size as human_size  # re-exported for the commands
from runtime.text import json_terminal_safe, plural, terminal_safe

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
    return json_terminal_safe(json_text(doc, default=_default).rstrip("\n"))


def emit_json(kind: str, doc: dict[str, Any]) -> None:
    """Print one versioned JSON document: {"kind": ..., "version": 1, ...}. Characters a
    terminal acts on are JSON escapes in it (the same document to a parser)."""
    body = {"kind": kind, "version": JSON_SCHEMA_VERSION, **doc}
    sys.stdout.write(json_terminal_safe(json_text(body, default=_default)))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def color_wanted(*, is_tty: bool, environ: Any, no_color_flag: bool) -> bool:
    """Colour only on a terminal, unless ``--no-color`` or a non-empty ``$NO_COLOR``
    (https://no-color.org) says otherwise."""
    return is_tty and not no_color_flag and not environ.get("NO_COLOR")


def use_color(stream: Any = None) -> bool:
    """Whether to colour what goes to ``stream`` (default stdout) in this invocation."""
    ctx = click.get_current_context(silent=True)
    flag = bool(getattr(ctx.obj, "no_color", False)) if ctx is not None else False
    stream = stream or sys.stdout
    return color_wanted(is_tty=stream.isatty(), environ=os.environ, no_color_flag=flag)


def cell(value: Any) -> str:
    """One table cell as one line of text (tabs and newlines escaped, so a plain row stays
    one tab-separated line)."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{cell(k)}={cell(v)}" for k, v in value.items()) or "-"
    return terminal_safe(value, multiline=False)


def rich_text(value: Any) -> Any:
    """``value`` for rich: a ``Text`` (shown as is: ``[red]`` or ``[link=...]`` in it is not
    markup), with anything a terminal would act on escaped."""
    from rich.text import Text

    return Text(terminal_safe(value))


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=rich_text(title))
        for c in columns:
            t.add_column(rich_text(c))
        for r in rows:
            t.add_row(*(rich_text(cell(v)) for v in r))
        Console(no_color=not use_color()).print(t)
        return
    print("\t".join(cell(c) for c in columns))
    for r in rows:
        print("\t".join(cell(v) for v in r))


def line(text: str, *, err: bool = False, **style: Any) -> None:
    """Print ``text`` on stdout (stderr with ``err``), newlines kept, escape sequences shown
    as data; in click ``style`` (``fg="green"``, ``bold=True``) when given: the style is
    added after the escaping."""
    safe = terminal_safe(text)
    print(click.style(safe, **style) if style else safe, file=sys.stderr if err else None)


def timestamp(t: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time (None stays None)."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds")


def diff_header(host: str, res: dict[str, Any]) -> str:
    """The line above a resource's diff. It starts with ``==``, which no unified diff line
    does (they start with ``---``, ``+++``, ``@@``, `` ``, ``+``, ``-`` or ``\\``), so a header
    is never taken for a diff's own file lines."""
    source = f" ({res['source']})" if res.get("source") else ""
    return f"== {host} {res['role']}/{res['resource']}: {res['status']}{source} =="


def diff_lines(host: str, res: dict[str, Any]) -> list[str]:
    """A resource's header, its changes and message (indented), then its diff as is."""
    out = [diff_header(host, res)]
    out.extend(f"    {c}" for c in res["changes"])
    if res["message"]:
        out.append(f"    {res['message']}")
    if res["diff"]:
        out.extend(res["diff"].rstrip("\n").split("\n"))
    return out


_DIFF_STYLES = (("==", {"fg": "cyan", "bold": True}), ("+++", {"bold": True}),
                ("---", {"bold": True}), ("@@", {"fg": "cyan"}), ("+", {"fg": "green"}),
                ("-", {"fg": "red"}))


def diff_style(text: str, color: bool) -> dict[str, Any]:
    """The click style of a diff line by what it is (header, file line, hunk, added,
    removed) when ``color``; no style otherwise."""
    if color:
        for prefix, style in _DIFF_STYLES:
            if text.startswith(prefix):
                return style
    return {}


def style_diff_line(text: str, color: bool) -> str:
    """``text`` (escaped: a diff shows a host's file) coloured by :func:`diff_style`."""
    safe = terminal_safe(text)
    style = diff_style(safe, color)
    return click.style(safe, **style) if style else safe


def print_diffs(report: RunReport) -> None:
    """The per-resource diffs of apply steps (what check mode would change, or did)."""
    color = use_color()
    for h, r in report.hosts.items():
        for s in r.steps:
            for res in s.outcome.data.get("results", []):
                if res["status"] in ("changed", "unknown", "failed") and (
                        res["changes"] or res["diff"] or res["message"]):
                    for text in diff_lines(h, res):
                        line(text, **diff_style(text, color))


def summary_lines(report: RunReport) -> list[str]:
    """The closing lines of a run, from its per-host and per-item outcomes:

        run UID: 5 hosts: 2 changed, 3 ok
        changed 3 of 41 resources on 5 hosts

    (``would change`` in check mode; failed, unknown and skipped items are added when
    there are any; a run without apply steps counts its steps)."""
    c = report.counts()
    total = len(report.hosts) + len(report.not_run) + len(report.held)
    states = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in
                       sorted(c.items(), key=lambda kv: _HOST_ORDER.index(kv[0])) if v)
    out = [f"run {report.uid}: {plural(total, 'host')}" + (f": {states}" if states else "")]
    items = report.item_counts()
    if items.total:
        verb = "would change" if report.check else "changed"
        text = (f"{verb} {items.by_status.get('changed', 0)} of "
                f"{plural(items.total, items.kind)} on {plural(items.hosts, 'host')}")
        extra = [f"{items.by_status[k]} {k}" for k in ("failed", "unreachable", "unknown",
                                                        "skipped")
                 if items.by_status.get(k)]
        out.append(text + (f" ({', '.join(extra)})" if extra else ""))
    return out


_HOST_ORDER = ("changed", "ok", "failed", "unreachable", "skipped", "not_run", "held")


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
    for text in summary_lines(report):
        line(text)
    if report.stopped_reason:
        line(f"stopped: {report.stopped_reason}")
    if report.interrupted:
        line(interrupted_line(report))


def interrupted_line(report: RunReport) -> str:
    """What an interrupted run left undone, and how to finish it."""
    parts = [f"not run: {', '.join(report.not_run)}"] if report.not_run else []
    if report.incomplete:
        parts.append(f"stopped between steps: {', '.join(report.incomplete)}")
    left = "; ".join(parts) or "every host had finished"
    return (f"{report.interrupted} by a stop request ({left}); --limit @failed runs the "
            f"hosts that failed or were not reached")


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
    line(f"verify: {plural(len(report.hosts), 'host')}: "
         + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if v)
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

"""Progress while a run goes: a live rich table on a terminal, plain lines otherwise.

Host names, step names and messages are data (a message may quote a host's output): they are
escaped by :func:`runtime.text.terminal_safe` and given to rich as ``Text``, never markup."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrate.output import rich_text, use_color
from runtime.text import terminal_safe


def stopping_line(ev: dict[str, Any]) -> str:
    """The acknowledgement of a stop request (a ``run_stopping`` event)."""
    hosts = ", ".join(ev.get("hosts") or ())
    if ev.get("state") == "aborting":
        return (f"aborting: giving up on the step in progress on {hosts}" if hosts
                else "aborting")
    source = ev.get("source") or ""
    # A stop the run asked for itself (a lost lease) is not the operator's Ctrl-C.
    why = "Ctrl-C again to abort" if source in ("", "SIGINT", "SIGTERM") else source
    if hosts:
        return f"stopping after the current step on {hosts}; {why}"
    return f"stopping: no step is running, none will start; {why}"


class PlainProgress:
    """One line per finished host-step, to stderr (stdout stays for results/--json)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "run_stopping":
            with self._lock:
                self.stream.write(terminal_safe(stopping_line(ev), multiline=False) + "\n")
                self.stream.flush()
        if ev["event"] == "host_step_end":
            extra = f" ({ev['message']})" if ev.get("status") in ("failed", "unreachable") \
                and ev.get("message") else ""
            fields = (ev["host"], ev["step"], ev["status"], f"{ev.get('duration', 0):.2f}s")
            with self._lock:
                self.stream.write("\t".join(terminal_safe(f, multiline=False) for f in fields)
                                  + terminal_safe(extra, multiline=False) + "\n")
                self.stream.flush()

    def close(self) -> None:
        pass


class HostClocks:
    """Per host: its current step, status and elapsed time. A host's clock runs from its
    first step's start while a step is running and stops at each step's end, so a host that
    has finished (or waits for the next play) shows the time it took, not the time since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()  # the live display's refresh thread reads rows()
        #: host -> [step, status, first start, elapsed up to the last step end, running since]
        self._hosts: dict[str, list[Any]] = {}

    def update(self, ev: dict[str, Any]) -> bool:
        """Take one run event; True if it changed a row."""
        if ev["event"] not in ("host_step_start", "host_step_end"):
            return False
        with self._lock:
            now = self.clock()
            row = self._hosts.setdefault(ev["host"], [ev["step"], "", now, 0.0, None])
            row[0] = ev["step"]
            if ev["event"] == "host_step_start":
                row[1] = "running"
                row[4] = now
            else:
                row[1] = ev["status"]
                if row[4] is not None:
                    row[3] = now - row[2]
                row[4] = None
            return True

    def rows(self) -> list[tuple[str, str, str, float]]:
        """(host, step, status, elapsed seconds) in the order hosts first appeared."""
        with self._lock:
            now = self.clock()
            return [(h, step, status, (now - first) if running is not None else done)
                    for h, (step, status, first, done, running) in self._hosts.items()]


class LiveProgress:
    """A live table: host, current step, state, elapsed (stopped once the host is done)."""

    def __init__(self, console: Console | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clocks = HostClocks(clock)
        self._lock = threading.Lock()
        self._live = Live(self._render(), console=console or Console(
            stderr=True, no_color=not use_color(sys.stderr)), refresh_per_second=4,
            transient=False, get_renderable=self._render)
        self._live.start()

    def _render(self) -> Table:
        t = Table(title="run")
        for c in ("host", "step", "status", "elapsed"):
            t.add_column(c)
        for host, step, status, elapsed in self._clocks.rows()[-40:]:
            t.add_row(*(rich_text(terminal_safe(v, multiline=False))
                        for v in (host, step, status, f"{elapsed:.1f}s")))
        return t

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "run_stopping":
            self._live.console.print(rich_text(stopping_line(ev)), markup=False,
                                     highlight=False)
            return
        with self._lock:
            if self._clocks.update(ev):
                self._live.update(self._render())

    def close(self) -> None:
        self._live.stop()


def make_progress() -> PlainProgress | LiveProgress:
    return LiveProgress() if sys.stderr.isatty() else PlainProgress()

"""Progress while a run goes: a live rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def stopping_line(ev: dict[str, Any]) -> str:
    """The acknowledgement of a stop request (a ``run_stopping`` event)."""
    hosts = ", ".join(ev.get("hosts") or ())
    if ev.get("state") == "aborting":
        return (f"aborting: giving up on the step in progress on {hosts}" if hosts
                else "aborting")
    if hosts:
        return f"stopping after the current step on {hosts}; Ctrl-C again to abort"
    return "stopping: no step is running, none will start; Ctrl-C again to abort"


class PlainProgress:
    """One line per finished host-step, to stderr (stdout stays for results/--json)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "run_stopping":
            with self._lock:
                self.stream.write(stopping_line(ev) + "\n")
                self.stream.flush()
        if ev["event"] == "host_step_end":
            extra = f" ({ev['message']})" if ev.get("status") in ("failed", "unreachable") \
                and ev.get("message") else ""
            with self._lock:
                self.stream.write(f"{ev['host']}\t{ev['step']}\t{ev['status']}\t"
                                  f"{ev.get('duration', 0):.2f}s{extra}\n")
                self.stream.flush()

    def close(self) -> None:
        pass


class LiveProgress:
    """A live table: host, current step, state, elapsed."""

    def __init__(self) -> None:
        self._rows: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4,
                          transient=False)
        self._live.start()

    def _render(self) -> Table:
        t = Table(title="run")
        for c in ("host", "step", "status", "elapsed"):
            t.add_column(c)
        now = time.monotonic()
        shown = list(self._rows.items())[-40:]
        for host, (step, status, started) in shown:
            t.add_row(host, step, status, f"{now - started:.1f}s")
        return t

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev["event"] == "run_stopping":
            self._live.console.print(stopping_line(ev), markup=False, highlight=False)
            return
        if ev["event"] not in ("host_step_start", "host_step_end"):
            return
        with self._lock:
            started = self._rows.get(ev["host"], [None, None, time.monotonic()])[2]
            status = "running" if ev["event"] == "host_step_start" else ev["status"]
            self._rows[ev["host"]] = [ev["step"], status, started]
            self._live.update(self._render())

    def close(self) -> None:
        self._live.stop()


def make_progress() -> PlainProgress | LiveProgress:
    return LiveProgress() if sys.stderr.isatty() else PlainProgress()

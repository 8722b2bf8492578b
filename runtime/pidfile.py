"""Pid files and liveness: which process a pid file names, whether it lives, how to stop it.

A pid can be recycled once its process is gone, so a pid file is trusted only when the process
it names carries a marker on its command line (the pid file's own path: QEMU's ``-pidfile``,
the BMC's and mirror daemon's ``--pidfile``). A zombie counts as gone: it has exited, only its
exit status is left to collect (a daemonized QEMU's parent may never reap it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.atomicfile import write_atomic


def read_pid(pidfile: Path) -> int | None:
    """The positive integer in ``pidfile``, or None (missing, empty, not a number)."""
    try:
        pid = int(Path(pidfile).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def write_pidfile(pidfile: Path, pid: int | None = None) -> None:
    """Record ``pid`` (default: this process) atomically: a reader never sees an empty file."""
    write_atomic(pidfile, f"{os.getpid() if pid is None else pid}\n")


@dataclass(frozen=True)
class ProcStat:
    """What liveness checks read from ``/proc/PID/stat``."""

    state: str   # R, S, D, Z (zombie), X (dead) ...
    ppid: int
    start: int   # start time in clock ticks after boot: with the pid, names one process


def parse_stat(line: str) -> ProcStat:
    """Parse a ``/proc/PID/stat`` line; the command name (field 2) may hold spaces and
    parens, so fields are counted from its last ``)``. Raises ValueError if malformed."""
    rest = line[line.rindex(")") + 2:].split()
    if len(rest) < 20:
        raise ValueError(f"short /proc stat line: {line[:80]!r}")
    return ProcStat(rest[0], int(rest[1]), int(rest[19]))


def process_stat(pid: int) -> ProcStat | None:
    """``pid``'s stat, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return parse_stat(handle.read())
    except (OSError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The state letter (``R``, ``S``, ``Z`` ...), None if there is no such pid."""
    stat = process_stat(pid) if pid > 0 else None
    return stat.state if stat else None


def process_alive(pid: int) -> bool:
    """True if ``pid`` exists and has not exited (a zombie or a dead task is gone)."""
    return pid > 0 and process_state(pid) not in (None, "Z", "X")


def same_process(pid: int, start: int) -> bool:
    """True if ``pid`` is alive and still the process that started at ``start`` (not a
    recycled pid): the guard for pids recorded without a pid file on their command line."""
    stat = process_stat(pid) if pid > 0 else None
    return stat is not None and stat.start == start and stat.state not in ("Z", "X")


def command_line(pid: int) -> list[bytes] | None:
    """The argv of ``pid`` as bytes, or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def live_pid(pidfile: Path, markers: Iterable[str] | None = None) -> int | None:
    """The live pid recorded in ``pidfile`` whose command line holds every one of ``markers``
    as whole arguments (default: the pid file's own path), else None (stale or recycled pid).

    Example: ``live_pid(run / "dnsmasq.pid", markers=[f"--conf-file={conf}"])``.
    """
    pid = read_pid(pidfile)
    if pid is None or not process_alive(pid):
        return None
    argv = command_line(pid)
    if argv is None:
        return None
    wanted = [str(pidfile)] if markers is None else list(markers)
    return pid if all(w.encode() in argv for w in wanted) else None


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit (reaping it if it is our child)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        reap(pid)
        if not process_alive(pid):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.2)


def terminate(pid: int, *, term_timeout: float, kill_timeout: float) -> bool:
    """SIGTERM ``pid``, then SIGKILL if it is still there after ``term_timeout`` s.

    True once it is gone; False if it survived SIGKILL for ``kill_timeout`` s (a task stuck in
    the kernel), which the caller reports with its own error.
    """
    for sig, limit in ((signal.SIGTERM, term_timeout), (signal.SIGKILL, kill_timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            reap(pid)
            return True
        if wait_gone(pid, limit):
            return True
    return False

"""Who runs a run, and whether that process still does.

A run row records its owner process when it starts (host name, pid, the pid's start time in
clock ticks, a short command) and its owner refreshes ``heartbeat_at`` while it runs. A row
still ``running`` whose owner is gone — killed with SIGKILL, a power cut — is shown as
``interrupted`` when it is read: on the owner's own host the pid is asked (gone, or recycled
by another process: the start time differs); from another controller, which cannot see that
pid, a heartbeat older than :data:`HEARTBEAT_STALE` says it. Rows written before schema 5
have no owner and are shown as they are.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from runtime.pidfile import process_stat, same_process

#: Seconds between two heartbeats of a running run.
HEARTBEAT_EVERY = 15.0
#: A run whose heartbeat is older than this, seen from another host, is interrupted.
HEARTBEAT_STALE = 6 * HEARTBEAT_EVERY
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunOwner:
    host: str
    pid: int
    pid_start: str      # /proc/PID/stat start time (clock ticks), as text
    command: str


def this_process(command: str) -> RunOwner:
    """The owner record of the calling process."""
    pid = os.getpid()
    stat = process_stat(pid)
    return RunOwner(socket.gethostname(), pid, str(stat.start) if stat else "", command)


def alive_here(pid: int, pid_start: str) -> bool:
    """True if ``pid`` on this host is still the process that started at ``pid_start``."""
    try:
        start = int(pid_start)
    except ValueError:
        return False
    return same_process(pid, start)


def seen_status(status: str, *, owner_host: str | None, pid: int | None,
                pid_start: str | None, heartbeat_at: float | None, started_at: float,
                here: str, now: float, alive: Callable[[int, str], bool] = alive_here,
                stale_after: float = HEARTBEAT_STALE) -> str:
    """The status to show for a run row: ``status``, except a ``running`` row whose owner
    is gone, which is ``interrupted``.

    >>> seen_status("running", owner_host="c1", pid=7, pid_start="9", heartbeat_at=None,
    ...             started_at=0.0, here="c1", now=1.0, alive=lambda p, s: False)
    'interrupted'
    """
    if status != "running" or not owner_host:
        return status
    if owner_host == here and pid:
        return status if alive(pid, pid_start or "") else INTERRUPTED
    last = heartbeat_at if heartbeat_at is not None else started_at
    return INTERRUPTED if now - last > stale_after else status

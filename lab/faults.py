"""Faults done on purpose to fleet hosts, and their cures: what a reliability test or an
operator rehearsing an outage uses to lose a host in the middle of a run.

* ``kill``: SIGKILL of the host's init, so its whole PID namespace dies at once (a crash or
  a power cut); its network namespace and address stay, so the kernel answers new
  connections with a reset. Cured by :func:`reboot` (the host comes back with its disk and
  its host key).
* ``freeze``: SIGSTOP of every process of the host (a hung machine): its kernel still
  acknowledges TCP, nothing answers above it. Cured by SIGCONT (:func:`thaw`).
* ``cut``: the host's port on the lab bridge set down (a pulled cable): packets to and from
  it vanish. Cured by :func:`relink`.

The faults act from outside the host (signals, ``ip``), never over SSH, so they work on a
host that no longer answers, and each cure checks that the host answers SSH with its pinned
key again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from inventory.errors import LabError
from lab.fleet import HostRecord, cgroup_pids, reboot_host, wait_for_ssh
from lab.network import BRIDGE, run_command
from runtime.pidfile import process_stat, same_process

FAULTS = ("kill", "freeze", "cut")
#: How often ``freeze`` sweeps the host's processes again (a fork in flight escapes a sweep).
FREEZE_SWEEPS = 3
#: Seconds ``freeze`` waits for every process to show stopped (signals land when it runs).
FREEZE_TIMEOUT = 10.0


def host_pids(record: HostRecord) -> list[int]:
    """Every process of the host: its cgroups (all hierarchies), init included."""
    pids = {p for c in record.cgroups for p in cgroup_pids(Path(c))}
    if same_process(record.init_pid, record.init_start):
        pids.add(record.init_pid)
    return sorted(pids)


_SIGSTOP_BIT = 1 << (signal.SIGSTOP - 1)


def _stopped(pid: int) -> bool:
    """``pid`` runs no more of its own code: stopped, gone, or with a SIGSTOP pending.

    A pending SIGSTOP is delivered before the process next returns to user space, so it
    counts as frozen: a process sleeping in the kernel (``D``) -- e.g. a vfork()/posix_spawn()
    parent whose child was stopped before its exec -- never gets to run to take it, and
    waiting for its ``T`` would wait forever.
    """
    stat = process_stat(pid)
    if stat is None or stat.state in ("T", "t", "Z", "X"):
        return True
    return _sigstop_pending(pid)


def _sigstop_pending(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # gone meanwhile
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd"):
            try:
                if int(value.strip(), 16) & _SIGSTOP_BIT:
                    return True
            except ValueError:
                continue
    return False


def kill(record: HostRecord) -> None:
    """SIGKILL of the host's init: every process of its PID namespace dies with it."""
    if not same_process(record.init_pid, record.init_start):
        raise LabError(f"{record.name} is not running")
    os.kill(record.init_pid, signal.SIGKILL)


def freeze(record: HostRecord, *, timeout: float = FREEZE_TIMEOUT) -> int:
    """SIGSTOP of every process of the host, swept until none is left running; returns how
    many were stopped.

    A signal is delivered when its target next runs, so right after ``kill`` a process may
    still show as running (on a loaded machine for a while): the sweep goes on, sending
    SIGSTOP again to whatever still runs (a fork in flight escapes a sweep), until every
    process shows stopped or ``timeout`` seconds have passed.
    """
    stopped: set[int] = set()
    deadline = time.monotonic() + timeout
    for sweep in itertools.count():
        running = [p for p in host_pids(record) if not _stopped(p)]
        if not running and sweep >= FREEZE_SWEEPS:
            break
        if time.monotonic() >= deadline:
            raise LabError(f"{record.name}: processes {running} still run after SIGSTOP "
                           f"({timeout:g} s)")
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.add(pid)
        if running:
            time.sleep(0.01)
    return len(stopped)


def thaw(record: HostRecord, *, timeout: float = 60.0) -> None:
    """SIGCONT of every process of the host; waits until SSH answers again."""
    for pid in host_pids(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    wait_for_ssh(record, time.monotonic() + timeout)


def cut(record: HostRecord) -> None:
    """The host's port on the lab bridge down: nothing reaches it, nothing leaves it."""
    run_command(["ip", "-n", record.lab_netns, "link", "set", record.lab_ifname, "down"])


def relink(record: HostRecord, *, timeout: float = 60.0) -> None:
    """The host's bridge port up again; waits until SSH answers."""
    run_command(["ip", "-n", record.lab_netns, "link", "set", record.lab_ifname, "up"])
    wait_for_ssh(record, time.monotonic() + timeout)


def reboot(record: HostRecord, *, bridge: str = BRIDGE, timeout: float = 120.0
           ) -> HostRecord:
    """Start a killed host again with its disk and identity (``lab.fleet.reboot_host``).
    Its launcher lives as long as the host; once forgotten here, the subprocess module
    reaps it when it exits (or the machine's init does, after this process ended)."""
    fresh, _launcher = reboot_host(record, bridge, timeout=timeout)
    return fresh


def inject(kind: str, record: HostRecord) -> None:
    """Do the fault ``kind`` (one of :data:`FAULTS`) to the host."""
    actions: dict[str, Callable[[HostRecord], object]] = {"kill": kill, "freeze": freeze,
                                                          "cut": cut}
    if kind not in actions:
        raise LabError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")
    actions[kind](record)


def heal(kind: str, record: HostRecord, *, timeout: float = 120.0) -> HostRecord:
    """Undo the fault ``kind``; returns the host's record (new pids after a reboot)."""
    if kind == "kill":
        return reboot(record, timeout=timeout)
    if kind == "freeze":
        thaw(record, timeout=timeout)
        return record
    if kind == "cut":
        relink(record, timeout=timeout)
        return record
    raise LabError(f"unknown fault {kind!r}; known: {', '.join(FAULTS)}")

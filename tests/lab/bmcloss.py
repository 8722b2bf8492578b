"""BMC under loss (issue 13), shared by tests/lab/test_bmc_loss.py and bench/bmc_loss.py.

One idle QEMU machine (no OS: SeaBIOS finds nothing to boot), its lab BMC, and a lossy UDP
relay (lab/udprelay.py) in front of the BMC. Every power and boot-device call goes through
the relay with metalchain's IPMI driver; what the machine did is counted on the QEMU side,
from the events of the lab's own QMP monitor (not the BMC's):

* STOP   = QEMU paused the vCPUs: the BMC's "off" (stop + system_reset) or "cycle";
* RESUME = QEMU let them run: the BMC's "on" (system_reset + cont) or "cycle";
* RESET (not from the guest) = any of those, and the BMC's "reset" (boot_set + system_reset),
  counted for ``reset`` calls only.

A cycle that acted twice shows as two STOPs and two RESUMEs; "off" while off and "on" while
on are no-ops in the lab BMC (it checks the run state first), so they add nothing. Guest
resets (SeaBIOS retrying) are RESET events with ``guest: true`` and are not counted.

Per call: the power state before (read over QMP), the call with its time limit in a thread
(``hung`` = still running ``HANG_GRACE`` s after its limit), a quiet wait longer than the
relay's largest delay (so a late duplicate is charged to the call that sent it), then the
events it caused and the state after. ``double`` = more STOPs or RESUMEs than the call may
cause from the state it started in; ``wrong`` = it reported success but the machine is not
in the state asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

from inventory.errors import BmcError, LabError
from lab.bmc import BmcProcessSpec, start_bmc, stop_bmc
from lab.machine import Machine, MachineSpec, power_state_of
from lab.udprelay import UdpRelay
from provision.bmc import CC_OK, CMD_CHASSIS_CONTROL, NETFN_CHASSIS, IpmiBmc

USER = "admin"
PASSWORD = "loss-Pässw0rd"
#: Seconds past its limit after which a call that has not returned counts as hung.
HANG_GRACE = 2.0
#: Time limits (seconds) per call kind, like a step's ``timeout:``.
LIMITS = {"bootdev": 6.0, "on": 6.0, "off": 6.0, "cycle": 12.0, "reset": 6.0}
#: The calls of one round, in order; each starts from the state the previous one left (the
#: machine starts off, so the round is: boot device, on, cycle, reset, cycle, off).
ROUND = ("bootdev", "on", "cycle", "reset", "cycle", "off")


class QmpEvents:
    """A QMP connection that counts asynchronous events and can run ``query-status``."""

    def __init__(self, path: Path, timeout: float = 3.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self._file = self.sock.makefile("rb")
        self._replies: Queue[dict[str, Any]] = Queue()
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._next = 0
        greeting = json.loads(self._file.readline())
        if "QMP" not in greeting:
            raise LabError(f"QMP {path}: unexpected greeting")
        self.sock.settimeout(None)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.execute("qmp_capabilities")

    def _read(self) -> None:
        for line in self._file:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "event" in message:
                name = str(message["event"])
                if name == "RESET" and message.get("data", {}).get("guest"):
                    name = "GUEST_RESET"
                with self._lock:
                    self.counts[name] += 1
            else:
                self._replies.put(message)

    def execute(self, command: str) -> Any:
        self._next += 1
        self.sock.sendall(json.dumps({"execute": command, "id": self._next}).encode() + b"\n")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                reply = self._replies.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                raise LabError(f"QMP: no answer to {command}") from None
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise LabError(f"QMP: {command}: {reply['error']}")
                return reply.get("return")

    def power(self) -> str:
        return power_state_of(str(self.execute("query-status")["status"]))

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=2)


@dataclass
class CallResult:
    loss: float
    call: str
    before: str
    outcome: str            # ok | failed | hung
    seconds: float
    limit: float
    stops: int
    resumes: int
    resets: int
    after: str
    double: bool
    wrong: bool
    error: str = ""


#: Most STOPs / RESUMEs a call may cause, from the power state it starts in.
def allowed(call: str, before: str) -> tuple[int, int]:
    if call == "cycle":
        return (1, 1) if before == "on" else (0, 1)
    if call == "off":
        return (1, 0) if before == "on" else (0, 0)
    if call == "on":
        return (0, 1) if before == "off" else (0, 0)
    return (0, 0)  # bootdev; reset (pauses nothing: it is counted in RESETs, at most 1)


def expected_after(call: str) -> str | None:
    return {"cycle": "on", "on": "on", "off": "off"}.get(call)


def legacy_power_cycle(driver: IpmiBmc, timeout: float) -> None:
    """What ``IpmiBmc.power_cycle`` did before issue 13: the chassis "cycle" control with
    pyghmi's retransmissions and a second attempt on a new session (for ``--legacy``)."""
    code, _ = driver._raw("power cycle", NETFN_CHASSIS, CMD_CHASSIS_CONTROL, [2], timeout)
    if code == 0xD5:
        driver.power_on(timeout=timeout)
    elif code != CC_OK:
        raise BmcError(f"power cycle: completion code 0x{code:02x}")


@dataclass
class Rig:
    machine: Machine
    bmc: BmcProcessSpec
    events: QmpEvents
    relay: UdpRelay
    root: Path
    legacy: bool = False
    limits: dict[str, float] = field(default_factory=lambda: dict(LIMITS))
    results: list[CallResult] = field(default_factory=list)

    def driver(self) -> IpmiBmc:
        return IpmiBmc("lossnode", "127.0.0.1", port=self.relay.port, user=USER,
                       password=PASSWORD.encode())

    def call(self, driver: IpmiBmc, call: str, loss: float, step: int) -> CallResult:
        limit = self.limits[call]
        actions: dict[str, Callable[[], object]] = {
            "bootdev": lambda: driver.set_bootdev("network" if step % 2 else "disk",
                                                  timeout=limit),
            "on": lambda: driver.power_on(timeout=limit),
            "off": lambda: driver.power_off(timeout=limit),
            "reset": lambda: driver.power_reset(timeout=limit),
            "cycle": (lambda: legacy_power_cycle(driver, limit)) if self.legacy
            else lambda: driver.power_cycle(timeout=limit),
        }
        before = self.events.power()
        start_counts = self.events.snapshot()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                actions[call]()
                box["ok"] = True
            except BmcError as exc:
                box["error"] = str(exc)
            except Exception as exc:  # noqa: BLE001 - anything else is a finding, not a crash
                box["error"] = f"UNEXPECTED {type(exc).__name__}: {exc}"

        started = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(limit + HANG_GRACE)
        seconds = time.monotonic() - started
        if thread.is_alive():
            outcome = "hung"
        else:
            outcome = "ok" if box.get("ok") else "failed"
        # Quiet time: longer than the relay's largest delay and a worker's last attempt.
        time.sleep(self.relay.delay[1] + 0.3)
        counts = self.events.snapshot() - start_counts
        after = self.events.power()
        max_stops, max_resumes = allowed(call, before)
        stops, resumes = counts.get("STOP", 0), counts.get("RESUME", 0)
        resets = counts.get("RESET", 0)
        double = stops > max_stops or resumes > max_resumes or (call == "reset" and resets > 1)
        want = expected_after(call)
        wrong = outcome == "ok" and want is not None and after != want
        if outcome == "ok" and call == "cycle" and before == "on":
            wrong = wrong or stops != 1 or resumes != 1
        if outcome == "ok" and call == "reset":
            wrong = wrong or resets != 1
        result = CallResult(loss, call, before, outcome, round(seconds, 3), limit, stops,
                            resumes, resets, after, double, wrong,
                            str(box.get("error", ""))[:300])
        self.results.append(result)
        return result

    def level(self, loss: float, calls: int, delay: tuple[float, float], seed: int
              ) -> list[CallResult]:
        """``calls`` calls (ROUND repeated) with ``loss`` dropped in each direction."""
        self.relay.set_loss(loss, loss, delay)
        out = []
        driver = self.driver()
        try:
            for step in range(calls):
                out.append(self.call(driver, ROUND[step % len(ROUND)], loss, step))
        finally:
            driver.close()
        return out


def _free(port: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        return port


@contextmanager
def rig(bmc_port: int, relay_port: int, *, seed: int = 13, legacy: bool = False
        ) -> Iterator[Rig]:
    """One idle machine, its BMC on ``bmc_port``, a relay on ``relay_port``; all torn down."""
    root = Path(tempfile.mkdtemp(prefix="mc-loss-", dir="/tmp"))  # short: QMP socket paths
    password_file = root / "bmc.password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(PASSWORD + "\n")
    machine = Machine(MachineSpec("lossnode", root / "m", "52:54:00:00:13:01", network=None,
                                  memory_mib=64, disk_bytes=16 * 1024 * 1024, accel="tcg",
                                  nice=19))
    spec = BmcProcessSpec(name="lossnode", port=_free(bmc_port),
                          qmp_socket=machine.bmc_qmp_socket,
                          state_file=root / "bmc-state.json", user=USER,
                          password_file=password_file, pidfile=root / "bmc.pid",
                          logfile=root / "bmc.log")
    events: QmpEvents | None = None
    relay: UdpRelay | None = None
    try:
        machine.start()
        start_bmc(spec)
        events = QmpEvents(machine.qmp_socket)
        relay = UdpRelay(("127.0.0.1", bmc_port), listen_port=_free(relay_port), seed=seed)
        relay.start()
        yield Rig(machine, spec, events, relay, root, legacy)
    finally:
        if relay is not None:
            relay.close()
        if events is not None:
            events.close()
        try:
            stop_bmc(spec.pidfile)
        finally:
            machine.stop()
            shutil.rmtree(root, ignore_errors=True)


def summary(results: list[CallResult]) -> list[dict[str, Any]]:
    """One row per loss level: calls, outcomes, double actions, latency percentiles."""
    rows = []
    for loss in sorted({r.loss for r in results}):
        rs = [r for r in results if r.loss == loss]
        secs = sorted(r.seconds for r in rs)
        rows.append({
            "loss": loss, "calls": len(rs),
            "succeeded": sum(r.outcome == "ok" for r in rs),
            "failed_clearly": sum(r.outcome == "failed" and not r.error.startswith("UNEXPECTED")
                                  for r in rs),
            "failed_unexpectedly": sum(r.error.startswith("UNEXPECTED") for r in rs),
            "hung": sum(r.outcome == "hung" for r in rs),
            "double_actions": sum(r.double for r in rs),
            "wrong_state": sum(r.wrong for r in rs),
            "over_limit": sum(r.seconds > r.limit + 0.5 for r in rs),
            "p50_s": round(statistics.median(secs), 3),
            "p95_s": round(secs[min(len(secs) - 1, int(0.95 * len(secs)))], 3),
            "max_s": round(secs[-1], 3),
        })
    return rows


def as_json(results: list[CallResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]

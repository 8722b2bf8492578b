"""A lab BMC: IPMI 2.0 (RMCP+) on a UDP port of 127.0.0.1, driving one QEMU machine over QMP.

Run one process per machine::

    python -m lab.bmc --port 6231 --qmp node1/bmc-qmp.sock --state-file node1/bmc.json \\
        --user admin --password-file node1/bmc.password [--pidfile node1/bmc.pid]

or from Python with :func:`start_bmc` / :func:`stop_bmc`.

Why it looks like this:

* It is a subclass of pyghmi's ``Bmc`` (the IPMI server side), the way virtualbmc maps IPMI onto
  VMs; power and boot commands become QMP commands on the machine (see ``lab.machine`` for the
  power model: off = QEMU paused before/after firmware, on = running).
* pyghmi 1.6.19's server accepts any RMCP+ proposal and always answers "cipher suite 3"; a pyghmi
  client proposing suite 17 (SHA-256) then crashes on the SHA-1 RAKP2 it gets. Proposals other
  than suite 3 are therefore *rejected* (status 0x11, "no cipher suite match"), which makes the
  pyghmi client retry with suite 3; ipmitool picks 3 from "Get Channel Cipher Suites".
* Persistent state (the boot device) lives in a JSON file replaced atomically, and QEMU is a
  separate daemon, so restarting this process loses neither the machine nor its settings. The
  BMC GUID is kept there too, so a restarted BMC is the same BMC to its clients.
* The event loop polls with a short timeout: pyghmi's ``wait_for_rsp`` can miss a request that
  the I/O thread queued just before the loop started waiting (the same lost wake-up as on the
  client side), and a 20 ms poll bounds that delay.
* The password comes from a file that only its owner can read; it is never in argv or logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as ipmisession

from inventory.errors import LabError
from lab.machine import (
    DEFAULT_BOOT_ORDER,
    NEEDS_RESET_RUN_STATES,
    boot_order_for,
    power_state_of,
)
from lab.qmp import QmpClient, QmpDisconnected
from provision.bmc import (
    BOOT_CODE_DEVICES,
    BOOT_DEVICE_CODES,
    BOOT_PARAM_FLAGS,
    CC_NOT_IN_PRESENT_STATE,
    CC_OK,
    ping,
)
from runtime.jsondoc import write_json
from runtime.pidfile import live_pid, terminate, write_pidfile

log = logging.getLogger("lab.bmc")
_T = TypeVar("_T")

RMCP_NO_CIPHER_SUITE_MATCH = 0x11
CC_INVALID_DATA = 0xCC
CC_PARAM_NOT_SUPPORTED = 0x80
CC_UNSPECIFIED = 0xFF
SUITE_3 = (1, 1, 1)  # RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128
POLL_INTERVAL = 0.02
SLOW_COMMAND = 0.05  # seconds; worth a log line, a real BMC answers in milliseconds


# -- pure logic --------------------------------------------------------------------------------

def proposed_algorithms(request: bytes | bytearray) -> tuple[int, int, int] | None:
    """(auth, integrity, confidentiality) from an RMCP+ Open Session Request payload.

    A payload whose length byte is 0 is a wildcard ("any"); None means "all wildcards".
    """
    if len(request) < 32:
        return None
    algorithms = []
    for offset in (8, 16, 24):
        if request[offset + 3] == 0:  # payload length 0: BMC may choose
            algorithms.append(-1)
        else:
            algorithms.append(request[offset + 4] & 0x3F)
    if algorithms == [-1, -1, -1]:
        return None
    return (algorithms[0], algorithms[1], algorithms[2])


def suite_acceptable(proposal: tuple[int, int, int] | None) -> bool:
    """Only cipher suite 3 is implemented by pyghmi's server; wildcards may pick it."""
    if proposal is None:
        return True
    return all(p in (-1, want) for p, want in zip(proposal, SUITE_3, strict=True))


@dataclass
class BmcState:
    """What the BMC must remember across its own restarts."""

    boot_device: str = "default"
    boot_persistent: bool = True
    guid: str = field(default_factory=lambda: str(uuid.uuid4()))


def load_state(path: Path) -> BmcState:
    """Read the state file; a missing file is a fresh BMC, a corrupt one is an error."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BmcState()
    except (OSError, ValueError) as exc:
        raise LabError(f"BMC state file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise LabError(f"BMC state file {path}: not a JSON object")
    state = BmcState()
    device = raw.get("boot_device", state.boot_device)
    if device not in BOOT_DEVICE_CODES:
        raise LabError(f"BMC state file {path}: unknown boot device {device!r}")
    state.boot_device = device
    state.boot_persistent = bool(raw.get("boot_persistent", True))
    state.guid = str(raw.get("guid", state.guid))
    return state


def save_state(path: Path, state: BmcState) -> None:
    """Write atomically (temp file in the same directory, fsync, rename), mode 0600."""
    write_json(path, asdict(state), 0o600, sort_keys=True)


def read_password_file(path: Path) -> str:
    """The first line of a file nobody but its owner may read."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise LabError(f"password file {path} must not be readable by group/others "
                           f"(mode {mode & 0o777:o}, want 600)")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabError(f"password file {path}: {exc.strerror}") from exc
    password = text.splitlines()[0] if text else ""
    if not password:
        raise LabError(f"password file {path} is empty")
    return password


def encode_boot_reply(device: str, persistent: bool) -> list[int]:
    """Reply data for Get System Boot Options, parameter 5 (param version 1)."""
    code = BOOT_DEVICE_CODES[device]
    if code == 0:
        return [1, BOOT_PARAM_FLAGS, 0x00, 0x00, 0, 0, 0]
    flags = 0x80 | (0x40 if persistent else 0)
    return [1, BOOT_PARAM_FLAGS, flags, code << 2, 0, 0, 0]


def decode_boot_request(data: bytes | bytearray | list[int]) -> tuple[str, bool] | int:
    """(device, persistent) from Set System Boot Options param 5 data, or a completion code."""
    if len(data) < 3:
        return 0xC7  # request data length invalid
    flags, device_byte = data[1], data[2]
    if not flags & 0x80:
        return ("default", True)
    code = (device_byte >> 2) & 0x0F
    device = BOOT_CODE_DEVICES.get(code)
    if device is None:
        return CC_INVALID_DATA
    return (device, bool(flags & 0x40))


# -- the IPMI server ---------------------------------------------------------------------------

class _SuiteThreeSession(serversession.ServerSession):
    """pyghmi's server session, refusing open-session proposals it cannot honour."""

    def create_open_session_response(self, request: bytearray) -> bytearray:
        if suite_acceptable(proposed_algorithms(request)):
            return super().create_open_session_response(request)
        self.clientsessionid = request[4:8]
        log.info("rejected RMCP+ proposal %s from %s", proposed_algorithms(request),
                 self.sockaddr)
        return bytearray([request[0], RMCP_NO_CIPHER_SUITE_MATCH, 0, 0]) + self.clientsessionid

    def close_server_session(self) -> None:
        # pyghmi never forgets server sessions; drop ours on "Close Session" so they don't pile up.
        handlers = ipmisession.Session.bmc_handlers.get(self.sockaddr)
        if handlers is not None:
            handlers.pop(self.bmc.port, None)
            if not handlers:
                ipmisession.Session.bmc_handlers.pop(self.sockaddr, None)


class QemuBmc(pyghmi_bmc.Bmc):
    """IPMI chassis and boot-option commands mapped onto one QEMU machine's QMP socket."""

    def __init__(self, *, user: str, password: str, port: int, qmp_socket: Path,
                 state_file: Path, address: str = "127.0.0.1",
                 default_boot_order: str = DEFAULT_BOOT_ORDER, qmp_timeout: float = 3.0) -> None:
        self.state_file = state_file
        self.state = load_state(state_file)
        if not state_file.exists():
            save_state(state_file, self.state)
        super().__init__({user: password}, port=port, address=address,
                         bmcuuid=uuid.UUID(self.state.guid))
        self.qmp_socket = qmp_socket
        self.qmp_timeout = qmp_timeout
        self._qmp_client: QmpClient | None = None
        self.default_boot_order = default_boot_order

    # IPMI session set-up: same as pyghmi's, with our session class.
    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        if (len(data) >= 22 and data[0] == 6 and data[2:4] == b"\xff\x07" and data[4] == 6
                and data[5] == 0x10):
            _SuiteThreeSession(self.authdata, self.kg, sockaddr, self.serversocket,
                               bytearray(data)[16:], self.uuid, bmc=self)
            return
        super().sessionless_data(data, sockaddr)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        started = time.monotonic()
        try:
            super().handle_raw_request(request, session)
        except LabError as exc:  # pyghmi only catches what it raises itself
            log.warning("netfn 0x%02x cmd 0x%02x failed: %s", request["netfn"],
                        request["command"], exc)
            session.send_ipmi_response(code=CC_UNSPECIFIED)
        elapsed = time.monotonic() - started
        if elapsed > SLOW_COMMAND:
            log.warning("netfn 0x%02x cmd 0x%02x took %.0f ms", request["netfn"],
                        request["command"], elapsed * 1000)

    # -- QMP -------------------------------------------------------------------------------

    def _run_state(self, qmp: QmpClient) -> str:
        return str(qmp.execute("query-status")["status"])

    def _apply_boot_order(self, qmp: QmpClient) -> None:
        """Write the boot order into CMOS; a one-time override is used up by this boot."""
        qmp.hmp(f"boot_set {boot_order_for(self.state.boot_device, self.default_boot_order)}")
        if not self.state.boot_persistent and self.state.boot_device != "default":
            self.state.boot_device = "default"
            self.state.boot_persistent = True
            save_state(self.state_file, self.state)

    @contextlib.contextmanager
    def _qmp(self) -> Iterator[QmpClient]:
        """The BMC's own QMP connection, opened on first use and kept open.

        A connection found dead (QEMU restarted) is replaced once, before any command ran on it.
        """
        if self._qmp_client is not None and not self._qmp_client.connected:
            self._qmp_client = None
        if self._qmp_client is None:
            client = QmpClient(self.qmp_socket, timeout=self.qmp_timeout)
            client.connect()
            self._qmp_client = client
        try:
            yield self._qmp_client
        except LabError:
            self._qmp_client.close()  # never reuse a connection in an unknown state
            raise

    def _reconnecting(self, action: Callable[[QmpClient], _T]) -> _T:
        """Run ``action`` on the kept connection; on a stale one, once more on a fresh one."""
        reused = self._qmp_client is not None
        try:
            with self._qmp() as qmp:
                return action(qmp)
        except QmpDisconnected:
            if not reused:
                raise
        with self._qmp() as qmp:
            return action(qmp)

    # -- pyghmi's hooks ----------------------------------------------------------------------

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid

    def get_power_state(self) -> str:
        return self._reconnecting(lambda qmp: power_state_of(self._run_state(qmp)))

    def get_chassis_status(self, session: Any) -> None:
        power = 1 if self.get_power_state() == "on" else 0
        session.send_ipmi_response(data=[power, 0, 0, 0])

    # Each power action starts with query-status, so a stale connection shows up before the
    # action changed anything and ``_reconnecting`` may safely run it again.
    def power_on(self) -> int:
        return self._reconnecting(self._power_on)

    def power_off(self) -> int:
        return self._reconnecting(self._power_off)

    def power_reset(self) -> int:
        return self._reconnecting(self._power_reset)

    def power_cycle(self) -> int:
        return self._reconnecting(self._power_cycle)

    def power_shutdown(self) -> int:
        return self._reconnecting(self._power_shutdown)

    def _power_on(self, qmp: QmpClient) -> int:
        run_state = self._run_state(qmp)
        if power_state_of(run_state) == "on":
            return CC_OK
        # Always reset before running: "on" must start the firmware, never resume a guest.
        self._restart_firmware(qmp, run=True)
        log.info("power on (was %s)", run_state)
        return CC_OK

    def _power_off(self, qmp: QmpClient) -> int:
        if power_state_of(self._run_state(qmp)) == "off":
            return CC_OK
        qmp.execute("stop")
        qmp.execute("system_reset")
        log.info("power off")
        return CC_OK

    def _power_reset(self, qmp: QmpClient) -> int:
        run_state = self._run_state(qmp)
        if power_state_of(run_state) == "off":
            return CC_NOT_IN_PRESENT_STATE
        self._restart_firmware(qmp, run=run_state in NEEDS_RESET_RUN_STATES)
        log.info("reset")
        return CC_OK

    def _power_cycle(self, qmp: QmpClient) -> int:
        if power_state_of(self._run_state(qmp)) == "off":
            return CC_NOT_IN_PRESENT_STATE  # what the spec and real BMCs answer
        qmp.execute("stop")
        self._restart_firmware(qmp, run=True)
        log.info("power cycle")
        return CC_OK

    def _restart_firmware(self, qmp: QmpClient, *, run: bool) -> None:
        """Reset into the firmware with the boot order applied; ``run`` lets it go on."""
        self._apply_boot_order(qmp)
        qmp.execute("system_reset")
        if run:
            qmp.execute("cont")

    def _power_shutdown(self, qmp: QmpClient) -> int:
        if power_state_of(self._run_state(qmp)) == "on":
            qmp.execute("system_powerdown")  # ACPI power button; the OS decides
            log.info("soft off requested")
        return CC_OK

    def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        if (request["data"][0] & 0x7F) != BOOT_PARAM_FLAGS:
            session.send_ipmi_response(code=CC_PARAM_NOT_SUPPORTED)
            return
        session.send_ipmi_response(
            data=encode_boot_reply(self.state.boot_device, self.state.boot_persistent))

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        data = request["data"]
        selector = data[0] & 0x7F if data else -1
        if selector in (0, 3, 4):  # set-in-progress, service partition, boot-info ack
            session.send_ipmi_response()
            return
        if selector != BOOT_PARAM_FLAGS:
            session.send_ipmi_response(code=CC_PARAM_NOT_SUPPORTED)
            return
        decoded = decode_boot_request(data)
        if isinstance(decoded, int):
            session.send_ipmi_response(code=decoded)
            return
        self.state.boot_device, self.state.boot_persistent = decoded
        save_state(self.state_file, self.state)
        log.info("boot device %s (persistent=%s)", *decoded)
        # Also write CMOS now, so a reboot the guest does by itself honours it too.
        order = boot_order_for(decoded[0], self.default_boot_order)
        try:
            self._reconnecting(lambda qmp: qmp.hmp(f"boot_set {order}"))
        except LabError as exc:
            log.warning("boot device stored, not yet applied: %s", exc)
        session.send_ipmi_response()

    def serve(self, should_stop: Callable[[], bool]) -> None:
        """Run the IPMI event loop until ``should_stop()`` is true."""
        while not should_stop():
            ipmisession.Session.wait_for_rsp(timeout=POLL_INTERVAL)


# -- process management ----------------------------------------------------------------------

@dataclass(frozen=True)
class BmcProcessSpec:
    """Everything needed to run one BMC process; paths usually sit in the machine's workdir."""

    name: str
    port: int
    qmp_socket: Path
    state_file: Path
    user: str
    password_file: Path
    pidfile: Path
    logfile: Path
    address: str = "127.0.0.1"
    default_boot_order: str = DEFAULT_BOOT_ORDER

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lab.bmc", "--name", self.name, "--port", str(self.port),
                "--address", self.address, "--qmp", str(self.qmp_socket),
                "--state-file", str(self.state_file), "--user", self.user,
                "--password-file", str(self.password_file), "--pidfile", str(self.pidfile),
                "--default-boot-order", self.default_boot_order]


def bmc_pid(pidfile: Path) -> int | None:
    """The live pid recorded in a BMC pidfile, or None."""
    return live_pid(pidfile)


def start_bmc(spec: BmcProcessSpec, *, timeout: float = 15.0) -> int:
    """Start a BMC daemon (own session, survives its parent) and wait until it answers a ping.

    Returns its pid. If one is already running for this pidfile, that pid is returned.
    """
    existing = bmc_pid(spec.pidfile)
    if existing is not None:
        return existing
    spec.pidfile.unlink(missing_ok=True)
    spec.logfile.parent.mkdir(parents=True, exist_ok=True)
    package_root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(spec.logfile, "ab") as logfile:
        proc = subprocess.Popen(spec.argv(), stdin=subprocess.DEVNULL, stdout=logfile,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                close_fds=True)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"BMC {spec.name} exited with {proc.returncode}: "
                           f"{_tail(spec.logfile)}")
        if bmc_pid(spec.pidfile) == proc.pid and ping(spec.address, spec.port, timeout=0.2):
            return proc.pid
        if time.monotonic() >= deadline:
            proc.kill()
            proc.wait(timeout=5)
            raise LabError(f"BMC {spec.name} did not answer on {spec.address}:{spec.port} "
                           f"within {timeout}s: {_tail(spec.logfile)}")
        time.sleep(0.05)


def stop_bmc(pidfile: Path, *, timeout: float = 5.0) -> None:
    """SIGTERM (then SIGKILL) the BMC recorded in ``pidfile``; no-op if it is not running."""
    pid = bmc_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return
    if not terminate(pid, term_timeout=timeout * 0.7, kill_timeout=timeout * 0.3):
        raise LabError(f"BMC pid {pid} ({pidfile}) survived SIGKILL")
    pidfile.unlink(missing_ok=True)


def _tail(path: Path, size: int = 600) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-size:].strip()
    except OSError:
        return "(no log)"


# -- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bmc", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="bmc")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--qmp", type=Path, required=True, help="the machine's QMP socket")
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--pidfile", type=Path)
    parser.add_argument("--default-boot-order", default=DEFAULT_BOOT_ORDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    try:
        password = read_password_file(args.password_file)
        bmc = QemuBmc(user=args.user, password=password, port=args.port, qmp_socket=args.qmp,
                      state_file=args.state_file, address=args.address,
                      default_boot_order=args.default_boot_order)
    except (LabError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.pidfile:
        write_pidfile(args.pidfile)
    log.info("listening on %s:%d for %s", args.address, args.port, args.qmp)
    try:
        bmc.serve(stopping.is_set)
    finally:
        if args.pidfile and bmc_pid(args.pidfile) in (None, os.getpid()):
            args.pidfile.unlink(missing_ok=True)
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Controller-side BMC drivers: the ``BmcDriver`` interface and its IPMI (RMCP+) implementation.

Why the IPMI driver runs pyghmi in one worker process per BMC
-------------------------------------------------------------
pyghmi 1.6.19's client keeps all sessions of a process in class-level state served by one
shared I/O thread (``ipmi/private/session.py``). Reading it explains the three failures the lab
measured, and each one dictates part of this design:

1. *Lost wake-up.* A caller of the blocking ``raw_command`` registers its wait with the I/O
   thread (``_io_wait``: "wake me on new data from this address") only *after* sending. When
   the BMC answers within a millisecond, the I/O thread has often already read the reply into
   the session's queue; no further data comes, and the caller sleeps until its retry timer
   (0.5-1 s) fires, then finds the reply queued. (Passing a short ``timeout=`` bounds that, but
   then a slow BMC gets retransmissions and may run a chassis command twice; measured first,
   it still left 0.2 s stalls, two per ``set_bootdev``.) So the worker uses pyghmi's callback
   mode instead: ``Session.raw_command(callback=...)`` plus ``Session.wait_for_rsp`` in 10 ms
   slices. ``wait_for_rsp`` looks at the queue of received packets *before* waiting, so a reply
   that raced ahead is processed on the next slice; retransmissions keep pyghmi's own timers.
2. *Cross-session deadlock.* ``send_payload`` takes ``KEEPALIVE_SESSIONS`` then (in
   ``_xmit_packet``) ``WAITING_SESSIONS``; a retransmission (``awaitresponse`` or
   ``wait_for_rsp`` calling ``_timedout`` -> ``send_payload``) takes them in the opposite order.
   Two threads with two sessions, one retransmitting, deadlock for good. A global lock around
   pyghmi would avoid it but serialise all BMCs (and one dead BMC would stall all others). So
   each BMC gets its own worker process: its own pyghmi globals, one session, one calling
   thread -- the lock-order inversion can no longer involve two threads.
3. *Sticky broken sessions.* After a BMC restart the old session id is unknown to it, packets
   are dropped, and pyghmi only reports ``Session no longer connected`` after ~26 s and then
   keeps returning the cached broken session. Here each command has an attempt timeout
   (default 1 s; a live BMC answers in milliseconds); on expiry the worker is killed -- which
   throws away all of pyghmi's cached state -- a sessionless ping decides "BMC down" (fail at
   once) versus "session stale" or packets lost (new worker, log in, retry; an idempotent
   command and a login are tried again while the call's deadline allows), all within it.

4. *Repeated requests act twice.* pyghmi retransmits a request whose reply is late with the
   same sequence number (its ``_timedout`` treats every command as safe to repeat), and the
   recovery in 3. sends it again on a new session; a BMC that does not drop duplicates (the
   lab BMC, many real ones) then runs it twice. For a power on/off/status or a boot-device set
   that is harmless (idempotent). A chassis "cycle" is not, so ``power_cycle`` never sends it:
   it is off -> wait until off -> on -> wait until on (:func:`safe_power_cycle`). "reset" and
   "soft" (the ACPI button) have no idempotent form: they go out once (``retry=False`` to
   pyghmi, no second attempt), and a lost reply is the error "sent, reply lost: the node may
   have reset". Measured through a lossy relay (``lab/udprelay.py``, ``bench/bmc_loss.py``).

Measured in the lab (8 threads, 8 lab BMCs, 8 TCG machines on 2 cores, power/boot commands in a
loop): plain in-process pyghmi ``Command`` objects, one per thread, had a worst call of 978 ms and
23 of 576 calls over 0.4 s; this driver's worst call was 125-200 ms over 672 calls (median
8-13 ms), the tail being QEMU pausing its TCG vCPUs for stop/reset, not the client.

Other pyghmi facts honoured: credentials are passed as ``bytes`` (``str`` makes a second
``Command()`` to the same BMC hang); ``persist`` on boot devices is ignored by many BMCs, so
``set_bootdev`` reads the device back. The password crosses to the worker on its stdin, never
argv, and no error message carries it.

The sessionless ping is a raw RMCP "Get Channel Authentication Capabilities" (IPMI 1.5 framing,
no session): every IPMI 2.0 BMC must answer it, it needs no credentials, and it tells up from down
in well under a millisecond on loopback, where a pyghmi login to a dead BMC takes ~5 s to fail.
"""

from __future__ import annotations

import base64
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inventory.errors import BmcError

PowerState = Literal["on", "off"]
BootDevice = Literal["network", "disk", "default"]

# -- IPMI constants (IPMI 2.0 spec, chapters 13, 22 and 28) ----------------------------------
NETFN_CHASSIS = 0x00
NETFN_APP = 0x06
CMD_GET_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02
CMD_SET_BOOT_OPTIONS = 0x08
CMD_GET_BOOT_OPTIONS = 0x09
CMD_GET_CHANNEL_AUTH_CAP = 0x38
BOOT_PARAM_FLAGS = 5
CHASSIS_CONTROL = {"off": 0, "on": 1, "cycle": 2, "reset": 3, "soft": 5}
# Boot flags data2 bits 5:2.
BOOT_DEVICE_CODES: dict[str, int] = {"default": 0, "network": 1, "disk": 2}
BOOT_CODE_DEVICES: dict[int, BootDevice] = {0: "default", 1: "network", 2: "disk", 3: "disk"}
CC_OK = 0x00
CC_NOT_IN_PRESENT_STATE = 0xD5
COMPLETION_CODES = {
    0xC0: "node busy", 0xC1: "invalid command", 0xC3: "timeout", 0xC7: "request length invalid",
    0xCC: "invalid data field in request", 0xD4: "insufficient privilege",
    0xD5: "command not supported in present state", 0xFF: "unspecified error",
}
BMC_SLAVE_ADDR = 0x20
SOFTWARE_ID = 0x81
RMCP_HEADER = b"\x06\x00\xff\x07"

POLL_SLICE = 0.01  # slice of pyghmi's event loop in the worker; bounds a lost wake-up
PING_RESEND = 0.15  # seconds before a sessionless ping is sent again (loss on the way)
PING_TIMEOUT = 1.0  # seconds a "BMC down?" ping may take (about 6 sends)
MIN_LOGIN_LEFT = 0.5  # seconds a new login needs at least to be worth starting
MIN_ATTEMPT_LEFT = 0.2  # seconds a new attempt needs at least to be worth starting
#: Chassis controls that are not safe to send twice, and what a lost reply may mean. A
#: repeated "cycle" or "reset" that reached the BMC twice acts twice (the lab BMC, like many
#: real ones, does not drop duplicates), so these go out once and a lost reply is an error.
AT_MOST_ONCE = {"cycle": "the node may have been power-cycled",
                "reset": "the node may have reset",
                "soft": "the node may be shutting down"}


# -- pure codecs ------------------------------------------------------------------------------

def ipmi_checksum(data: bytes) -> int:
    """Two's-complement checksum of IPMI message fields."""
    return (-sum(data)) & 0xFF


def build_auth_cap_request(seq: int) -> bytes:
    """A sessionless RMCP/IPMI 1.5 "Get Channel Authentication Capabilities" request.

    Channel 0x8E = "this channel" with the IPMI 2.0 extended-data bit; privilege 4 = admin.
    """
    header = bytes([BMC_SLAVE_ADDR, NETFN_APP << 2])
    body = bytes([SOFTWARE_ID, (seq & 0x3F) << 2, CMD_GET_CHANNEL_AUTH_CAP, 0x8E, 0x04])
    message = header + bytes([ipmi_checksum(header)]) + body + bytes([ipmi_checksum(body)])
    # auth type none, session sequence 0, session id 0, message length
    session = b"\x00" + b"\x00" * 4 + b"\x00" * 4 + bytes([len(message)])
    return RMCP_HEADER + session + message


def parse_auth_cap_response(packet: bytes, seq: int) -> int | None:
    """The channel number from a matching auth-capabilities reply, or None if it is not one."""
    if len(packet) < 14 + 8 or not packet.startswith(RMCP_HEADER) or packet[4] != 0:
        return None
    length = packet[13]
    message = packet[14:14 + length]
    if len(message) < 8 or len(message) != length:
        return None
    if message[1] >> 2 != NETFN_APP + 1 or message[5] != CMD_GET_CHANNEL_AUTH_CAP:
        return None
    if message[4] >> 2 != (seq & 0x3F) or ipmi_checksum(message[:2]) != message[2]:
        return None
    if message[6] != CC_OK:
        return None
    return message[7] & 0x0F


def decode_power_state(data: bytes | list[int]) -> PowerState:
    """Chassis status byte 1 bit 0 is "system power is on"."""
    if not data:
        raise ValueError("empty chassis status")
    return "on" if data[0] & 0x01 else "off"


def encode_boot_flags(device: str, persistent: bool) -> list[int]:
    """Data for "Set System Boot Options", parameter 5 (boot flags)."""
    try:
        code = BOOT_DEVICE_CODES[device]
    except KeyError:
        raise ValueError(f"unsupported boot device {device!r}") from None
    if code == 0:
        return [BOOT_PARAM_FLAGS, 0x00, 0x00, 0x00, 0x00, 0x00]
    flags = 0x80 | (0x40 if persistent else 0x00)
    return [BOOT_PARAM_FLAGS, flags, code << 2, 0x00, 0x00, 0x00]


@dataclass(frozen=True)
class BootSetting:
    device: BootDevice | int  # an int is a device code we do not name (e.g. 5 = optical)
    persistent: bool


def decode_boot_flags(data: bytes | list[int]) -> BootSetting:
    """Decode the reply data of "Get System Boot Options", parameter 5."""
    if len(data) < 4 or (data[1] & 0x7F) != BOOT_PARAM_FLAGS:
        raise ValueError(f"not a boot-flags parameter: {list(data)!r}")
    flags = data[2]
    if not flags & 0x80:  # "boot flags valid" clear: no override
        return BootSetting("default", True)
    code = (data[3] >> 2) & 0x0F
    return BootSetting(BOOT_CODE_DEVICES.get(code, code), bool(flags & 0x40))


def login_error_transient(text: str) -> bool:
    """A pyghmi login error worth another login (lost packets), not refused credentials."""
    lowered = text.lower()
    return lowered in ("", "none") or any(
        word in lowered for word in ("timeout", "timed out", "no longer connected"))


def completion_text(code: int) -> str:
    return f"0x{code:02x} ({COMPLETION_CODES.get(code, 'completion code')})"


def scrub(text: str, secret: bytes) -> str:
    """Remove a secret from a message that came from a library we do not control."""
    if secret:
        for form in {secret.decode("utf-8", "replace"), repr(secret)}:
            if form:
                text = text.replace(form, "***")
    return text


# -- sessionless ping -------------------------------------------------------------------------

def ping(address: str, port: int = 623, *, timeout: float = 1.0) -> float | None:
    """Round-trip seconds of a sessionless auth-capabilities request, or None if no answer."""
    seq = int.from_bytes(os.urandom(1), "big") & 0x3F
    request = build_auth_cap_request(seq)
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return None
    family, _, _, _, sockaddr = infos[0]
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(sockaddr)  # also filters datagrams from anyone else
            start = time.monotonic()
            sock.send(request)
            resend = start + PING_RESEND
            while True:
                now = time.monotonic()
                remaining = deadline - now
                if remaining <= 0:
                    return None
                if now >= resend:  # sessionless and read-only: safe to repeat on loss
                    sock.send(request)
                    resend = now + PING_RESEND
                sock.settimeout(max(0.001, min(remaining, resend - now)))
                try:
                    packet = sock.recv(512)
                except TimeoutError:
                    continue
                if parse_auth_cap_response(packet, seq) is not None:
                    return time.monotonic() - start
        except ConnectionRefusedError:
            return None
        except OSError:
            return None


# -- the interface ----------------------------------------------------------------------------

class BmcDriver(ABC):
    """What provisioning needs from a BMC; IPMI today, Redfish can implement the same.

    Every method finishes within its ``timeout`` (seconds; None = the driver's default) or raises
    ``BmcError`` naming the host and the BMC address, never the password.
    """

    host: str
    address: str

    @abstractmethod
    def ping(self, timeout: float = 1.0) -> bool:
        """True if the BMC answers at all (no session, no credentials)."""

    @abstractmethod
    def power_status(self, timeout: float | None = None) -> PowerState: ...

    @abstractmethod
    def power_on(self, timeout: float | None = None) -> None: ...

    @abstractmethod
    def power_off(self, timeout: float | None = None) -> None:
        """Hard power off (like holding the button)."""

    @abstractmethod
    def power_cycle(self, timeout: float | None = None) -> None:
        """Make the machine boot afresh: off then on if it is on, just on if it is off.

        Must act once even when replies are lost: build it from idempotent steps
        (:func:`safe_power_cycle`), never from a command that is not safe to resend.
        """

    @abstractmethod
    def soft_off(self, timeout: float | None = None) -> None:
        """Ask the OS to shut down (ACPI power button); returns before it has."""

    @abstractmethod
    def get_bootdev(self, timeout: float | None = None) -> BootSetting: ...

    @abstractmethod
    def set_bootdev(self, device: BootDevice, persistent: bool = True,
                    timeout: float | None = None) -> BootSetting:
        """Set the device for the next boot and return what the BMC reports afterwards."""

    def __enter__(self) -> BmcDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook, drivers without resources skip it
        """Release sessions and helpers."""

    def wait_for_power(self, state: PowerState, *, timeout: float, interval: float = 0.2) -> None:
        """Poll until the power state is ``state`` (a backstop; e.g. after ``soft_off``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BmcError(f"{self.host} (BMC {self.address}): power did not become "
                               f"{state} within {timeout}s")
            if self.power_status(timeout=min(remaining, 5.0)) == state:
                return
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# -- power cycle from idempotent steps --------------------------------------------------------

#: Seconds after a successful "off"/"on" before it is sent again if the state has not changed
#: (a BMC may take a moment; the command is a no-op in the state it asks for, so resending
#: is safe, only noisy).
RESEND_AFTER = 3.0


def safe_power_cycle(bmc: BmcDriver, timeout: float, *, interval: float = 0.2) -> str:
    """Power-cycle ``bmc``'s node from idempotent steps, all within ``timeout`` seconds.

    off -> wait until off -> on -> wait until on; a node that is off is only powered on. Each
    step is safe to retry: a lost reply is answered by reading the power state and, if it is
    not yet what we want, sending the same idempotent command again. Returns what was done
    ("cycled" or "powered on (it was off)"); raises ``BmcError`` naming the step that did not
    finish in time. Works on any ``BmcDriver``.
    """
    deadline = time.monotonic() + timeout
    state = _read_power(bmc, deadline, "read the power state")
    if state == "on":
        _drive_power(bmc, "off", deadline)
    _drive_power(bmc, "on", deadline)
    return "cycled" if state == "on" else "powered on (it was off)"


def _cycle_error(bmc: BmcDriver, step: str, last: str) -> BmcError:
    detail = f" (last error: {last})" if last else ""
    return BmcError(f"{bmc.host} (BMC {bmc.address}): power cycle: could not {step} within "
                    f"the time limit{detail}")


def _read_power(bmc: BmcDriver, deadline: float, step: str, *, interval: float = 0.2
                ) -> PowerState:
    last = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _cycle_error(bmc, step, last)
        try:
            return bmc.power_status(timeout=remaining)
        except BmcError as exc:
            last = str(exc)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _drive_power(bmc: BmcDriver, want: PowerState, deadline: float, *,
                 interval: float = 0.2) -> None:
    """Send power ``want`` (again only after a failure or RESEND_AFTER) until the BMC says so."""
    step = f"power {want}"
    send = bmc.power_off if want == "off" else bmc.power_on
    last = ""
    sent_at: float | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _cycle_error(bmc, step, last)
        if sent_at is None or time.monotonic() - sent_at >= RESEND_AFTER:
            try:
                send(timeout=remaining)
                sent_at = time.monotonic()
            except BmcError as exc:
                last = str(exc)
                sent_at = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _cycle_error(bmc, step, last)
        try:
            if bmc.power_status(timeout=remaining) == want:
                return
            last = f"the BMC still says {'on' if want == 'off' else 'off'}"
        except BmcError as exc:
            last = str(exc)
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# -- the IPMI driver --------------------------------------------------------------------------

_LOCKS: dict[tuple[str, int], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _bmc_lock(address: str, port: int) -> threading.Lock:
    """One lock per BMC address, shared by every driver object that talks to it."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((address, port), threading.Lock())


# When each BMC last finished a command (monotonic), shared like the locks: small BMCs
# drop or mangle requests that arrive back to back, so callers can ask for a gap.
_LAST_COMMAND: dict[tuple[str, int], float] = {}


def _jitter(remaining: float) -> float:
    """A short random pause before a retry, so many nodes' retries do not line up."""
    return max(0.0, min(remaining, random.uniform(0.05, 0.25)))  # noqa: S311 - not crypto


class _WorkerLost(Exception):
    """The worker did not answer in time, died, or its session broke: start a new one."""


class _Worker:
    """Parent side of one pyghmi worker process (a JSON line per request and per reply)."""

    def __init__(self, address: str, port: int, user: bytes, password: bytes) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH"))
                                            if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from provision.bmc import worker_main; worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, close_fds=True)
        self._buffer = b""
        self._next_id = 0
        hello = {"address": address, "port": port,
                 "user": base64.b64encode(user).decode(),
                 "password": base64.b64encode(password).decode()}
        self._send(hello)

    def _send(self, message: dict[str, Any]) -> None:
        if self.proc.stdin is None:
            raise _WorkerLost("worker has no stdin")
        try:
            self.proc.stdin.write(json.dumps(message).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise _WorkerLost(f"worker pipe closed: {exc}") from exc

    def receive(self, timeout: float) -> dict[str, Any]:
        if self.proc.stdout is None:
            raise _WorkerLost("worker has no stdout")
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _WorkerLost(f"no answer within {timeout:.2f}s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerLost("worker exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise _WorkerLost("malformed worker reply")
        return reply

    def raw(self, netfn: int, command: int, data: list[int], timeout: float,
            retry: bool = True) -> dict[str, Any]:
        """One request; ``retry=False`` forbids pyghmi's retransmission (sent exactly once)."""
        self._next_id += 1
        self._send({"id": self._next_id, "netfn": netfn, "command": command, "data": data,
                    "timeout": timeout, "retry": retry})
        while True:
            reply = self.receive(timeout)
            if reply.get("id") == self._next_id:
                return reply

    def close(self, timeout: float = 2.0) -> None:
        """Ask for a logout by closing stdin; kill if the worker does not exit in time."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # a process that survives SIGKILL for 5 s is the kernel's problem now
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class IpmiBmc(BmcDriver):
    """IPMI 2.0 (RMCP+) driver over pyghmi, one worker process per BMC; thread-safe.

    Example::

        with IpmiBmc("node1", "127.0.0.1", port=6231, user="admin", password=b"secret") as bmc:
            bmc.set_bootdev("network")
            bmc.power_on()
    """

    def __init__(self, host: str, address: str, *, port: int = 623, user: str | bytes,
                 password: str | bytes, timeout: float = 5.0, attempt_timeout: float = 1.0,
                 login_timeout: float = 4.0, min_interval: float = 0.0) -> None:
        self.host = host
        self.address = address
        self.port = port
        self._user = user.encode("utf-8") if isinstance(user, str) else bytes(user)
        self._password = (password.encode("utf-8") if isinstance(password, str)
                          else bytes(password))
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.login_timeout = login_timeout
        self.min_interval = min_interval
        self._lock = _bmc_lock(address, port)
        self._worker: _Worker | None = None

    def __repr__(self) -> str:  # never show credentials
        return f"IpmiBmc(host={self.host!r}, address={self.address!r}, port={self.port})"

    def __enter__(self) -> IpmiBmc:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _error(self, what: str, detail: str = "") -> BmcError:
        text = f"{self.host} (BMC {self.address}:{self.port}): {what}"
        if detail:
            text += f": {scrub(detail, self._password)}"
        return BmcError(text)

    def ping(self, timeout: float = 1.0) -> bool:
        return ping(self.address, self.port, timeout=timeout) is not None

    def connect(self, timeout: float | None = None) -> None:
        """Start the worker and log in now instead of on the first command."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._locked(deadline, "connect"):
            self._ensure_worker(deadline)

    def close(self) -> None:
        with self._lock:
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def _locked(self, deadline: float, what: str) -> _Held:
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._error(what, "another call to this BMC did not finish in time")
        return _Held(self._lock)

    def _drop_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def _ensure_worker(self, deadline: float) -> _Worker:
        if self._worker is not None and self._worker.proc.poll() is None:
            return self._worker
        self._drop_worker()
        # A login sends no chassis command, so one lost on the way (timeouts) is tried again
        # on a fresh worker while the call has time; refused credentials are not.
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or ping(self.address, self.port,
                                      timeout=min(PING_TIMEOUT, remaining)) is None:
                raise self._error("BMC does not answer a sessionless ping")
            worker = _Worker(self.address, self.port, self._user, self._password)
            try:
                # pyghmi's login retransmits on its own: give it all the call has left (a dead
                # BMC was already ruled out by the ping; a restart loses pyghmi's progress).
                wait = max(0.0, deadline - time.monotonic())
                reply = worker.receive(wait)
            except _WorkerLost as exc:
                worker.kill()
                if deadline - time.monotonic() > MIN_LOGIN_LEFT:
                    continue
                raise self._error("login", str(exc)) from None
            if "error" in reply:
                worker.kill()
                text = str(reply["error"])
                if login_error_transient(text) and deadline - time.monotonic() > MIN_LOGIN_LEFT:
                    continue
                raise self._error("login failed", text)
            self._worker = worker
            return worker

    def _raw(self, what: str, netfn: int, command: int, data: list[int],
             timeout: float | None, *, lost: str | None = None) -> tuple[int, list[int]]:
        """One IPMI request with the recovery described in the module docstring.

        ``lost`` marks a request that is not safe to repeat (see ``AT_MOST_ONCE``): it is sent
        once, without pyghmi's retransmissions and without our second attempt, and a lost
        reply raises "sent, reply lost: <lost>".
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._locked(deadline, what):
            try:
                return self._attempts(what, netfn, command, data, deadline, lost)
            finally:
                _LAST_COMMAND[(self.address, self.port)] = time.monotonic()

    def _attempts(self, what: str, netfn: int, command: int, data: list[int],
                  deadline: float, lost: str | None = None) -> tuple[int, list[int]]:
        attempt = 0
        while True:
            attempt += 1
            gap = _LAST_COMMAND.get((self.address, self.port), 0.0) + self.min_interval \
                - time.monotonic()
            if gap > 0:
                if time.monotonic() + gap >= deadline:
                    raise self._error(what, f"min_interval {self.min_interval:g}s leaves no "
                                            "time before the deadline")
                time.sleep(gap)
            worker = self._ensure_worker(deadline)
            remaining = deadline - time.monotonic()
            try:
                reply = worker.raw(netfn, command, data,
                                   timeout=min(self.attempt_timeout, max(0.0, remaining)),
                                   retry=lost is None)
                if "error" in reply:
                    raise _WorkerLost(str(reply["error"]))
                return int(reply["code"]), [int(b) for b in reply["data"]]
            except _WorkerLost as exc:
                self._drop_worker()
                if lost is not None:  # it may have reached the BMC: never send it again
                    raise self._error(what, f"sent, reply lost ({exc}): {lost}; not resent, "
                                            "it is not safe to repeat") from None
                # Idempotent: attempts go on while the call has time (loss, a stale session).
                if deadline - time.monotonic() <= MIN_ATTEMPT_LEFT:
                    raise self._error(what, f"{exc} (after {attempt} attempts)") from None
                # Down, or only our session is stale (e.g. the BMC restarted)?
                if ping(self.address, self.port,
                        timeout=min(PING_TIMEOUT, max(0.0, deadline - time.monotonic()))) is None:
                    raise self._error(what, f"{exc}; BMC does not answer a ping") from None
                time.sleep(_jitter(deadline - time.monotonic() - 0.1))

    def _checked(self, what: str, netfn: int, command: int, data: list[int],
                 timeout: float | None) -> list[int]:
        code, payload = self._raw(what, netfn, command, data, timeout)
        if code != CC_OK:
            raise self._error(what, f"completion code {completion_text(code)}")
        return payload

    # -- the interface ------------------------------------------------------------------------

    def power_status(self, timeout: float | None = None) -> PowerState:
        data = self._checked("power status", NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, [], timeout)
        try:
            return decode_power_state(data)
        except ValueError as exc:
            raise self._error("power status", str(exc)) from None

    def _chassis(self, action: str, timeout: float | None) -> int:
        code, _ = self._raw(f"power {action}", NETFN_CHASSIS, CMD_CHASSIS_CONTROL,
                            [CHASSIS_CONTROL[action]], timeout, lost=AT_MOST_ONCE.get(action))
        return code

    def _chassis_ok(self, action: str, what: str, timeout: float | None) -> None:
        code = self._chassis(action, timeout)
        if code != CC_OK:
            raise self._error(what, f"completion code {completion_text(code)}")

    def power_on(self, timeout: float | None = None) -> None:
        self._chassis_ok("on", "power on", timeout)

    def power_off(self, timeout: float | None = None) -> None:
        self._chassis_ok("off", "power off", timeout)

    def power_cycle(self, timeout: float | None = None) -> None:
        """Off, wait until off, on, wait until on: every step idempotent, so retries are safe.

        The chassis "cycle" control is never sent: its request or pyghmi's retransmission of
        it can reach the BMC twice when a reply is lost, and a BMC that does not drop
        duplicates (the lab's, many real ones) cycles the node twice. Off and on are no-ops
        in the state they ask for, and the two waits keep a late duplicate from overtaking
        the next step. All of it within ``timeout``.
        """
        safe_power_cycle(self, timeout or self.timeout)

    def power_reset(self, timeout: float | None = None) -> None:
        """Hard reset without a power transition (fails while off)."""
        self._chassis_ok("reset", "power reset", timeout)

    def soft_off(self, timeout: float | None = None) -> None:
        self._chassis_ok("soft", "soft off", timeout)

    def get_bootdev(self, timeout: float | None = None) -> BootSetting:
        data = self._checked("get boot device", NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS,
                             [BOOT_PARAM_FLAGS, 0, 0], timeout)
        try:
            return decode_boot_flags(data)
        except ValueError as exc:
            raise self._error("get boot device", str(exc)) from None

    def set_bootdev(self, device: BootDevice, persistent: bool = True,
                    timeout: float | None = None) -> BootSetting:
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            data = encode_boot_flags(device, persistent)
        except ValueError as exc:
            raise self._error("set boot device", str(exc)) from None
        self._checked("set boot device", NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS, data, timeout)
        # Many BMCs accept and ignore (or only half apply) boot flags: trust what we read back.
        setting = self.get_bootdev(timeout=max(0.01, deadline - time.monotonic()))
        if setting.device != device:
            raise self._error("set boot device",
                              f"asked for {device}, BMC reports {setting.device}")
        return setting


class _Held:
    """Context manager releasing an already acquired lock."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


# -- the worker process -----------------------------------------------------------------------

def worker_main() -> None:
    """Entry point of a worker process: one pyghmi session, requests on stdin, replies on stdout.

    pyghmi prints to stdout in places, so the reply channel is a private copy of the original
    stdout and file descriptor 1 is pointed at stderr. Closing stdin means "log out and exit".
    Between requests the loop keeps turning pyghmi's event loop so session keepalives go out.
    """
    from pyghmi.exceptions import IpmiException
    from pyghmi.ipmi import command as ipmi_command
    from pyghmi.ipmi.private import session as ipmi_session

    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    requests = _LineReader(0)

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message).encode() + b"\n")

    hello = json.loads(requests.readline(timeout=30.0) or b"{}")
    password = base64.b64decode(hello.get("password", ""))
    try:
        cmd = ipmi_command.Command(bmc=hello["address"], port=int(hello["port"]),
                                   userid=base64.b64decode(hello["user"]), password=password)
    except (IpmiException, OSError, KeyError) as exc:
        reply({"error": scrub(str(exc), password)})
        return
    session = cmd.ipmi_session
    reply({"ok": True})
    while True:
        line = requests.readline(timeout=1.0)
        if line is None:  # idle: let pyghmi send keepalives that fell due
            ipmi_session.Session.wait_for_rsp(timeout=0)
            continue
        if not line:
            break
        request = json.loads(line)
        try:
            response = _session_command(session, ipmi_session.Session, request,
                                        time.monotonic() + float(request.get("timeout", 5.0)))
        except (IpmiException, OSError) as exc:
            reply({"id": request["id"], "error": scrub(str(exc), password)})
            continue
        if response is None:
            reply({"id": request["id"], "error": "no response"})
        elif "command" in response and isinstance(response.get("code"), int):
            reply({"id": request["id"], "code": response["code"],
                   "data": list(response.get("data", b""))})
        else:
            reply({"id": request["id"],
                   "error": scrub(str(response.get("error", "no response")), password)})
    try:
        session.logout()
    except (IpmiException, OSError):
        pass  # the BMC forgets the session on its own


def _session_command(session: Any, session_class: Any, request: dict[str, Any],
                     deadline: float) -> dict[str, Any] | None:
    """One request in pyghmi's callback mode, turning its event loop in short slices.

    pyghmi's blocking ``raw_command`` waits for the reply with the lost wake-up described in the
    module docstring. In callback mode nothing blocks inside pyghmi: ``wait_for_rsp`` first
    looks at the queue of packets already received, so a reply that raced ahead of the wait is
    found at the next slice (POLL_SLICE), not at the 0.5-1 s retry timer. pyghmi documents the
    price of callback mode: the caller ends the command (``incommand``, ``evq``), as its own
    keepalive wrapper does.
    """
    result: list[dict[str, Any]] = []
    # retry=False: pyghmi keeps no copy to retransmit (``lastpayload``), so the request goes
    # out once and a lost reply just times out here.
    session.raw_command(netfn=request["netfn"], command=request["command"],
                        data=tuple(request["data"]), callback=result.append,
                        retry=bool(request.get("retry", True)))
    try:
        while not result:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            session_class.wait_for_rsp(timeout=min(POLL_SLICE, remaining))
    finally:
        session.lastresponse = None
        session.incommand = False
        while session.evq:
            session.evq.popleft().set()
    return result[0]


class _LineReader:
    """Lines from a file descriptor with a timeout (None = nothing yet, b"" = end of file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.eof = not chunk
                self.buffer += chunk
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return line + b"\n"
        line, self.buffer = self.buffer, b""
        return line

"""A minimal QMP (QEMU Machine Protocol) client over a unix socket.

Why our own and so small: the lab needs a handful of commands (query-status, stop, cont,
system_reset, system_powerdown, human-monitor-command) from two places (the lab and each BMC
process), and every one of them must give up after a deadline instead of hanging on a wedged
QEMU. QEMU serves one client per QMP monitor at a time, so each machine has two monitors: the
BMC keeps a connection to its own open (one round trip per command, which matters when TCG
guests load the CPU), the lab connects per call to the other.

Example::

    with QmpClient("/run/lab/node1/qmp.sock", timeout=2.0) as qmp:
        state = qmp.execute("query-status")["status"]
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from inventory.errors import LabError

# Linux limits sun_path to 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


class QmpDisconnected(LabError):
    """The QMP connection is gone (QEMU exited or restarted); the command did not run on it."""


class QmpClient:
    """One QMP connection; every read and write is bounded by ``timeout`` seconds in total."""

    def __init__(self, path: str | Path, *, timeout: float = 3.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._deadline = 0.0
        self._next_id = 0

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and negotiate capabilities; raises LabError when QEMU does not answer in time."""
        if len(self.path.encode()) > MAX_UNIX_PATH:
            raise LabError(f"QMP socket path too long for a unix socket: {self.path}")
        self._deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as exc:
            self.close()
            raise LabError(f"QMP {self.path}: cannot connect: {exc}") from exc
        greeting = self._read_message()
        if "QMP" not in greeting:
            self.close()
            raise LabError(f"QMP {self.path}: unexpected greeting {greeting!r}")
        self.execute("qmp_capabilities")

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value; a QMP error raises LabError."""
        if self._sock is None:
            raise LabError(f"QMP {self.path}: not connected")
        self._deadline = time.monotonic() + self.timeout
        self._next_id += 1
        request: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise QmpDisconnected(f"QMP {self.path}: {command}: send failed: {exc}") from exc
        while True:
            message = self._read_message()
            if "event" in message:
                continue  # asynchronous events interleave with replies; they are not ours
            if message.get("id") != self._next_id:
                continue
            if "error" in message:
                error = message["error"]
                raise LabError(f"QMP {self.path}: {command}: {error.get('desc', error)}")
            return message.get("return")

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (e.g. ``boot_set n``); its output text is returned."""
        output = self.execute("human-monitor-command", {"command-line": command_line})
        return str(output or "")

    def _read_message(self) -> dict[str, Any]:
        if self._sock is None:
            raise LabError(f"QMP {self.path}: not connected")
        while b"\n" not in self._buffer:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise LabError(f"QMP {self.path}: no answer within {self.timeout:.1f}s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise LabError(f"QMP {self.path}: no answer within {self.timeout:.1f}s") from exc
            except OSError as exc:
                raise QmpDisconnected(f"QMP {self.path}: receive failed: {exc}") from exc
            if not chunk:
                raise QmpDisconnected(f"QMP {self.path}: connection closed by QEMU")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise LabError(f"QMP {self.path}: malformed message {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise LabError(f"QMP {self.path}: malformed message {line[:200]!r}")
        return message


def qmp_execute(path: str | Path, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = 3.0) -> Any:
    """Connect, run one command, disconnect. Example: ``qmp_execute(sock, "cont")``."""
    with QmpClient(path, timeout=timeout) as qmp:
        return qmp.execute(command, arguments)

"""SSH transport: one verified connection per host, commands from argument lists.

Host keys are verified against the keys pinned for the host (the state store, the inventory's
``ssh.host_key`` or the operator's known_hosts); an unknown or changed key is refused, never
added. paramiko's exceptions are converted here into :class:`TransportError` naming the host
and the command, so nothing above this module sees a paramiko type.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from inventory.errors import InputError, TransportError
from inventory.model import SSH_KEEPALIVE_INTERVAL, SSH_KEEPALIVE_TIMEOUT

DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds a connected host may take to open a session channel: sshd forks and sets up the
#: session first, which took over 10 s on an emulated hypervisor running an emulated guest.
CHANNEL_OPEN_TIMEOUT = 30.0
DEFAULT_COMMAND_TIMEOUT = 600.0
#: Seconds a command's output loop sleeps at most when nothing arrives: how late a command's
#: own timeout can be noticed. Output and the exit status wake it at once.
COLLECT_WAIT = 0.5
#: OpenSSH's ServerAliveInterval/CountMax, done here: every KEEPALIVE_INTERVAL seconds a
#: connection asks the host's sshd for an answer (a global request with want-reply, which
#: sshd answers even while the command runs); no answer within KEEPALIVE_TIMEOUT and the
#: connection is declared lost and closed. Without it a host frozen (SIGSTOP) or cut off
#: (link down) in the middle of a command held the run until that command's own timeout
#: (600 s for a command step, 3600 s for an apply): TCP keeps a frozen host's connection
#: open (its kernel still acknowledges) and retransmits to a cut one for ~15 minutes.
#: A lost host is so reported ``unreachable`` 20-25 s after it stopped answering.
KEEPALIVE_INTERVAL = float(SSH_KEEPALIVE_INTERVAL)
KEEPALIVE_TIMEOUT = float(SSH_KEEPALIVE_TIMEOUT)

OutputSink = Callable[[str, str], None]  # (stream name "stdout"|"stderr", text chunk)


def fingerprint(key_type: str, key_b64: str) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def quote_command(argv: Sequence[str]) -> str:
    """Join an argument list into one shell-safe command line."""
    if isinstance(argv, str):
        raise TypeError("commands are argument lists; use Shell(...) for raw shell on purpose")
    return " ".join(shlex.quote(str(a)) for a in argv)


class _Wake:
    """An event for paramiko's stream buffers: they set() it when data or the end arrives.

    clear() is the collector's alone (a buffer that empties must not clear it while the
    other stream still has data), so the buffers' clear() does nothing.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def clear(self) -> None:
        pass


@dataclass(frozen=True)
class Shell:
    """Raw shell text, chosen explicitly and visibly (never built from host or alert data)."""

    script: str


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 10) -> str:
        text = (self.stderr or self.stdout).rstrip().splitlines()
        return "\n".join(text[-lines:])


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to reach one host; built from the inventory and the state store."""

    host: str
    address: str
    pinned_keys: tuple[str, ...]          # 'TYPE BASE64' lines
    user: str = "root"
    port: int = 22
    private_key: Path | None = None
    proxy_command: str | None = None
    keepalive_interval: float = KEEPALIVE_INTERVAL   # the inventory's ssh.keepalive_*
    keepalive_timeout: float = KEEPALIVE_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # the inventory's ssh.connect_timeout


_PROXY_TOKEN = re.compile(r"%(.?)")


def proxy_argv(target: SshTarget) -> list[str] | None:
    """The process that carries the SSH connection of ``target`` (its ``ssh.proxy_command``),
    as an argument list, or None without a proxy. The one meaning of ``proxy_command`` for
    both SSH clients: paramiko (this module) and OpenSSH (``verify``'s ssh_config).

    ``proxy_command`` is a shell command line, run by ``/bin/sh -c`` (as OpenSSH runs its
    ProxyCommand), after these tokens are replaced (each value shell-quoted): ``%h`` the
    host's address, ``%p`` its SSH port, ``%r`` the SSH user, ``%n`` the inventory name, ``%%``
    a literal ``%``. Any other ``%`` sequence is an error naming the host.

    >>> proxy_argv(SshTarget("h1", "10.0.0.5", (), port=2222, proxy_command="ssh -W %h:%p j"))
    ['/bin/sh', '-c', 'ssh -W 10.0.0.5:2222 j']
    """
    raw = target.proxy_command
    if not raw:
        return None
    if "\n" in raw or "\r" in raw or "\0" in raw:
        raise InputError(f"host '{target.host}': ssh.proxy_command must be one line")
    values = {"h": target.address, "p": str(int(target.port)), "r": target.user,
              "n": target.host}

    def expand(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter == "%":
            return "%"
        if letter in values:
            return shlex.quote(values[letter])
        raise InputError(f"host '{target.host}': ssh.proxy_command: unknown token "
                         f"'%{letter}' (known: %h %p %r %n %%)")

    return ["/bin/sh", "-c", _PROXY_TOKEN.sub(expand, raw)]


def openssh_proxy_command(target: SshTarget) -> str | None:
    """The ``ProxyCommand`` value for an OpenSSH client config that starts exactly
    :func:`proxy_argv`: OpenSSH expands its own ``%`` tokens, so every ``%`` is doubled."""
    argv = proxy_argv(target)
    if argv is None:
        return None
    return quote_command(argv).replace("%", "%%")


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        offered = fingerprint(key.get_name(), key.get_base64())
        if self.target.pinned_keys:
            pinned = ", ".join(fingerprint(*k.split()[:2]) for k in self.target.pinned_keys)
            raise TransportError(
                f"host '{self.target.host}' ({self.target.address}): host key "
                f"{key.get_name()} {offered} does not match the pinned key ({pinned}); "
                "refusing to connect (re-pin it only if the host was really reinstalled)")
        raise TransportError(
            f"host '{self.target.host}' ({self.target.address}): no pinned host key; offered "
            f"{key.get_name()} {offered}. Refusing to connect: pin the key first")


# What a failed TCP connect means, by errno: the operator's next step differs (a refused
# connection reached the host; an unreachable one never did, e.g. a node without an address).
_CONNECT_ERRNO = {
    errno.ECONNREFUSED: "connection refused (the host answered; nothing listens on the port)",
    errno.EHOSTUNREACH: "no route to host (the host is down or has no address on this "
                        "network)",
    errno.ENETUNREACH: "network unreachable (no route to the host's network)",
    errno.EHOSTDOWN: "host is down",
    errno.ETIMEDOUT: "connection timed out (no answer from the host)",
}


def connect_failure(exc: BaseException, timeout: float) -> str:
    """The real cause of a failed SSH connect, in words, never a guess.

    paramiko wraps both "refused" and "unreachable" in ``NoValidConnectionsError`` (one
    error per address family): look at the errors inside it.

    >>> connect_failure(OSError(errno.EHOSTUNREACH, "No route to host"), 10)
    'no route to host (the host is down or has no address on this network)'
    """
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (the host is down or unreachable)"
    inner: list[BaseException] = [exc]
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        inner = list(exc.errors.values()) or inner
    reasons: list[str] = []
    for err in inner:
        if isinstance(err, (TimeoutError, socket.timeout)):
            text = f"no answer within {timeout:g} s (the host is down or unreachable)"
        else:
            code = getattr(err, "errno", None)
            text = _CONNECT_ERRNO.get(code, "") if isinstance(code, int) else ""
            text = text or str(err) or err.__class__.__name__
        if text not in reasons:
            reasons.append(text)
    return "; ".join(reasons)


class _Liveness:
    """Watches one transport: a keepalive every ``interval`` seconds, each one answered
    within ``limit`` seconds, or the transport is closed and :attr:`lost` says why (closing
    it ends every call blocked on it: a channel's reads, exec, SFTP, the probe itself).

    The probe is paramiko's public ``global_request(wait=True)``, which blocks while the
    transport is open; it runs in a short-lived thread of its own so the watcher's wait has
    a limit.
    """

    KIND = "keepalive@openssh.com"  # what OpenSSH's client sends; sshd answers "failure"

    def __init__(self, host: str, transport: paramiko.Transport, interval: float,
                 limit: float) -> None:
        self.host = host
        self.transport = transport
        self.interval = interval
        self.limit = limit
        self.lost: str | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, name=f"ssh-alive-{host}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.transport.is_active():
                return
            answered = threading.Event()
            threading.Thread(target=self._ask, args=(answered,), name=f"ssh-ask-{self.host}",
                             daemon=True).start()
            if answered.wait(self.limit) or self._stop.is_set():
                continue
            if self.transport.is_active():
                self.lost = f"no answer to SSH keepalives for {self.limit:g} s"
                self.transport.close()
            return

    def _ask(self, answered: threading.Event) -> None:
        try:
            self.transport.global_request(self.KIND, wait=True)
        except (OSError, paramiko.SSHException, EOFError):
            pass  # a transport that broke is seen by whoever uses it next
        finally:
            answered.set()


class SshConnection:
    """One SSH connection to one host, reused for every command of a run. Thread-safe.

    ``keepalive_interval``/``keepalive_timeout``: see :data:`KEEPALIVE_TIMEOUT`; an interval
    of 0 turns the keepalives off.
    """

    def __init__(self, target: SshTarget, connect_timeout: float | None = None,
                 *, keepalive_interval: float | None = None,
                 keepalive_timeout: float | None = None) -> None:
        self.target = target
        self.connect_timeout = target.connect_timeout if connect_timeout is None \
            else connect_timeout
        self.keepalive_interval = target.keepalive_interval if keepalive_interval is None \
            else keepalive_interval
        self.keepalive_timeout = target.keepalive_timeout if keepalive_timeout is None \
            else keepalive_timeout
        self._client: paramiko.SSHClient | None = None
        self._liveness: _Liveness | None = None
        self._lock = threading.Lock()
        self.round_trips = 0

    @property
    def host(self) -> str:
        return self.target.host

    def _lookup_name(self) -> str:
        t = self.target
        return t.address if t.port == 22 else f"[{t.address}]:{t.port}"

    def connect(self) -> None:
        with self._lock:
            if self._client is not None and self._client.get_transport() is not None \
                    and self._client.get_transport().is_active():
                return
            if self._liveness is not None:
                self._liveness.stop()
                self._liveness = None
            self._client = self._open()
            transport = self._client.get_transport()
            if self.keepalive_interval > 0 and transport is not None:
                self._liveness = _Liveness(self.host, transport, self.keepalive_interval,
                                           self.keepalive_timeout)

    def _lost(self, transport: paramiko.Transport | None) -> str | None:
        """Why the connection under a call ended, or None while it is up: a call that saw
        its channel close without an exit status asks this, so a host that died, froze or
        was cut off is ``unreachable``, not a command that failed."""
        liveness = self._liveness
        if liveness is not None and liveness.lost and liveness.transport is transport:
            return liveness.lost
        if transport is None or not transport.is_active():
            return "the connection was closed by the host or the network"
        return None

    def _open(self) -> paramiko.SSHClient:
        t = self.target
        client = paramiko.SSHClient()
        keys = client.get_host_keys()
        for line in t.pinned_keys:
            parts = line.split()
            try:
                keys.add(self._lookup_name(), parts[0],
                         paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1])))
            except (ValueError, IndexError, paramiko.SSHException) as exc:
                raise TransportError(f"host '{t.host}': pinned host key is not a valid key: "
                                     f"{exc}") from None
        client.set_missing_host_key_policy(_RefuseUnknown(t))
        sock = None
        proxy = proxy_argv(t)
        if proxy is not None:
            # paramiko splits the string with shlex and starts it without a shell.
            try:
                sock = paramiko.ProxyCommand(quote_command(proxy))
            except (OSError, paramiko.SSHException) as exc:
                client.close()
                raise TransportError(f"host '{t.host}': cannot start ssh.proxy_command: "
                                     f"{exc}") from None
        try:
            client.connect(
                t.address, port=t.port, username=t.user,
                key_filename=str(t.private_key) if t.private_key else None,
                timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout,
                allow_agent=False, look_for_keys=t.private_key is None, sock=sock)
        except TransportError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            got = fingerprint(exc.key.get_name(), exc.key.get_base64())
            want = fingerprint(exc.expected_key.get_name(), exc.expected_key.get_base64())
            raise TransportError(
                f"host '{t.host}' ({t.address}): HOST KEY CHANGED: offered {got}, pinned "
                f"{want}; refusing to connect (possible man-in-the-middle, or the host was "
                "reinstalled without re-pinning)") from None
        except paramiko.AuthenticationException:
            client.close()
            raise TransportError(f"host '{t.host}' ({t.address}): authentication as "
                                 f"'{t.user}' failed") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            reason = connect_failure(exc, self.connect_timeout)
            raise TransportError(f"host '{t.host}' ({t.address}:{t.port}): cannot connect: "
                                 f"{reason}") from None
        return client

    def run(self, command: Sequence[str] | Shell, *, timeout: float = DEFAULT_COMMAND_TIMEOUT,
            become: bool = False, stdin: bytes | None = None,
            sink: OutputSink | None = None) -> CommandResult:
        """Run a command; never raises for a non-zero exit (that is in the result)."""
        if isinstance(command, Shell):
            line = quote_command(["sh", "-c", command.script])
        else:
            line = quote_command(command)
        if become and self.target.user != "root":
            line = "sudo -n -- " + line
        self.connect()
        client = self._client
        if client is None:
            raise TransportError(f"host '{self.host}': not connected")
        start = time.monotonic()
        transport = client.get_transport()
        try:
            if transport is None:
                raise TransportError(f"host '{self.host}': connection lost")
            chan = transport.open_session(timeout=max(self.connect_timeout,
                                                      CHANNEL_OPEN_TIMEOUT))
            chan.settimeout(1.0)
            chan.exec_command(line)
            if stdin is not None:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = self._collect(chan, start, timeout, line, sink)
            code = chan.recv_exit_status()
            chan.close()
        except TransportError:
            raise
        except (OSError, paramiko.SSHException, EOFError) as exc:
            lost = self._lost(transport)
            detail = f"connection lost: {lost}" if lost else f"{exc or exc.__class__.__name__}"
            raise TransportError(f"host '{self.host}': command failed to run: {line}: "
                                 f"{detail}") from None
        if code == -1:
            # No exit status: the command was killed by a signal (the connection is up) or
            # the connection ended under it (the host died, froze or was cut off).
            lost = self._lost(transport)
            if lost:
                raise TransportError(f"host '{self.host}': connection lost during the "
                                     f"command ({lost}): {line}")
        self.round_trips += 1
        return CommandResult(self.host, line, code, out, err, time.monotonic() - start)

    def _collect(self, chan: paramiko.Channel, start: float, timeout: float, line: str,
                 sink: OutputSink | None) -> tuple[str, str]:
        out: list[bytes] = []
        err: list[bytes] = []
        streams = (("stdout", chan.recv_ready, chan.recv, out),
                   ("stderr", chan.recv_stderr_ready, chan.recv_stderr, err))
        # Woken by paramiko's own reader thread when either stream gets data or ends (its
        # buffers call set() on the event they are given): the wait below sleeps until
        # something arrives. (Polling every 10 ms instead cost 100 threads 10,000 wake-ups a
        # second of GIL time: at 100 hosts more controller CPU than the SSH work itself.)
        # A threading event, not paramiko's fileno() pipe: that pipe's descriptors are closed
        # by close() while the reader thread may still write to them, and a descriptor
        # number reused meanwhile by another host's socket would take the stray byte.
        wake = _Wake()
        chan.in_buffer.set_event(wake)
        chan.in_stderr_buffer.set_event(wake)
        try:
            while True:
                wake.event.clear()  # before draining: whatever arrives from now on wakes us
                got = False
                for name, has_data, receive, chunks in streams:
                    while has_data():
                        data = receive(65536)
                        chunks.append(data)
                        got = True
                        if sink:
                            sink(name, data.decode("utf-8", "replace"))
                # Done only when the exit status AND the end of the output have arrived:
                # sshd may send the exit status before the last output it still had buffered.
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() - start > timeout:
                    raise TransportError(f"host '{self.host}': command timed out after "
                                         f"{timeout:g} s: {line}")
                if not got:
                    if chan.eof_received or chan.closed:
                        chan.status_event.wait(COLLECT_WAIT)  # only the exit status is owed
                    else:
                        wake.event.wait(COLLECT_WAIT)
        except BaseException:
            chan.close()
            raise
        return (b"".join(out).decode("utf-8", "replace"),
                b"".join(err).decode("utf-8", "replace"))

    def put(self, data: bytes, remote_path: str, mode: int = 0o644,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        """Write ``data`` to ``remote_path`` atomically (temp file + rename)."""
        tmp = f"{remote_path}.metalchain-tmp"
        self.connect()
        try:
            with self._client.open_sftp() as sftp:  # type: ignore[union-attr]
                sftp.get_channel().settimeout(timeout)
                with sftp.open(tmp, "wb") as fh:
                    fh.write(data)
                sftp.chmod(tmp, mode)
                sftp.posix_rename(tmp, remote_path)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"host '{self.host}': upload to {remote_path} failed: "
                                 f"{self._why(exc)}") from None
        self.round_trips += 1

    def get(self, remote_path: str, timeout: float = DEFAULT_COMMAND_TIMEOUT) -> bytes:
        self.connect()
        try:
            with self._client.open_sftp() as sftp:  # type: ignore[union-attr]
                sftp.get_channel().settimeout(timeout)
                with sftp.open(remote_path, "rb") as fh:
                    data = fh.read()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TransportError(f"host '{self.host}': download of {remote_path} failed: "
                                 f"{self._why(exc)}") from None
        self.round_trips += 1
        return data

    def _why(self, exc: BaseException) -> str:
        client = self._client
        lost = self._lost(client.get_transport() if client is not None else None)
        return f"connection lost: {lost}" if lost else f"{exc or exc.__class__.__name__}"

    def close(self) -> None:
        with self._lock:
            if self._liveness is not None:
                self._liveness.stop()
                self._liveness = None
            if self._client is not None:
                self._client.close()
                self._client = None

"""The SSH transport against a real OpenSSH server on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from configure.ssh import Shell, SshConnection, SshTarget
from inventory.errors import TransportError
from tests.lab.sshd import LocalSshd, keygen
from tests.waiting import wait_for

pytestmark = pytest.mark.lab


@pytest.fixture
def sshd(tmp_path):
    client_key = tmp_path / "id_ed25519"
    pub = keygen(client_key)
    server = LocalSshd(tmp_path / "sshd", pub)
    server.start()
    server.client_key = client_key
    yield server
    server.stop()


def target(sshd, keys=None, **kw) -> SshTarget:
    return SshTarget(host="h1", address="127.0.0.1", port=sshd.port,
                     pinned_keys=tuple([sshd.host_pub] if keys is None else keys),
                     private_key=sshd.client_key, **kw)


def test_pinned_key_connects_and_quotes(sshd):
    conn = SshConnection(target(sshd))
    try:
        r = conn.run(["printf", "%s|", "a b", "$HOME", "it's"])
        assert r.ok and r.stdout == "a b|$HOME|it's|"
        r = conn.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        r = conn.run(Shell("echo $((1+2))"))
        assert r.stdout == "3\n"
        r = conn.run(["cat"], stdin=b"h\xc3\xa9llo")
        assert r.stdout == "héllo"
        assert conn.round_trips == 4
    finally:
        conn.close()


def test_upload_download_atomic(sshd, tmp_path):
    conn = SshConnection(target(sshd))
    try:
        dest = str(tmp_path / "remote.txt")
        conn.put("zwölf\n".encode(), dest, mode=0o600)
        assert conn.get(dest) == "zwölf\n".encode()
        assert oct((tmp_path / "remote.txt").stat().st_mode & 0o777) == "0o600"
    finally:
        conn.close()


def test_changed_key_is_refused(sshd, tmp_path):
    other = keygen(tmp_path / "other")
    conn = SshConnection(target(sshd, keys=[other]))
    with pytest.raises(TransportError, match=r"HOST KEY CHANGED|does not match the pinned"):
        conn.run(["true"])


def test_unknown_key_is_refused(sshd):
    conn = SshConnection(target(sshd, keys=[]))
    with pytest.raises(TransportError, match="no pinned host key"):
        conn.run(["true"])


def test_command_timeout(sshd):
    conn = SshConnection(target(sshd))
    try:
        with pytest.raises(TransportError, match=r"timed out after 0\.5 s: sleep 5"):
            conn.run(["sleep", "5"], timeout=0.5)
    finally:
        conn.close()


def test_unreachable_host_names_it(sshd):
    sshd.stop()
    conn = SshConnection(target(sshd), connect_timeout=2)
    with pytest.raises(TransportError, match=r"host 'h1' \(127.0.0.1:\d+\): cannot connect"):
        conn.run(["true"])


def test_strings_are_not_commands():
    with pytest.raises(TypeError):
        from configure.ssh import quote_command
        quote_command("rm -rf /")


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the sshd session processes and their commands)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _comm(pid: int) -> str:
    """The process's name, or "" if it is gone (it may exit between listing and reading)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _sleeping_session(sshd) -> list[int]:
    procs = _descendants(sshd.proc.pid)
    return procs if "sleep" in [_comm(p) for p in procs] else []


def _run_in_thread(conn, argv):
    box: dict[str, object] = {}

    def go() -> None:
        started = time.monotonic()
        try:
            box["result"] = conn.run(argv, timeout=60)
        except TransportError as exc:
            box["error"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, box


def test_frozen_host_is_lost_within_the_keepalive_timeout(sshd):
    """SIGSTOP of the session (its kernel still acknowledges TCP): without keepalives the
    command would wait out its own 60 s timeout."""
    conn = SshConnection(target(sshd), keepalive_interval=0.3, keepalive_timeout=1.5)
    stopped: list[int] = []
    try:
        thread, box = _run_in_thread(conn, ["sleep", "50"])
        procs = wait_for(lambda: _sleeping_session(sshd), 10, "the remote sleep")
        frozen_at = time.monotonic()
        for pid in procs:
            # a process of the session that exited since it was listed is not one to stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        assert stopped, f"none of the session's processes {procs} was left to stop"
        thread.join(10)
        assert not thread.is_alive()
        lost_after = time.monotonic() - frozen_at
        assert "no answer to SSH keepalives for 1.5 s" in str(box["error"])
        assert "connection lost during the command" in str(box["error"])
        assert 1.5 <= lost_after < 3.5, lost_after
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        conn.close()


def test_killed_session_is_a_lost_connection_not_a_failed_command(sshd):
    conn = SshConnection(target(sshd))
    try:
        thread, box = _run_in_thread(conn, ["sleep", "50"])
        procs = wait_for(lambda: _sleeping_session(sshd), 10, "the remote sleep")
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        thread.join(10)
        assert "connection lost during the command" in str(box["error"])
        assert box["seconds"] < 10
        # A command killed by a signal while the connection stays up is the command's
        # failure (no exit status), not a lost host.
        r = conn.run(["sh", "-c", "kill -9 $$"])
        assert r.exit_code == -1
    finally:
        conn.close()

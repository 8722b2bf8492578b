"""The SSH transport against a real OpenSSH server on loopback."""

from __future__ import annotations

import pytest

from configure.ssh import Shell, SshConnection, SshTarget
from inventory.errors import TransportError
from tests.lab.sshd import LocalSshd, keygen

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

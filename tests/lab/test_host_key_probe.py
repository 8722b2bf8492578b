"""One host-key probe, one meaning, against a real OpenSSH server: provisioning's
``ssh_answers_with`` and the lab fleet's readiness probe give the same verdict for the same
pinned key (well-formed, sloppy base64, another key, an RSA key, nobody listening)."""

from __future__ import annotations

import subprocess

import pytest

from lab.fleet import probe_ssh
from provision.sshcheck import INVALID_PIN, MATCH, MISMATCH, NO_ANSWER, ssh_answers_with
from tests.lab.sshd import LocalSshd, free_tcp_port, keygen

pytestmark = pytest.mark.lab


@pytest.fixture
def sshd(tmp_path):
    client = keygen(tmp_path / "client")
    server = LocalSshd(tmp_path / "sshd", client)
    rsa = server.dir / "host_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "",
                    "-f", str(rsa)], check=True, timeout=60)
    with server.config.open("a") as fh:
        fh.write(f"HostKey {rsa}\n")
    server.rsa_pub = " ".join(rsa.with_suffix(".pub").read_text().split()[:2])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_both_probes_agree_on_every_pin(sshd, tmp_path):
    ed_type, ed_b64 = sshd.host_pub.split()
    other = keygen(tmp_path / "other")
    cases = [
        (sshd.host_pub, MATCH),
        (sshd.host_pub + " root@h1", MATCH),
        (sshd.rsa_pub, MATCH),              # needs rsa-sha2-*: OpenSSH refuses ssh-rsa (SHA-1)
        (other, MISMATCH),
        (f"{ed_type} {ed_b64[:30]}*!{ed_b64[30:]}", INVALID_PIN),   # not silently "fixed"
        (f"{ed_type} {ed_b64[:-1]}", INVALID_PIN),
        (f"ssh-rsa {ed_b64}", INVALID_PIN),
        ("garbage", INVALID_PIN),
    ]
    for pin, verdict in cases:
        ok, why = ssh_answers_with("127.0.0.1", pin, port=sshd.port, timeout=5)
        result = probe_ssh("127.0.0.1", pin, timeout=5, port=sshd.port)
        assert result.verdict == verdict, (pin, result)
        assert ok == result.ok == (verdict == MATCH), (pin, why)
        assert why == result.reason


def test_nobody_listening_is_no_answer_not_a_mismatch(sshd):
    port = free_tcp_port()
    ok, why = ssh_answers_with("127.0.0.1", sshd.host_pub, port=port, timeout=2)
    assert not ok and "no SSH at 127.0.0.1" in why
    assert probe_ssh("127.0.0.1", sshd.host_pub, timeout=2, port=port).verdict == NO_ANSWER


def test_the_reachability_prober_reads_a_real_sshd_and_a_closed_port(sshd):
    """serve's prober (metalchain_host_reachable): the real server's identification string is
    an answer; a port nobody listens on and a plain TCP server that says something else are
    not."""
    import socket
    import threading

    from orchestrate.reach_watch import probe_ssh as reach_probe

    assert reach_probe("127.0.0.1", sshd.port, 2.0) == (True, "")
    ok, why = reach_probe("127.0.0.1", free_tcp_port(), 2.0)
    assert not ok and why
    other = socket.create_server(("127.0.0.1", 0))
    port = other.getsockname()[1]

    def answer() -> None:
        conn, _ = other.accept()
        with conn:
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert reach_probe("127.0.0.1", port, 2.0) == (False, "no SSH identification string")
    finally:
        thread.join(5)
        other.close()

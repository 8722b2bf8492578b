"""Host identity (issue 13): a host's address taken over by another SSH server — the IP moved
to another machine, or the node was reinstalled with a new key — gets 0 connections.

sshd A answers on 127.0.0.1:PORT; its key is pinned (in the inventory for an unmanaged host,
in the state store for an active managed node); every entry point works against it. Then A
stops and sshd B, with another host key, answers on the same address and port. Every entry
point that connects must refuse with an error naming the host and both fingerprints, and B
must see no login and run nothing: its ForceCommand would leave a marker, and its log would
say "Accepted publickey".
"""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from tests.lab.sshd import LocalSshd, SitePath, keygen, mc

pytestmark = pytest.mark.lab

PORT = 20610
HOSTS = ("h1", "node1")
ADDRESSES = ("127.0.0.1", "127.0.0.2")   # h1, node1


def ssh_keygen_fingerprint(pub: str) -> str:
    """The fingerprint as OpenSSH's own tool computes it (not our code)."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=pub + "\n",
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.split()[1]


@pytest.fixture(scope="module")
def swapped(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    site = SitePath(root / "site")
    (site / "keys").mkdir(parents=True)
    work = root / "work"
    work.mkdir()
    pub = keygen(site / "keys" / "id_ed25519")
    marker = work / "B-ran-something"
    logger = work / "b-session"
    logger.write_text(f"#!/bin/sh\necho \"$SSH_ORIGINAL_COMMAND\" >> {marker}\nexit 99\n")
    logger.chmod(0o755)
    a = LocalSshd(root / "sshd-a", pub, ADDRESSES, port=PORT)
    b = LocalSshd(root / "sshd-b", pub, ADDRESSES, port=PORT,
                  extra_config=f"ForceCommand {logger}\nLogLevel VERBOSE\n")
    a.start()
    try:
        _write_site(site, work, a.host_pub)
        with _site(site) as s:
            s.state.set_node_state("node1", "active", "test: provisioned")
            s.state.pin_host_key("node1", a.host_pub, "test")
        site.work = work
        yield site, a, b, marker
    finally:
        a.stop()
        b.stop()


def _write_site(site, work, a_pub):
    (site / "inventory.yml").write_text(
        "hosts:\n"
        "  h1:\n    address: 127.0.0.1\n"
        f"    ssh: {{port: {PORT}, host_key: \"{a_pub}\"}}\n"
        "  node1:\n    address: 127.0.0.2\n"
        f"    ssh: {{port: {PORT}}}\n"
        "    provision: {mac: \"52:54:00:13:06:01\"}\n")
    (site / "secrets.yml").write_text("{}\n")
    os.chmod(site / "secrets.yml", 0o600)
    (site / "playbooks").mkdir()
    (site / "playbooks" / "touch.yml").write_text(f"""\
- name: touch
  hosts: all
  steps:
    - command: [touch, "{work}/ran-{{{{ inventory_hostname }}}}"]
""")
    role = site / "playbooks" / "roles" / "idcheck"
    (role / "verify").mkdir(parents=True)
    (role / "recipe.yml").write_text(
        f"- file: {{path: \"{work}/idcheck-{{{{ inventory_hostname }}}}\", content: \"x\\n\"}}\n")
    (role / "verify" / "test_idcheck.py").write_text(
        "def test_present(host):\n"
        f"    assert host.file('{work}').is_directory\n")


def entry_points(work):
    return {
        "exec": ["exec", "all", "--", "touch", f"{work}/exec-ran"],
        "run": ["run", "touch"],
        "apply": ["apply", "--role", "idcheck", "all"],
        "drift": ["drift", "all", "--role", "idcheck"],
        "facts": ["facts", "all"],
        "verify": ["verify", "all", "--role", "idcheck"],
    }


def test_a_host_that_changed_its_key_gets_no_connection(swapped):
    site, a, b, marker = swapped
    work = site.work
    # Against A (the pinned key) every entry point works: the pins are right.
    for label, args in entry_points(work).items():
        r = mc(site, *args)
        assert r.returncode in (0, 3), (label, "against A", r.stdout[-2000:], r.stderr[-2000:])
    assert (work / "exec-ran").exists() and (work / "ran-node1").exists()
    for f in [*work.glob("*ran*"), *work.glob("idcheck-*")]:
        f.unlink()

    from provision.provision_step import active_and_answering
    from provision.sshcheck import ssh_answers_with

    with _site(site) as s:
        assert active_and_answering(s.inventory.host("node1"), s.state) == (True, "")

    a.stop()
    b.start()
    fp_a, fp_b = ssh_keygen_fingerprint(a.host_pub), ssh_keygen_fingerprint(b.host_pub)
    assert fp_a != fp_b
    refused = {}
    for label, args in entry_points(work).items():
        r = mc(site, *args)
        text = r.stdout + r.stderr
        refused[label] = text
        assert r.returncode not in (0, 3), (label, text[-3000:])
        for host in HOSTS:
            assert host in text, (label, host, text[-3000:])
        assert fp_a in text and fp_b in text, (label, fp_a, fp_b, text[-3000:])
    # The pinned-key probes (provision's active check, the vm step's guest wait, power and
    # remediation checks all call ssh_answers_with).
    with _site(site) as s:
        ok, why = active_and_answering(s.inventory.host("node1"), s.state)
        assert not ok and fp_a in why and fp_b in why, why
        ok, why = ssh_answers_with("127.0.0.2", a.host_pub, port=PORT, timeout=5)
        assert not ok and fp_a in why and fp_b in why, why
        from provision.provision_step import ProvisionStep

        outcome = ProvisionStep._active(_Ctx(s), s.inventory.host("node1"))
        assert outcome.status == "failed" and "node1" in outcome.message
        assert fp_a in outcome.message and fp_b in outcome.message
    # B accepted no login and ran nothing.
    b.stop()
    log = (b.dir / "sshd.log").read_text()
    assert "Accepted" not in log, log[-2000:]
    assert not marker.exists(), marker.read_text()
    assert not list(work.glob("*ran*")) and not list(work.glob("idcheck-*"))
    # Nor were the refusals forgotten: the store still pins A (nothing re-pinned B).
    with _site(site) as s:
        assert s.state.host_keys_of("node1") == [a.host_pub]


@contextlib.contextmanager
def _site(root):
    from inventory.site import Site

    s = Site.open(root)
    try:
        yield s
    finally:
        s.close()


class _Ctx:
    def __init__(self, site):
        self.state = site.state

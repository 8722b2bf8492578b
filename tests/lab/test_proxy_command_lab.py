"""``ssh.proxy_command`` means one thing to paramiko (exec, run, apply) and to OpenSSH (verify's
testinfra): a host reached only through a jump host answers both, and the proxy saw the same
expanded tokens each time."""

from __future__ import annotations

import json

import pytest

from tests.lab.sshd import addresses, mc

pytestmark = pytest.mark.lab


def test_exec_and_verify_go_through_the_same_proxy(lab_site):
    work = lab_site.work
    jump = addresses()[0]
    known = work / "jump_known_hosts"   # (ssh reads a space there as a list of files)
    known.write_text(f"[{jump}]:{lab_site.sshd.port} {lab_site.sshd.host_pub}\n")
    key = lab_site / "keys" / "id_ed25519"
    log = work / "proxy log"
    proxy = (f"echo %n %h %p %r 100%% >> '{log}'; exec ssh -F /dev/null -i '{key}' "
             f"-o BatchMode=yes -o StrictHostKeyChecking=yes "
             f"-o 'UserKnownHostsFile={known}' -p {lab_site.sshd.port} -W %h:%p root@{jump}")
    # h02 is reached only through the jump host; its address and port stay its own.
    inv = (lab_site / "inventory.yml").read_text()
    before, h02 = inv.split("  h02:\n", 1)
    h02 = h02.replace("    ssh: {", f"    ssh: {{proxy_command: {json.dumps(proxy)}, ", 1)
    (lab_site / "inventory.yml").write_text(before + "  h02:\n" + h02)
    role = lab_site / "playbooks" / "roles" / "probe"
    (role / "verify").mkdir(parents=True)
    (role / "recipe.yml").write_text("[]\n")
    (role / "verify" / "test_probe.py").write_text(
        "def test_reached(host):\n    assert host.run('true').rc == 0\n")

    r = mc(lab_site, "exec", "h01,h02", "--json", "--", "hostname")
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.read_text().splitlines() == [f"h02 {addresses()[1]} {lab_site.sshd.port} root 100%"]

    r = mc(lab_site, "verify", "h02", "--role", "probe", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = log.read_text().splitlines()
    assert len(lines) >= 2 and set(lines) == {
        f"h02 {addresses()[1]} {lab_site.sshd.port} root 100%"}, lines

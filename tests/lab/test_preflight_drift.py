"""Against real sshd hosts: a run that validation can tell will fail contacts no host and
changes nothing (`run --plan` and `run` agree), an unknown role makes no SSH connection, and
`drift` exits 0 only when every selected host was checked and matched (3 drift, 1 hosts not
checked, 2 no roles), saying which, never "no drift" for what it did not check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.lab.sshd import LocalSshd, keygen, mc
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
DOWN = "127.0.0.29"     # nothing listens there: h09 is unreachable


class Lab:
    def __init__(self, site: Path, work: Path, sshd: LocalSshd) -> None:
        self.site, self.work, self.sshd = site, work, sshd

    def connections(self) -> int:
        """SSH connections sshd has seen so far (LogLevel VERBOSE logs each)."""
        log = (self.sshd.dir / "sshd.log").read_text(errors="replace")
        return log.count("Connection from")

    def inventory(self, roles: dict[str, list[str]] | None = None) -> None:
        hosts = []
        ssh = f"    ssh: {{port: {self.sshd.port}, host_key: \"{self.sshd.host_pub}\"}}\n"
        for i, addr in enumerate(ADDRESSES, 1):
            name = f"h{i:02d}"
            extra = f"    roles: {json.dumps((roles or {}).get(name, []))}\n"
            hosts.append(f"  {name}:\n    address: {addr}\n    groups: [fleet]\n{extra}{ssh}")
        hosts.append(f"  h09:\n    address: {DOWN}\n    groups: [down]\n{ssh}")
        (self.site / "inventory.yml").write_text(
            "groups:\n  fleet: {}\n  down: {}\nhosts:\n" + "".join(hosts))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    site = root / "site"
    (site / "keys").mkdir(parents=True)
    pub = keygen(site / "keys" / "id_ed25519")
    sshd = LocalSshd(root / "sshd", pub, ADDRESSES)
    with sshd.config.open("a") as f:
        f.write("LogLevel VERBOSE\n")
    work = root / "work"
    work.mkdir()
    role = site / "playbooks" / "roles" / "mark"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text(
        f"- file: {{path: '{work}/drift-{{{{ inventory_hostname }}}}', content: \"ok\\n\", "
        "mode: '0644'}\n")
    (site / "secrets.yml").write_text("{}\n")
    os.chmod(site / "secrets.yml", 0o600)
    sshd.start()
    try:
        lab = Lab(site, work, sshd)
        # start() probed the port: wait until sshd has logged that connection, so the counts
        # the tests compare are not raced by it.
        wait_for(lambda: lab.connections() >= 1, 10, "sshd to log its start probe")
        lab.inventory()
        yield lab
    finally:
        sshd.stop()


def test_undefined_variable_fails_plan_and_run_before_any_change(lab):
    pb = lab.site / "playbooks" / "touch.yml"
    pb.write_text(
        "- name: touch, then a typo\n  hosts: fleet\n  steps:\n"
        f"    - command: {{argv: [touch, '{lab.work}/marker-{{{{ inventory_hostname }}}}']}}\n"
        "    - command: {argv: [echo, '{{ fail_host }}']}\n")
    expected = f"error: {pb}:5: 'fail_host' is undefined (hosts h01, h02, h03)"
    before = lab.connections()
    r = mc(lab.site, "run", "touch", "--plan")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() == expected and "Traceback" not in r.stderr
    r = mc(lab.site, "run", "touch")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() == expected
    assert not list(lab.work.glob("marker-*"))          # the first step changed no host
    assert lab.connections() == before                  # no host was even contacted
    # The same run with the variable given does contact the hosts and run both steps.
    r = mc(lab.site, "run", "touch", "-e", "fail_host=x")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert sorted(p.name for p in lab.work.glob("marker-*")) == [
        "marker-h01", "marker-h02", "marker-h03"]
    assert lab.connections() >= before + 3


def test_unknown_role_makes_no_ssh_connection(lab):
    before = lab.connections()
    r = mc(lab.site, "apply", "--role", "bsae", "fleet")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "error: command line: unknown role 'bsae' (did you mean 'base'?)"]
    r = mc(lab.site, "drift", "fleet", "--role", "makr")
    assert r.returncode == 2 and "did you mean 'mark'?" in r.stderr
    assert lab.connections() == before


def drift(lab: Lab, *args: str) -> tuple[int, str, dict]:
    r = mc(lab.site, "drift", *args)
    rj = mc(lab.site, "drift", *args, "--json")
    doc = json.loads(rj.stdout) if rj.stdout else {}
    assert rj.returncode == r.returncode, (r.stderr, rj.stderr)
    if doc:
        assert doc["exit_code"] == r.returncode
    return r.returncode, r.stdout + r.stderr, doc


def test_drift_exit_codes_and_verdicts(lab):
    r = mc(lab.site, "apply", "--role", "mark", "fleet")
    assert r.returncode == 0, (r.stdout, r.stderr)
    code, text, doc = drift(lab, "fleet", "--role", "mark")
    assert code == 0, text
    assert "no drift: 3 hosts checked, all match their roles" in text
    assert doc["verdict"] == "match" and doc["checked"] == ["h01", "h02", "h03"]

    (lab.work / "drift-h02").write_text("tampered\n")
    code, text, doc = drift(lab, "fleet", "--role", "mark")
    assert code == 3, text
    assert "drift found on 1 host of 3: h02" in text and "no drift" not in text
    assert doc["verdict"] == "drift" and doc["drifted"] == ["h02"]
    assert [d["resource"] for d in doc["hosts"]["h02"]["drift"]] == [
        f"file:{lab.work}/drift-h02"]

    # An unreachable host: failure wins over drift, and is said.
    code, text, doc = drift(lab, "fleet,h09", "--role", "mark")
    assert code == 1, text
    assert "1 host could not be checked: h09 (unreachable" in text
    assert "drift found on 1 host of 4: h02" in text
    assert doc["verdict"] == "not_checked" and list(doc["not_checked"]) == ["h09"]

    (lab.work / "drift-h02").write_text("tampered again\n")
    r = mc(lab.site, "drift", "fleet", "--role", "mark", "--fix", "--json")
    assert r.returncode == 3, r.stderr          # drift was found (and corrected)
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "drift" and doc["fixed"] and doc["drifted"] == ["h02"]
    assert "drift fixed on 1 host of 3: h02" in doc["summary"]
    assert (lab.work / "drift-h02").read_text() == "ok\n"
    code, text, _ = drift(lab, "fleet", "--role", "mark")
    assert code == 0, text


def test_drift_says_no_roles_assigned(lab):
    try:
        lab.inventory()            # no host has a role
        before = lab.connections()
        code, text, doc = drift(lab, "fleet")
        assert code == 2, text
        assert "no roles assigned to h01, h02, h03: nothing to check" in text
        assert "no drift" not in text and doc == {}
        assert lab.connections() == before
        lab.inventory({"h03": ["mark"]})
        code, text, doc = drift(lab, "fleet")
        assert code == 2, text
        assert "no roles assigned to 2 hosts (not checked): h01, h02" in text
        assert "no drift on the 1 host checked" in text and "no drift:" not in text
        assert doc["verdict"] == "no_roles" and doc["checked"] == ["h03"]
    finally:
        lab.inventory()

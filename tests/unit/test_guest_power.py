"""`metalchain power` on guests: through libvirt on the hypervisor (the ``vm_power`` step,
over the hypervisor's SSH connection, faked here), in the same journaled run as the machines'
BMC actions; fixed scripts with the domain as an argument; refusals name the host."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import orchestrate.runs
import provision.power_step
from configure.ssh import CommandResult
from configure.virsh_power import SCRIPTS, domain_power, parse_vm_power, power_argv
from inventory.errors import InputError
from inventory.site import Site
from orchestrate.actions import power
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
hosts:
  node1:
    address: 10.98.0.11
    bmc: {address: 127.0.0.1, port: 19911, username: admin, password: {secret: bmc}}
  node2:
    address: 10.98.0.12
    bmc: {address: 127.0.0.1, port: 19912, username: admin, password: {secret: bmc}}
  web1: {address: 10.98.0.21}
  vm1:
    vm: {hypervisor: node1, image: lab-guest, mac: "52:54:00:98:00:31",
         network: {address: 10.98.0.31/24}}
  vm2:
    vm: {hypervisor: node1, image: lab-guest, mac: "52:54:00:98:00:32",
         network: {address: 10.98.0.32/24}}
  vm3:
    vm: {hypervisor: node2, image: lab-guest, mac: "52:54:00:98:00:33",
         network: {address: 10.98.0.33/24}}
"""
ACTION_OF = {script: action for action, script in SCRIPTS.items()}


class Hypervisor:
    """One hypervisor's libvirt, as the fixed scripts would find it."""

    def __init__(self, name: str, world: dict[str, Any]) -> None:
        self.name, self.world = name, world

    def run(self, argv, *, timeout=30.0, become=False, **_kw) -> CommandResult:
        assert argv[:2] == ["sh", "-c"] and argv[3] == "vm_power" and become
        assert argv[5] == "qemu:///system" and 0 < timeout <= 30
        action, domain = ACTION_OF[argv[2]], argv[4]
        self.world["calls"].append((self.name, action, domain))
        domains = self.world["domains"][self.name]
        if domain not in domains:
            return CommandResult(self.name, "sh", 1, "",
                                 f"error: failed to get domain '{domain}'", 0.01)
        state = domains[domain]
        out = {"status": state, "on": "already on" if state == "running" else "powered on",
               "off": "already off" if state == "shut off" else "powered off",
               "cycle": "cycled", "soft-off": "soft off requested"}[action]
        domains[domain] = {"on": "running", "off": "shut off", "cycle": "running"}.get(
            action, state)
        return CommandResult(self.name, "sh", 0, out + "\n", "", 0.01)

    def close(self) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    world: dict[str, Any] = {"calls": [], "bmc": [],
                             "domains": {"node1": {"vm1": "shut off", "vm2": "running"},
                                         "node2": {}}}

    class Bmc:
        def __init__(self, host):
            self.host = host.name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def power_status(self, timeout=None):
            world["bmc"].append(("status", self.host))
            return "on"

    monkeypatch.setattr(provision.power_step, "driver_for", lambda host, **kw: Bmc(host))
    monkeypatch.setattr(orchestrate.runs, "connector",
                        lambda inv, store, key: lambda host: Hypervisor(host, world))
    s = Site.open(write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw\n"))
    s.world = world
    yield s
    s.close()


def test_status_of_guests_and_machines_in_one_run(site):
    result = power(site, "node1,vm1,vm2,web1", "status")
    rows = {r["host"]: r for r in result.hosts}
    assert rows["node1"] == {"host": "node1", "ok": True, "result": "on", "error": None}
    assert rows["vm1"] == {"host": "vm1", "ok": True, "via": "libvirt on node1",
                           "result": "off", "state": "shut off", "error": None}
    assert rows["vm2"]["result"] == "on" and rows["vm2"]["state"] == "running"
    assert result.skipped == ["web1"] and result.exit_code == 0
    assert site.world["calls"] == [("node1", "status", "vm1"), ("node1", "status", "vm2")]
    run = site.state.get_run(result.run)
    assert run["kind"] == "power"
    assert {e.host for e in site.state.journal_entries(result.run)} == {"node1"}
    assert site.state.list_leases() == []


def test_on_off_cycle_reach_the_guests_hypervisors_and_say_what_they_did(site):
    on = power(site, "vm1,vm2,vm3", "on")
    rows = {r["host"]: r for r in on.hosts}
    assert rows["vm1"]["ok"] and rows["vm1"]["result"] == "powered on"
    assert rows["vm2"]["ok"] and rows["vm2"]["result"] == "already on"
    assert not rows["vm3"]["ok"] and rows["vm3"]["via"] == "libvirt on node2"
    assert "failed to get domain 'vm3'" in rows["vm3"]["error"]
    assert "the vm step defines it" in rows["vm3"]["error"] and on.exit_code == 1
    assert site.world["domains"]["node1"] == {"vm1": "running", "vm2": "running"}
    off = power(site, "vm1", "off")
    assert off.hosts[0]["result"] == "powered off" and off.exit_code == 0
    cycle = power(site, "vm1", "cycle")
    assert cycle.hosts[0]["result"] == "cycled"
    assert site.world["domains"]["node1"]["vm1"] == "running"
    assert [c[1] for c in site.world["calls"] if c[2] == "vm1"] == ["on", "off", "cycle"]


def test_bootdev_on_a_guest_and_a_host_with_neither_are_refused_naming_them(site):
    with pytest.raises(InputError, match=r"power bootdev: vm1 is a guest: .*vm step"):
        power(site, "node1,vm1", "bootdev", device="network")
    with pytest.raises(InputError, match=r"power on: no BMC in the inventory for web1"):
        power(site, "vm1,web1", "on")
    assert site.world["calls"] == [] and site.world["bmc"] == []


def test_the_scripts_take_the_domain_as_an_argument_and_states_parse():
    argv = power_argv("off", "vm1; reboot")
    assert argv[:2] == ("sh", "-c") and argv[4] == "vm1; reboot"
    assert "vm1" not in argv[2] and 'destroy -- "$1"' in argv[2]
    for script in SCRIPTS.values():
        assert '-- "$1"' in script and '-c "$2"' in script
    assert domain_power("shut off\n\n") == ("off", "shut off")
    assert domain_power("running") == ("on", "running")
    with pytest.raises(ValueError, match="answered"):
        domain_power("")
    for bad in ({"action": "bootdev", "guests": ["vm1"]}, {"action": "on"},
                {"action": "on", "guests": []}, {"action": "on", "guests": ["a"], "x": 1}):
        with pytest.raises(ValueError):
            parse_vm_power(bad)


def test_the_cli_shows_the_way_each_host_is_powered(site, run_cli):
    r = run_cli("--site", str(site.root), "power", "status", "vm1,node1")
    assert r.code == 0, r.err
    rows = [line.split("\t") for line in r.out.splitlines()]
    assert rows[0] == ["host", "result", "error", "via"]
    assert ["vm1", "off", "", "libvirt on node1"] in [[c if c != "-" else "" for c in row]
                                                      for row in rows]

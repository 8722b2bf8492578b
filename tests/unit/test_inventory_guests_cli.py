"""`inventory list|show|graph` say which hypervisor holds each guest (human and --json), and
`show GUEST` has its vm section without anything secret."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_site

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample operator"
INVENTORY = f"""\
groups:
  hypervisors: {{hosts: [node1]}}
  guests: {{}}
hosts:
  node1:
    address: 10.98.0.11
    bmc: {{address: 127.0.0.1, port: 19911, username: admin, password: {{secret: bmc}}}}
  web1: {{address: 10.98.0.21}}
  vm1:
    groups: [guests]
    labels: {{tier: front}}
    vm:
      hypervisor: node1
      image: lab-guest
      mac: "52:54:00:98:00:31"
      network: {{address: 10.98.0.31/24, gateway: 10.98.0.1}}
      memory_mib: 192
      ssh_authorized_keys: ["{KEY}"]
  vm2:
    groups: [guests]
    vm:
      hypervisor: node1
      image: lab-guest
      mac: "52:54:00:98:00:32"
      network: {{address: 10.98.0.32/24}}
"""


@pytest.fixture
def site(tmp_path):
    return write_site(tmp_path / "s", INVENTORY, secrets="bmc: s3cret-bmc-pw\n")


def _json(run_cli, site, *args):
    r = run_cli("--site", str(site), *args, "--json")
    assert r.code == 0, r.err
    return json.loads(r.out)


def test_list_json_names_each_guests_hypervisor_and_each_hypervisors_guests(site, run_cli):
    hosts = {h["name"]: h for h in _json(run_cli, site, "inventory", "list")["hosts"]}
    assert hosts["vm1"]["hypervisor"] == "node1" and hosts["vm2"]["hypervisor"] == "node1"
    assert hosts["node1"]["hypervisor"] is None
    assert hosts["node1"]["guests"] == ["vm1", "vm2"]
    assert hosts["web1"]["guests"] == [] and hosts["web1"]["vm"] is None
    assert hosts["vm1"]["address"] == "10.98.0.31" and hosts["vm1"]["bmc"] is None


def test_list_for_people_has_a_vm_column(site, run_cli):
    r = run_cli("--site", str(site), "inventory", "list")
    assert r.code == 0, r.err
    header, *rows = r.out.splitlines()
    assert header.split("\t")[-1] == "vm"
    by_host = {row.split("\t")[0]: row.split("\t") for row in rows}
    assert by_host["vm1"][-1] == "guest on node1"
    assert by_host["vm1"][-2] == "52:54:00:98:00:31"          # its MAC, like a node's
    assert by_host["node1"][-1] == "holds vm1, vm2"
    assert by_host["web1"][-1] in ("", "-")


def test_show_guest_has_its_vm_section_and_no_secret(site, run_cli):
    doc = _json(run_cli, site, "inventory", "show", "vm1")["host"]
    vm = doc["vm"]
    assert vm["hypervisor"] == "node1" and vm["image"] == "lab-guest"
    assert vm["network"] == {"address": "10.98.0.31/24", "gateway": "10.98.0.1",
                             "nameservers": []}
    assert vm["memory_mib"] == 192 and vm["vcpus"] == 1 and vm["state"] == "running"
    assert vm["hostname"] == "vm1" and vm["ssh_authorized_keys"] == [KEY]
    assert doc["hypervisor"] == "node1" and doc["guests"] == []
    r = run_cli("--site", str(site), "inventory", "show", "vm1")
    assert r.code == 0
    assert "vm.hypervisor\tnode1" in r.out and "vm.network.address\t10.98.0.31/24" in r.out
    for args in (["inventory", "show", "node1"], ["inventory", "list"]):
        r = run_cli("--site", str(site), *args, "--json")
        assert "s3cret-bmc-pw" not in r.out
        r = run_cli("--site", str(site), *args)
        assert "s3cret-bmc-pw" not in r.out
    assert _json(run_cli, site, "inventory", "show", "node1")["host"]["guests"] == [
        "vm1", "vm2"]


def test_graph_shows_guests_under_their_hypervisor(site, run_cli):
    doc = _json(run_cli, site, "inventory", "graph")
    assert doc["guests"] == {"node1": ["vm1", "vm2"]}
    r = run_cli("--site", str(site), "inventory", "graph")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert "  |-- vm1 (guest on node1)" in [ln[-len("  |-- vm1 (guest on node1)"):]
                                            for ln in lines]
    assert any(ln.endswith("|-- node1 (holds vm1, vm2)") for ln in lines)
    i = lines.index("hypervisors:")
    assert lines[i + 1:i + 4] == ["  node1", "    |-- vm1 (vm)", "    |-- vm2 (vm)"]

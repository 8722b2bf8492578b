"""The chain's playbooks validate against the real step registry: the scaffold's site.yml
(``metalchain init``) on the scaffold's inventory, and the shipped playbooks/site.yml on the
inventory `metalchain lab up` writes (its groups: nodes, hypervisors, fleet)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from inventory.site import Site
from lab.lab import Lab, LabConfig, NodeConfig
from orchestrate.commands.init_cmd import init
from orchestrate.runs import RunOptions, load, plan_run, run_problems

pytestmark = pytest.mark.unit

SHIPPED = Path(__file__).resolve().parents[2] / "playbooks" / "site.yml"


def kinds(doc: dict) -> list[list[str]]:
    return [[s["kind"] for s in p["steps"]] for p in doc["plays"]]


def test_the_scaffolds_site_yml_passes_plan(tmp_path):
    root = tmp_path / "site"
    result = CliRunner().invoke(init, [str(root)])
    assert result.exit_code == 0, result.output
    site = Site.open(root)
    try:
        pb = load(site, "site.yml")
        assert run_problems(site, pb, RunOptions()) == []
        doc = plan_run(site, pb)
    finally:
        site.close()
    assert kinds(doc) == [["provision"], ["apply_roles"], ["monitor"]]
    assert [p["hosts"] for p in doc["plays"]] == [["node1", "node2", "store1"]] * 3


def test_the_shipped_site_yml_passes_plan_on_a_lab_inventory(tmp_path):
    lab = Lab(tmp_path)
    config = LabConfig(name="t", netns="mclab-t", ipv4="10.99.0.0/24", ipv6="fd00:99::/64",
                       nodes=[NodeConfig(f"node{i}", f"52:54:00:00:99:0{i}", f"10.99.0.1{i}",
                                         f"tap{i}", 20030 + i) for i in (1, 2)])
    lab.ensure_secrets(config)
    lab.write_inventory(config, [])
    site = Site.open(tmp_path)
    try:
        assert site.inventory.group_hosts("hypervisors") == ["node1", "node2"]
        pb = load(site, str(SHIPPED))
        assert run_problems(site, pb, RunOptions()) == []
        doc = plan_run(site, pb)
    finally:
        site.close()
    # no guests in this lab: the VM plays select nobody and are skipped, not refused
    assert kinds(doc) == [["provision"], ["apply_roles"], ["vm"], ["apply_roles"], ["monitor"]]
    assert [p["hosts"] for p in doc["plays"]] == [["node1", "node2"]] * 3 + [[]] + [
        ["node1", "node2"]]


def test_the_shipped_site_yml_on_the_chain_lab_inventory(tmp_path):
    lab = Lab(tmp_path)
    config = LabConfig(name="t", netns="mclab-t", ipv4="10.99.0.0/24", ipv6="fd00:99::/64",
                       nodes=[NodeConfig(f"node{i}", f"52:54:00:00:99:0{i}", f"10.99.0.1{i}",
                                         f"tap{i}", 20030 + i) for i in (1, 2)],
                       chain=True, vms=3,
                       images=[{"name": "lab-guest.qcow2", "sha256": "0" * 64,
                                "url": "http://10.99.0.1:8080/images/lab-guest-x.qcow2"}])
    lab.ensure_secrets(config)
    lab.write_inventory(config, [])
    site = Site.open(tmp_path)
    try:
        inv = site.inventory
        assert [h.name for h in inv.guests_of("node1")] == ["vm1", "vm3"]
        assert inv.host("vm2").vm.hypervisor == "node2"
        assert inv.host("vm1").address == "10.99.0.200"
        assert set(inv.roles_of("node1")) == {"base", "node_exporter", "hypervisor"}
        assert inv.roles_of("vm1") == ["lab_guest"]
        assert "storage" not in inv.groups     # no fleet host to be the image store
        pb = load(site, str(SHIPPED))
        assert run_problems(site, pb, RunOptions()) == []
        doc = plan_run(site, pb)
    finally:
        site.close()
    assert [p["hosts"] for p in doc["plays"]][2:4] == [["node1", "node2"],
                                                       ["vm1", "vm2", "vm3"]]


def test_a_provision_play_on_hosts_without_a_bmc_is_refused_before_any_contact(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "inventory.yml").write_text(
        "hosts:\n  web1: {address: 10.0.0.5}\n  web2: {address: 10.0.0.6}\n"
        "  node1:\n    bmc: {address: 127.0.0.1, port: 20031, username: a, password: {secret: b}}\n"
        "    provision: {mac: '52:54:00:00:99:01', ip: 10.99.0.11}\n")
    (root / "secrets.yml").write_text("b: pw\n")
    (root / "secrets.yml").chmod(0o600)
    (root / "pb.yml").write_text("- hosts: all\n  steps:\n    - provision: {}\n")
    site = Site.open(root)
    try:
        problems = run_problems(site, load(site, str(root / "pb.yml")), RunOptions())
    finally:
        site.close()
    assert [(p.message, p.hosts) for p in problems] == [
        ("provision needs bmc and provision.mac in the inventory", ("web1", "web2"))]
    assert problems[0].source.endswith("pb.yml:3")


def test_a_node_with_a_new_blank_disk_is_forgotten_and_enrolled_again(tmp_path):
    """lab down --purge, then lab up: the machines are blank again, whatever the store
    remembers (active, pinned keys; the guests they held) is forgotten, not trusted."""
    from inventory.state import StateStore

    lab = Lab(tmp_path)
    config = LabConfig(name="t", netns="mclab-t", ipv4="10.99.0.0/24", ipv6="fd00:99::/64",
                       nodes=[NodeConfig("node1", "52:54:00:00:99:01", "10.99.0.11", "tap1",
                                         20031)], chain=True, vms=1)
    (tmp_path / "state").mkdir()
    store = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    try:
        for state in ("enrolled", "powering_on", "pxe_booting", "installing", "installed",
                      "rebooting", "active"):
            store.set_node_state("node1", state, "earlier")
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEarlierMachine"
        store.pin_host_key("node1", key, "install")
        store.pin_host_key("vm1", key, "vm seed on node1")
    finally:
        store.close()
    lab.record_state(config, [], blank=["node1"])
    store = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    try:
        assert store.node("node1").state == "enrolled"
        assert store.host_keys_of("node1") == [] and store.host_keys_of("vm1") == []
    finally:
        store.close()
    lab.record_state(config, [], blank=[])     # an existing disk: nothing forgotten
    store = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    try:
        assert store.node("node1").state == "enrolled"
    finally:
        store.close()

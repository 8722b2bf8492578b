"""Guests in monitoring: autodiscovered file_sd targets with their inventory labels plus
``hypervisor`` and ``kind="vm"``; serve's SSH prober probes them and its series names their
hypervisor (what VmDown fires on); the BMC poller leaves them out, without an error."""

from __future__ import annotations

import json

import pytest

from inventory.site import Site
from monitor.metrics import build_registry
from monitor.reach import ReachCache, ReachSample
from monitor.targets import ScrapeHost, ScrapeTarget, TargetError, file_sd_groups
from orchestrate.monitoring import refresh_targets, scrape_hosts
from orchestrate.power_watch import PowerWatch
from orchestrate.reach_watch import ReachWatch
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
groups:
  hypervisors: {hosts: [node1], roles: [node_exporter]}
  guests: {roles: [node_exporter]}
hosts:
  node1:
    address: 10.98.0.11
    labels: {rack: r1}
    bmc: {address: 127.0.0.1, port: 19911, username: admin, password: {secret: bmc}}
  vm1:
    groups: [guests]
    labels: {tier: front}
    vm:
      hypervisor: node1
      image: lab-guest
      mac: "52:54:00:98:00:31"
      network: {address: 10.98.0.31/24, gateway: 10.98.0.1}
  vm2:
    groups: [guests]
    vm:
      hypervisor: node1
      image: lab-guest
      mac: "52:54:00:98:00:32"
      network: {address: 10.98.0.32/24}
      state: stopped
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC" + "C" * 43
NODE = ScrapeTarget(port=9100, job="node", role="node_exporter")


@pytest.fixture
def site(tmp_path):
    s = Site.open(write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw\n"))
    yield s
    s.close()


def _applied(site: Site, host: str) -> None:
    uid = site.state.start_run("apply", "<apply_role>", {"check": False})
    site.state.journal_outcome(site.state.journal_intent(uid, host, 0, "apply"), "changed")
    site.state.end_run(uid, "ok")


def test_a_guest_is_discovered_like_any_host_with_its_labels_and_hypervisor(site):
    assert scrape_hosts(site) == []
    _applied(site, "vm1")
    _applied(site, "node1")
    by_name = {h.name: h for h in scrape_hosts(site)}
    assert by_name["vm1"].hypervisor == "node1" and by_name["node1"].hypervisor is None
    groups = json.loads(refresh_targets(site).read_text())
    labels = {g["labels"]["instance"]: (g["targets"], g["labels"]) for g in groups}
    targets, vm = labels["vm1"]
    assert targets == ["10.98.0.31:9100"]
    assert vm == {"instance": "vm1", "metalchain_host": "vm1", "metalchain_groups": ",guests,",
                  "metalchain_roles": ",node_exporter,", "tier": "front",
                  "hypervisor": "node1", "kind": "vm", "job": "node",
                  "__metrics_path__": "/metrics"}
    _, node = labels["node1"]
    assert "hypervisor" not in node and "kind" not in node and node["rack"] == "r1"


def test_a_guest_the_vm_step_made_is_scraped_before_any_apply_but_not_a_stopped_one(site):
    """A tiny guest image brings its exporter itself: the guest is a target once the vm step
    pinned its host key; a guest the inventory wants stopped is never one."""
    site.state.pin_host_key("vm2", KEY, "vm step")
    _applied(site, "vm2")
    assert scrape_hosts(site) == []
    site.state.pin_host_key("vm1", KEY, "vm step")
    assert [h.name for h in scrape_hosts(site)] == ["vm1"]


@pytest.mark.parametrize("label", ["hypervisor", "kind"])
def test_an_inventory_label_cannot_pose_as_the_guest_labels(label):
    with pytest.raises(TargetError, match=f"host web1: label '{label}' is one metalchain sets"):
        file_sd_groups([ScrapeHost("web1", "10.0.0.1", labels={label: "x"}, targets=(NODE,))])


def test_the_prober_probes_guests_and_their_series_names_the_hypervisor(site):
    asked = []

    def probe(address, port, timeout):
        asked.append(address)
        return address != "10.98.0.31", "" if address != "10.98.0.31" else "timed out"

    cache = ReachCache()
    ready = {"vm1", "vm2"}
    watch = ReachWatch(lambda: site.inventory, cache, probe=probe, clock=lambda: 7.0,
                       guest_ready=lambda name: name in ready)
    try:
        watch.probe_once()
        assert sorted(asked) == ["10.98.0.11", "10.98.0.31"]   # vm2 is to be stopped
        ready.clear()                                            # vm1 not made yet
        asked.clear()
        watch.probe_once()
        assert asked == ["10.98.0.11"] and set(cache.snapshot()) == {"node1"}
        ready.add("vm1")
        asked.clear()
        watch.probe_once()
    finally:
        watch.stop()
    assert sorted(asked) == ["10.98.0.11", "10.98.0.31"]
    snap = cache.snapshot()
    assert snap["vm1"] == ReachSample("vm1", False, 7.0, "timed out", hypervisor="node1")
    assert snap["node1"].hypervisor == "" and snap["node1"].reachable
    registry, _ = build_registry(site.state, reach_status=cache.snapshot)
    assert registry.get_sample_value("metalchain_host_reachable", {
        "host": "vm1", "kind": "vm", "hypervisor": "node1"}) == 0.0
    assert registry.get_sample_value("metalchain_host_reachable", {
        "host": "node1", "kind": "", "hypervisor": ""}) == 1.0


def test_serve_takes_a_guest_as_made_once_its_host_key_is_pinned(site):
    from orchestrate.reach_watch import pinned_in

    ready = pinned_in(site.state)
    assert not ready("vm1")
    site.state.pin_host_key("vm1", KEY, "vm step")
    assert ready("vm1") and not ready("vm2")


def test_the_bmc_poller_skips_guests_without_an_error(site):
    site.state.set_node_state("node1", "active")
    site.state.ensure_node("vm1")
    asked: list[str] = []

    class Bmc:
        def __init__(self, host):
            asked.append(host.name)

        def power_status(self, timeout=None):
            return "on"

        def close(self):
            pass

    watch = PowerWatch(lambda: site.inventory, site.state, interval=1.0, timeout=0.5,
                       bmc_for=lambda h, timeout: Bmc(h), clock=lambda: 1_000.0)
    try:
        assert watch.poll_once() == []
    finally:
        watch.stop()
    assert asked == ["node1"]
    assert set(watch.cache.snapshot()) == {"node1"}
    assert site.state.list_incidents() == []

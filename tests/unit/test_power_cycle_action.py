"""The power_cycle remediation without a BMC or SSH: the driver and the SSH probe are fakes,
the run and the state store are real (a site on tmp_path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import orchestrate.power_remedy as power_remedy
import provision.drivers
import provision.power_step
import provision.sshcheck
from inventory.errors import BmcError
from inventory.site import Site
from orchestrate.power_remedy import power_cycle_node
from orchestrate.stop import Stop
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
hosts:
  node1:
    address: 10.0.0.1
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc}}
  web1: {address: 10.0.0.3}
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA" + "A" * 43


class FakeBmc:
    """One node's BMC: its power state is the test's; every call is logged."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.world = world

    def __enter__(self) -> FakeBmc:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def power_status(self, timeout: float | None = None) -> str:
        if self.world["silent"]:
            raise BmcError("node1 (BMC 127.0.0.1:6230): no answer within 2 s")
        self.world["calls"].append("status")
        return self.world["power"]

    def power_on(self, timeout: float | None = None) -> None:
        self.world["calls"].append("on")
        self.world["power"] = "on"

    def power_cycle(self, timeout: float | None = None) -> None:
        self.world["calls"].append("cycle")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    world: dict[str, Any] = {"power": "off", "silent": False, "calls": [], "ssh": True,
                             "probes": 0}

    def probe(address: str, pinned: str, *, port: int = 22, timeout: float = 3.0):
        world["probes"] += 1
        world.get("on_probe", lambda: None)()
        assert (address, pinned, port) == ("10.0.0.1", KEY, 22)
        up = world["ssh"] and world["power"] == "on"
        return (True, "") if up else (False, "no SSH at 10.0.0.1:22: No route to host")

    for module in (provision.power_step, provision.drivers):
        monkeypatch.setattr(module, "driver_for", lambda host, **kw: FakeBmc(world))
    monkeypatch.setattr(provision.sshcheck, "ssh_answers_with", probe)
    monkeypatch.setattr(power_remedy, "PROBE_INTERVAL", 0.01)
    s = Site.open(write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw\n"))
    s.state.set_node_state("node1", "active")
    s.state.pin_host_key("node1", KEY, "test")
    s.world = world  # type: ignore[attr-defined]
    yield s
    s.close()


def test_an_off_node_is_powered_on_by_a_remediation_run_and_verified(site):
    ok, message, uid = power_cycle_node(site, "node1", timeout=10)
    assert ok, message
    assert message.startswith("powered on (it was off); active, SSH answered")
    assert site.world["calls"] == ["status", "on"]
    run = site.state.get_run(uid)
    assert (run["kind"], run["status"]) == ("remediation", "ok")
    [entry] = site.state.journal_entries(run_uid=uid)
    assert (entry.host, entry.status) == ("node1", "changed")
    assert entry.step.endswith("power_cycle: power on"), entry.step
    assert site.state.list_leases() == []          # the run released the node


def test_a_hung_node_that_is_on_is_cycled(site):
    site.world["power"] = "on"
    ok, message, _uid = power_cycle_node(site, "node1", 10, None)   # positional form too
    assert ok and message.startswith("power-cycled (it was on)"), message
    assert site.world["calls"] == ["status", "cycle"]


def test_a_node_that_does_not_come_back_fails_at_the_timeout_naming_why(site):
    site.world["ssh"] = False
    ok, message, uid = power_cycle_node(site, "node1", timeout=0.3)
    assert not ok and uid is not None
    assert "powered on (it was off), but it did not come back within the timeout" in message
    assert "No route to host" in message
    assert site.world["probes"] >= 2


def test_ssh_alone_is_not_enough_the_node_must_be_active(site):
    site.state.set_node_state("node1", "maintenance")
    ok, message, _ = power_cycle_node(site, "node1", timeout=0.3)
    assert not ok and "SSH answers but the node is maintenance, not active" in message


def test_a_silent_bmc_starts_no_run(site):
    site.world["silent"] = True
    runs_before = len(site.state.list_runs())
    ok, message, uid = power_cycle_node(site, "node1", timeout=10)
    assert (ok, uid) == (False, None)
    assert message.startswith("cannot read the power state: node1 (BMC 127.0.0.1:6230)")
    assert len(site.state.list_runs()) == runs_before


@pytest.mark.parametrize(("host", "state", "why"), [
    ("web1", None, "web1 has no BMC in the inventory: cannot power-cycle it"),
    ("ghost", None, "ghost is not in the inventory"),
    ("node1", "installing", "node1 is installing: the provisioner owns its power now"),
])
def test_nodes_it_must_not_touch_are_refused_before_any_bmc_call(site, host, state, why):
    if state:
        site.state.set_node_state(host, state)
    ok, message, uid = power_cycle_node(site, host, timeout=10)
    assert (ok, message, uid) == (False, why, None)
    assert site.world["calls"] == []


def test_a_stop_request_ends_the_wait_and_one_before_starts_no_bmc_action(site):
    site.world["ssh"] = False
    stop = Stop()
    site.world["on_probe"] = lambda: stop.request("serve stopping")
    ok, message, _ = power_cycle_node(site, "node1", timeout=10, stop=stop)
    assert not ok and "stopped while waiting for it" in message, message
    assert site.world["probes"] == 1
    site.world.update(power="off", calls=[])
    ok, message, _ = power_cycle_node(site, "node1", timeout=10, stop=stop)
    assert (ok, message) == (False, "power on did not run (interrupted)")
    assert site.world["calls"] == ["status"]


def test_if_on_leave_does_not_cycle_a_node_that_is_on_again_and_only_verifies_it(site):
    site.world["power"] = "on"      # reported off, powered on by someone before we act
    runs_before = len(site.state.list_runs())
    ok, message, uid = power_cycle_node(site, "node1", timeout=10, if_on="leave")
    assert ok and message.startswith("not cycled (it is on again); active, SSH answered"), \
        message
    assert uid is None and site.world["calls"] == ["status"]
    assert len(site.state.list_runs()) == runs_before
    site.world.update(power="off", calls=[])        # still off: powered on as always
    ok, message, uid = power_cycle_node(site, "node1", timeout=10, if_on="leave")
    assert ok and message.startswith("powered on (it was off)") and uid is not None
    assert site.world["calls"] == ["status", "on"]


def test_an_unknown_if_on_is_refused_before_any_bmc_call(site):
    ok, message, uid = power_cycle_node(site, "node1", timeout=10, if_on="reboot")
    assert (ok, uid) == (False, None) and "if_on must be one of cycle, leave" in message
    assert site.world["calls"] == []

"""A dead guest is healed by starting it again on its hypervisor: the shipped vm-down rule
takes VmDown (by its ``hypervisor`` label) and no machine's rule does; ``restart_vm`` is an
ordinary journaled remediation run of the ``vm`` step for that one guest on its hypervisor
(here a registered test kind: no process is started), verified by the guest answering SSH
with its pinned key, escalating down the ladder when it does not heal."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import orchestrate.remediation
import provision.sshcheck
from configure.ssh import CommandResult
from configure.virsh_power import VmPowerStep
from inventory.contracts import StepOutcome
from inventory.site import Site
from inventory.state.incidents import IncidentInput
from monitor.actions import ActionCall, Actions, Verifiers
from monitor.engine import Remediator
from monitor.rules import SHIPPED_RULES, load_rules, parse_rules
from orchestrate.remediation import OrchestrateActions, register
from orchestrate.runs import start_run
from orchestrate.steps import StepRegistry
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
hosts:
  node1:
    address: 10.98.0.11
    bmc: {address: 127.0.0.1, port: 19911, username: admin, password: {secret: bmc}}
  vm1:
    vm: {hypervisor: node1, image: lab-guest, mac: "52:54:00:98:00:31",
         network: {address: 10.98.0.31/24}}
  vm2:
    vm: {hypervisor: node1, image: lab-guest, mac: "52:54:00:98:00:32",
         network: {address: 10.98.0.32/24}, state: stopped}
"""
GUEST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB" + "B" * 43
VM_DOWN = {"alertname": "VmDown", "host": "vm1", "hypervisor": "node1", "kind": "vm",
           "severity": "critical"}


@dataclass(frozen=True)
class VmArgs:
    guests: tuple[str, ...] | None
    replace: bool = False


class FakeVmStep:
    """The vm step's contract (args ``{guests: [...], replace: bool}``; data ``{"vm":
    ...}``): starts the listed guests' domains in the test's world."""

    name = "vm"
    description = "test stand-in for configure's vm step"

    def __init__(self, world: dict[str, Any]) -> None:
        self.world = world

    def parse(self, raw: Any) -> VmArgs:
        if not isinstance(raw, dict) or set(raw) - {"guests", "replace"}:
            raise ValueError("expected {guests: [...], replace: bool}")
        return VmArgs(tuple(raw["guests"]) if "guests" in raw else None,
                      bool(raw.get("replace", False)))

    def run(self, ctx, args: VmArgs) -> StepOutcome:
        self.world["vm_steps"].append((ctx.host, args))
        started = []
        for g in args.guests or ():
            if self.world["domains"].get(g) != "running" and self.world["starts"]:
                self.world["domains"][g] = "running"
                started.append(g)
        if self.world["domains"].get("vm1") == "hung":
            return StepOutcome("ok", "vm1 is running", data={"vm": {"vm1": "running"}})
        return StepOutcome("changed" if started else "ok",
                           f"started {', '.join(started)}" if started else "vm1 is running",
                           data={"vm": {g: "started" for g in started}})


class Hypervisor:
    def __init__(self, world: dict[str, Any]) -> None:
        self.world = world

    def run(self, argv, *, timeout=30.0, become=False, **_kw) -> CommandResult:
        self.world["virsh"].append(argv[4])
        self.world["domains"][argv[4]] = "shut off"
        return CommandResult("node1", "sh", 0, "powered off\n", "", 0.01)

    def close(self) -> None:
        pass


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    w: dict[str, Any] = {"domains": {"vm1": "shut off"}, "vm_steps": [], "virsh": [],
                         "starts": True, "probes": [], "hypervisor_down": 0}

    def probe(address: str, pinned: str, *, port: int = 22, timeout: float = 3.0):
        w["probes"].append((address, pinned))
        if address == "10.98.0.11":                  # the hypervisor
            w["hypervisor_down"] -= 1
            return (w["hypervisor_down"] < 0, "no route to host")
        up = w["domains"]["vm1"] == "running"
        return (True, "") if up else (False, f"no SSH at {address}:22: timed out")

    monkeypatch.setattr(provision.sshcheck, "ssh_answers_with", probe)
    monkeypatch.setattr(orchestrate.remediation, "HYPERVISOR_PROBE_INTERVAL", 0.01)
    site = Site.open(write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw\n"))
    site.state.set_node_state("node1", "active")
    site.state.pin_host_key("vm1", GUEST_KEY, "test")
    registry = StepRegistry()
    registry.register(FakeVmStep(w))
    registry.register(VmPowerStep())
    w["site"] = site
    w["impl"] = OrchestrateActions(
        site, registry=registry,
        run=functools.partial(start_run, connect=lambda host: Hypervisor(w)))
    yield w
    site.close()


def _call(target: str = "vm1", **args: Any) -> ActionCall:
    return ActionCall(target=target, args=args, incident_id=3, timeout=30)


# -- matching ----------------------------------------------------------------------------------

def test_the_shipped_rules_send_a_dead_guest_to_restart_vm_and_a_dead_machine_to_power():
    rules = load_rules(SHIPPED_RULES)
    vm = rules.match(VM_DOWN)
    assert vm.name == "vm-down"
    assert [(s.action, dict(s.args), s.verify.kind) for s in vm.steps] == [
        ("restart_vm", {}, "host_ssh"), ("restart_vm", {"reset": True}, "host_ssh")]
    assert rules.match({"alertname": "VmDown", "host": "vm1"}) is None   # no hypervisor
    exporter = rules.match({"alertname": "ExporterDown", "job": "node", "instance": "vm1",
                            "kind": "vm", "hypervisor": "node1"})
    assert exporter.name == "guest-exporter-down"
    assert [(s.action, dict(s.args), s.verify.kind) for s in exporter.steps] == [
        ("restart_service", {"service": "prometheus-node-exporter"}, "prometheus"),
        ("restart_vm", {"reset": True}, "prometheus")]
    assert rules.match({"alertname": "ExporterDown", "job": "node",
                        "instance": "web1"}).name == "exporter-down"
    node = rules.match({"alertname": "HostDown", "host": "node1"})
    assert node.name == "host-down" and node.steps[0].action == "power_cycle"
    # nothing that goes through a BMC takes a guest's alert, whatever else it carries
    for rule in rules.rules:
        if any(s.action in ("power_cycle", "reprovision") for s in rule.steps):
            assert not rule.fits(VM_DOWN)
        if any(s.action == "restart_vm" for s in rule.steps):
            assert not rule.fits({"alertname": "HostDown", "host": "node1"})
            assert not rule.fits({"alertname": "NodePoweredOff", "host": "node1"})


def test_power_cycle_refuses_a_guest_and_restart_vm_a_machine(world):
    impl = world["impl"]
    cycled = impl.power_cycle(_call("vm1"))
    assert not cycled.ok and "vm1 is a guest on node1: it has no BMC" in cycled.message
    started = impl.restart_vm(_call("node1"))
    assert not started.ok and "node1 is not a guest" in started.message
    stopped = impl.restart_vm(_call("vm2"))
    assert not stopped.ok and "vm2: the inventory wants it stopped" in stopped.message
    for target in ("all", "vm*", "nosuch"):
        assert "not a host of the inventory" in impl.restart_vm(_call(target)).message
    assert world["vm_steps"] == [] and world["site"].state.list_runs() == []


# -- the action's run --------------------------------------------------------------------------

def test_restart_vm_is_a_journaled_remediation_run_of_the_vm_step_on_the_hypervisor(world):
    site = world["site"]
    result = world["impl"].restart_vm(_call())
    assert result.ok, result.message
    assert result.message.startswith("vm1 on node1: changed: started vm1")
    assert world["vm_steps"] == [("node1", VmArgs(("vm1",)))] and world["virsh"] == []
    run = site.state.get_run(result.run_uid)
    assert run["kind"] == "remediation" and run["status"] == "ok"
    assert [(e.host, e.step, e.status) for e in site.state.journal_entries(result.run_uid)] \
        == [("node1", "vm / start vm1", "changed")]
    assert site.state.list_leases() == []           # the hypervisor's, taken and given back
    assert (site.runs_dir / f"{result.run_uid}.jsonl").is_file()


def test_reset_stops_the_domain_hard_through_libvirt_then_starts_it(world):
    world["domains"]["vm1"] = "hung"
    result = world["impl"].restart_vm(_call(reset=True))
    assert result.ok, result.message
    assert world["virsh"] == ["vm1"] and world["domains"]["vm1"] == "running"
    steps = [e.step for e in world["site"].state.journal_entries(result.run_uid)]
    assert steps == ["vm_power / stop vm1 hard", "vm / start vm1"]
    assert not world["impl"].restart_vm(_call(reset="maybe")).ok


HV_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID" + "D" * 43


def test_a_hypervisor_that_does_not_answer_is_waited_for_within_the_timeout(world):
    site = world["site"]
    site.state.pin_host_key("node1", HV_KEY, "test")
    world["hypervisor_down"] = 3                     # back after its own incident's cycle
    result = world["impl"].restart_vm(_call())
    assert result.ok, result.message
    assert [p for p in world["probes"] if p[0] == "10.98.0.11"] == [("10.98.0.11", HV_KEY)] * 4
    world["hypervisor_down"] = 10 ** 6               # it does not come back
    world["vm_steps"].clear()
    call = ActionCall(target="vm1", args={}, incident_id=3, timeout=0.2)
    failed = world["impl"].restart_vm(call)
    assert not failed.ok and world["vm_steps"] == []
    assert failed.message == "vm1: its hypervisor node1 does not answer SSH (no route to host)"


def test_without_the_vm_step_kind_restart_vm_fails_cleanly(world):
    impl = OrchestrateActions(world["site"], registry=StepRegistry())
    result = impl.restart_vm(_call())
    assert not result.ok and "vm step kind is not in this version" in result.message


def test_restart_vm_is_registered_and_the_shipped_rules_load_with_the_registered_names(world):
    actions, verifiers = Actions(), Verifiers()
    register(actions, verifiers, world["impl"])
    assert "restart_vm" in actions.names()
    rules = load_rules(SHIPPED_RULES, actions=actions.names(), verifiers=verifiers.names())
    assert rules.rule("vm-down") is not None


# -- the engine, end to end ---------------------------------------------------------------------

def _engine(world: dict[str, Any], text: str) -> tuple[Remediator, Any]:
    actions, verifiers = Actions(), Verifiers()
    register(actions, verifiers, world["impl"])
    rules = parse_rules(yaml.safe_load(text), "remediation.yml", actions=actions.names(),
                        verifiers=verifiers.names())
    return Remediator(world["site"].state, rules, actions, verifiers), world["site"].state


def _incident(store) -> int:
    alert = IncidentInput("fp-vm1", "2026-12-01T19:00:00Z", "firing", "VmDown", "vm1",
                          dict(VM_DOWN))
    return store.ingest([alert], "alertmanager")[0].incident_id


def test_a_killed_guest_is_healed_by_restart_vm_verified_with_its_pinned_key(world):
    eng, store = _engine(world, SHIPPED_RULES.read_text(encoding="utf-8"))
    inc = _incident(store)
    eng.process(inc)
    assert store.incident(inc).state == "healed", store.incident_timeline(inc)
    [act] = store.actions(incident_id=inc)
    assert (act.action, act.target, act.outcome) == ("restart_vm", "vm1", "ok")
    assert world["probes"][-1] == ("10.98.0.31", GUEST_KEY)
    kinds = [e["kind"] for e in store.incident_timeline(inc)]
    assert kinds[-1] == "healed" and "verified" in kinds


def test_a_guest_that_stays_down_goes_down_the_ladder_and_escalates(world):
    world["starts"] = False                          # its domain never comes up
    text = SHIPPED_RULES.read_text(encoding="utf-8").replace("host_ssh, timeout: 300",
                                                             "host_ssh, timeout: 0.3")
    eng, store = _engine(world, text)
    inc = _incident(store)
    eng.process(inc)
    assert store.incident(inc).state == "escalated", store.incident_timeline(inc)
    acts = store.actions(incident_id=inc)
    assert [(a.action, a.step) for a in acts] == [("restart_vm", 0), ("restart_vm", 1)]
    assert world["virsh"] == ["vm1"]                 # the second rung's hard stop

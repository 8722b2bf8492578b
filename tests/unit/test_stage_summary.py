"""The summary a run ends with, per stage (play): time, host outcomes, and the chain's facts
from the steps' outcome data — nodes active, roles applied, VMs running, targets up."""

from __future__ import annotations

from typing import Any

import pytest

from inventory.contracts import StepOutcome
from orchestrate.reports import HostReport, PlayRun, RunReport, StepReport
from orchestrate.stage_summary import (
    chain_line,
    chain_totals,
    facts_text,
    stage_rows,
    stage_summary,
    summary_doc,
)

pytestmark = pytest.mark.unit


def step(play: str, status: str, **data: Any) -> StepReport:
    return StepReport(play, "s", StepOutcome(status, data=data), 1, 0.1)


def node(state: str) -> dict[str, Any]:
    return {"node": "n", "state": state, "reason": "", "seconds": 1.0, "timings": {},
            "error": ""}


def applied(*roles: str) -> list[dict[str, Any]]:
    out = [{"role": r, "resource": "package:x", "status": "ok", "handler": None}
           for r in roles]
    out.append({"role": roles[0], "resource": "restart", "status": "changed",
                "handler": "restart x"})
    return out


def chain_report() -> RunReport:
    r = RunReport(uid="r1")
    r.plays = [PlayRun(0, "provision", ["node1", "node2"], 42.04),
               PlayRun(1, "configure", ["node1", "fleet01"], 80.0),
               PlayRun(2, "vms", ["node1"], 30.0),
               PlayRun(3, "monitor", ["node1", "fleet01", "vm1"], 3.0)]
    hosts: dict[str, list[StepReport]] = {
        "node1": [step("provision", "changed", node=node("active")),
                  step("configure", "changed", results=applied("base", "hypervisor")),
                  step("vms", "changed", vm={"name": "vm1", "state": "running"}),
                  step("vms", "ok", vm=[{"name": "vm2", "state": "running"},
                                        {"name": "vm3", "state": "shut off"}]),
                  step("vms", "ok", vm={"name": "vm2", "state": "shut off"}),
                  step("monitor", "ok", targets_up=1, targets=1)],
        "node2": [step("provision", "failed", node=node("provision_failed"))],
        "fleet01": [step("configure", "ok", results=applied("base")),
                    step("monitor", "failed", targets_up=0, targets=1)],
        "vm1": [step("monitor", "skipped", targets_up=0, targets=0)],
    }
    for h, steps in hosts.items():
        rep = r.hosts.setdefault(h, HostReport(h))
        for s in steps:
            rep.add(s)
    return r


def test_each_play_is_a_stage_with_its_time_hosts_and_facts():
    stages = stage_summary(chain_report())
    assert [(s.play, s.seconds) for s in stages] == [
        ("provision", 42.04), ("configure", 80.0), ("vms", 30.0), ("monitor", 3.0)]
    assert stages[0].hosts == {"changed": 1, "failed": 1}
    assert stages[0].facts.to_json() == {"nodes_active": 1, "nodes": 2}
    assert stages[1].hosts == {"ok": 1, "changed": 1}
    assert stages[1].facts.to_json() == {"roles_applied": {"base": 2, "hypervisor": 1},
                                         "hosts_configured": 2}
    # guests counted by name, each with its last reported state
    assert stages[2].facts.to_json() == {"vms_running": 1, "vms": 3}
    assert stages[3].hosts == {"ok": 1, "failed": 1, "skipped": 1}
    assert stages[3].facts.to_json() == {"targets_up": 1, "targets": 2}


def test_hosts_selected_but_never_run_in_a_play_are_not_run():
    r = RunReport(uid="r2")
    r.plays = [PlayRun(0, "p", ["a", "b"], 1.0)]
    r.hosts["a"] = HostReport("a")
    r.hosts["a"].add(step("p", "ok"))
    [stage] = stage_summary(r)
    assert stage.hosts == {"ok": 1, "not_run": 1} and stage.facts.to_json() == {}


def test_totals_json_and_lines():
    report = chain_report()
    totals = chain_totals(stage_summary(report))
    assert totals == {"nodes_active": 1, "nodes": 2, "roles_applied": {"base": 2,
                                                                        "hypervisor": 1},
                      "hosts_configured": 2, "vms_running": 1, "vms": 3,
                      "targets_up": 1, "targets": 2, "seconds": 155.0}
    doc = summary_doc(report)
    assert doc["stages"][0] == {"index": 0, "play": "provision", "seconds": 42.0,
                                "hosts": {"changed": 1, "failed": 1},
                                "facts": {"nodes_active": 1, "nodes": 2}}
    assert doc["chain"] == totals
    assert facts_text(totals) == ("1 of 2 nodes active; 2 hosts configured (roles applied: "
                                  "base 2, hypervisor 1); 1 of 3 VMs running; 1 of 2 targets up")
    rows = stage_rows(stage_summary(report))
    assert rows[0] == [1, "provision", "42.0", "2 hosts: 1 changed, 1 failed",
                       "1 of 2 nodes active"]
    assert chain_line(stage_summary(report)).endswith(" in 155.0 s")


def test_a_run_without_chain_steps_has_no_chain_line():
    r = RunReport(uid="r3")
    r.plays = [PlayRun(0, "p", ["a"], 1.0)]
    r.hosts["a"] = HostReport("a")
    r.hosts["a"].add(step("p", "changed"))
    assert chain_line(stage_summary(r)) is None
    assert stage_rows(stage_summary(r)) == [[1, "p", "1.0", "1 host: 1 changed", "-"]]


def test_the_vm_steps_list_of_every_guest_is_counted():
    r = RunReport(uid="r3")
    r.plays = [PlayRun(0, "vms", ["node1"], 5.0)]
    r.hosts["node1"] = HostReport("node1")
    r.hosts["node1"].add(step("vms", "changed",
                              vms=[{"name": "vm1", "state": "running"},
                                   {"name": "vm2", "state": "stopped"}]))
    [stage] = stage_summary(r)
    assert stage.facts.to_json() == {"vms_running": 1, "vms": 2}

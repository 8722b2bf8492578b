"""The remediation engine with fake actions and verifiers over a real state store (a file on
tmp_path; no process, no socket): the ladder, pickup after a crash, the guards under a storm,
the kill switch, flap stop, dry run, and one action for many deliveries."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace

import pytest
import yaml

from inventory.state import StateStore
from inventory.state.incidents import IncidentInput, Ingested
from monitor.actions import ActionCall, ActionResult, Actions, Verifiers, VerifyResult
from monitor.engine import Remediator
from monitor.guards import Policy
from monitor.rules import Pager, Rule, RuleSet, RuleStep, Verification, parse_rules
from tests.waiting import wait_for

pytestmark = pytest.mark.unit

LADDER = """
rules:
  - name: unit-failed
    match: {alertname: SystemdUnitFailed}
    steps:
      - action: restart_service
        args: {service: "{{ labels.unit }}"}
        verify: {kind: service_active, timeout: 0.1}
      - action: apply_role
        args: {role: "{{ labels.role | 'node_exporter' }}"}
        verify: {kind: service_active, args: {service: "{{ labels.unit }}"}, timeout: 0.1}
"""


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "s.db")
    yield s
    s.close()


class Fleet:
    """Fake hosts: actions fix what the test says they fix; verifiers read it back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.healthy: set[str] = set()
        self.fixes: dict[str, str] = {}       # action -> "heals" or ""
        self.calls: list[tuple[str, str, dict]] = []
        self.running = 0
        self.max_running = 0
        self.running_by_group: Counter[str] = Counter()
        self.max_by_group: Counter[str] = Counter()
        self.groups: dict[str, str] = {}
        self.hold = threading.Event()
        self.hold.set()
        # Hold each action until this many run (or a moment passed): pushes the engine to
        # its caps on every round, since a cap never approached would prove nothing.
        self.crowd = 0
        self.crowded = threading.Condition(self.lock)
        self.started = threading.Event()

    def action(self, name: str):
        def run(call: ActionCall) -> ActionResult:
            group = self.groups.get(call.target, "")
            with self.lock:
                self.calls.append((name, call.target, dict(call.args)))
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                self.running_by_group[group] += 1
                self.max_by_group[group] = max(self.max_by_group[group],
                                               self.running_by_group[group])
                self.crowded.notify_all()
                if self.crowd:
                    self.crowded.wait_for(lambda: self.running >= self.crowd, timeout=0.2)
            self.started.set()
            try:
                self.hold.wait(5)
                if self.fixes.get(name) == "heals":
                    with self.lock:
                        self.healthy.add(call.target)
                return ActionResult(True, f"{name} done", run_uid=f"run-{len(self.calls)}")
            finally:
                with self.lock:
                    self.running -= 1
                    self.running_by_group[group] -= 1
        return run

    def registries(self) -> tuple[Actions, Verifiers]:
        actions = Actions()
        for name in ("restart_service", "apply_role", "power_cycle", "reprovision"):
            actions.register(name, self.action(name))
        verifiers = Verifiers()
        verifiers.register("service_active", lambda call: VerifyResult(
            call.target in self.healthy, "active" if call.target in self.healthy
            else "inactive"))
        return actions, verifiers


def _rules(text: str = LADDER, **policy) -> RuleSet:
    rules = parse_rules(yaml.safe_load(text), "rules.yml")
    return RuleSet(policy=Policy(**{"cooldown": 0, **policy}), rules=rules.rules,
                   pager=rules.pager)


def _alert(target: str = "web1", n: int = 0, unit: str = "nginx.service") -> IncidentInput:
    return IncidentInput(fingerprint=f"fp-{target}-{n}", starts_at=f"2026-12-01T10:00:{n:02d}Z",
                         status="firing", alertname="SystemdUnitFailed", target=target,
                         labels={"alertname": "SystemdUnitFailed", "instance": target,
                                 "unit": unit})


def _engine(store, fleet, rules=None, **kw) -> Remediator:
    actions, verifiers = fleet.registries()
    return Remediator(store, rules or _rules(), actions, verifiers, **kw)


def _kinds(store, incident_id):
    return [e["kind"] for e in store.incident_timeline(incident_id)]


def test_a_restart_that_heals_ends_healed_with_one_action_and_a_full_timeline(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet)
    seen: list[tuple[str, str]] = []
    eng.observers.append(lambda kind, d: seen.append(
        (kind, d.get("verdict") or d.get("outcome") or d.get("state"))))
    got = store.ingest([_alert()], "alertmanager")
    eng.process(got[0].incident_id)
    inc = store.incident(got[0].incident_id)
    assert inc.state == "healed" and inc.rule == "unit-failed"
    assert seen == [("decision", "act"), ("action", "ok"), ("ended", "healed")]
    assert fleet.calls == [("restart_service", "web1", {"service": "nginx.service"})]
    assert _kinds(store, inc.id) == ["received", "claimed", "decision", "action_started",
                                     "action_finished", "verified", "healed"]
    audit = [a["action"] for a in store.audit_log(target="web1")]
    assert "remediation act" in audit and "remediation healed" in audit
    assert all(a["actor"] == "remediation" for a in store.audit_log(target="web1"))
    [act] = store.actions(incident_id=inc.id)
    assert act.outcome == "ok" and act.run_uid == "run-1"


def test_a_failed_verification_escalates_to_the_next_step_at_once(store):
    fleet = Fleet()
    fleet.fixes["apply_role"] = "heals"    # the restart does not help; the role does
    eng = _engine(store, fleet)
    got = store.ingest([_alert()], "alertmanager")
    t0 = time.monotonic()
    eng.process(got[0].incident_id)
    took = time.monotonic() - t0
    inc = store.incident(got[0].incident_id)
    assert inc.state == "healed"
    assert [c[0] for c in fleet.calls] == ["restart_service", "apply_role"]
    assert fleet.calls[1][2] == {"role": "node_exporter"}
    kinds = _kinds(store, inc.id)
    assert kinds.index("verify_failed") < kinds.index("step_failed") < kinds.index("healed")
    # Only the first step's verification timeout (0.1 s) is waited for; no Alertmanager.
    assert took < 2.0


def test_the_ladder_exhausted_escalates_and_pages(store):
    fleet = Fleet()
    pages = []
    rules = _rules()
    rules = RuleSet(rules.policy, rules.rules, Pager("http://127.0.0.1:1/x"))
    eng = _engine(store, fleet, rules, pages=lambda pager, doc: pages.append(doc))
    got = store.ingest([_alert()], "alertmanager")
    eng.process(got[0].incident_id)
    inc = store.incident(got[0].incident_id)
    assert inc.state == "escalated" and inc.step == 2
    assert len(fleet.calls) == 2
    assert pages and pages[0]["incident"] == inc.id and "paged" in _kinds(store, inc.id)


def test_a_pager_that_fails_is_recorded_and_does_not_crash(store):
    fleet = Fleet()
    rules = _rules()
    rules = RuleSet(rules.policy, rules.rules, Pager("http://127.0.0.1:1/x", timeout=0.5))

    def broken(_pager, _doc):
        raise OSError("connection refused")

    eng = _engine(store, fleet, rules, pages=broken)
    got = store.ingest([_alert()], "alertmanager")
    eng.process(got[0].incident_id)
    assert store.incident(got[0].incident_id).state == "escalated"
    assert "page_failed" in _kinds(store, got[0].incident_id)


def test_alert_values_are_substituted_as_data_never_rendered(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet)
    got = store.ingest([_alert(unit="{{ labels.alertname }}")], "alertmanager")
    eng.process(got[0].incident_id)
    assert fleet.calls[0][2] == {"service": "{{ labels.alertname }}"}


def test_a_missing_label_fails_its_step_and_moves_on(store):
    fleet = Fleet()
    fleet.fixes["apply_role"] = "heals"
    eng = _engine(store, fleet)
    alert = _alert()
    alert = IncidentInput(**{**alert.__dict__, "labels": {"alertname": "SystemdUnitFailed"}})
    got = store.ingest([alert], "alertmanager")
    eng.process(got[0].incident_id)
    inc = store.incident(got[0].incident_id)
    # Neither step can be filled in (step 2's verification names the unit too): nothing runs
    # with a made-up argument, and the incident goes to a human.
    assert fleet.calls == []
    assert inc.state == "escalated"
    failed = [e["detail"]["reason"] for e in store.incident_timeline(inc.id)
              if e["kind"] == "step_failed"]
    assert len(failed) == 2 and "labels.unit" in failed[0]


def test_no_rule_means_unmatched_and_a_resolved_alert_means_nothing_to_do(store):
    fleet = Fleet()
    eng = _engine(store, fleet)
    other = IncidentInput(fingerprint="x", starts_at="t", status="firing", alertname="Other",
                          target="web1", labels={"alertname": "Other"})
    a, b = store.ingest([other, _alert()], "alertmanager")
    store.ingest([IncidentInput(**{**_alert().__dict__, "status": "resolved"})], "alertmanager")
    eng.process(a.incident_id)
    eng.process(b.incident_id)
    assert store.incident(a.incident_id).state == "unmatched"
    assert store.incident(b.incident_id).state == "resolved"
    assert fleet.calls == []


def test_a_rule_that_only_escalates_pages_a_human_and_runs_nothing(store):
    fleet = Fleet()
    pages = []
    text = LADDER + """
  - name: bmc-unreachable
    match: {alertname: BmcUnreachable}
    escalate: the BMC does not answer
"""
    rules = _rules(text)
    rules = RuleSet(rules.policy, rules.rules, Pager("http://127.0.0.1:1/x"))
    eng = _engine(store, fleet, rules, pages=lambda pager, doc: pages.append(doc))
    bmc = IncidentInput(fingerprint="b", starts_at="t", status="firing",
                        alertname="BmcUnreachable", target="node1",
                        labels={"alertname": "BmcUnreachable", "host": "node1"})
    [got] = store.ingest([bmc], "event")
    eng.process(got.incident_id)
    inc = store.incident(got.incident_id)
    assert (inc.state, inc.rule) == ("escalated", "bmc-unreachable")
    assert fleet.calls == [] and store.actions() == []
    assert _kinds(store, inc.id) == ["received", "claimed", "decision", "escalated", "paged"]
    decision = store.incident_timeline(inc.id)[2]["detail"]
    assert (decision["verdict"], decision["guard"]) == ("escalate", "rule")
    assert pages[0]["reason"] == "the BMC does not answer"
    # picked up by a restarted engine while acting: escalated again, still no action
    [again] = store.ingest([IncidentInput(**{**bmc.__dict__, "starts_at": "u"})], "event")
    assert store.update_incident(again.incident_id, event="claimed", state="acting",
                                 rule="bmc-unreachable", step=0, expect=["open"])
    eng2 = _engine(store, fleet, rules, pages=lambda pager, doc: pages.append(doc))
    eng2.pickup()
    eng2.process(again.incident_id)
    assert store.incident(again.incident_id).state == "escalated"
    assert fleet.calls == [] and store.actions() == []


def test_the_kill_switch_means_zero_actions(store):
    fleet = Fleet()
    eng = _engine(store, fleet)
    store.set_remediation_setting("paused", True, actor="alice")
    got = store.ingest([_alert("web1"), _alert("web2")], "alertmanager")
    for g in got:
        eng.process(g.incident_id)
    assert fleet.calls == []
    for g in got:
        inc = store.incident(g.incident_id)
        assert inc.state == "suppressed"
        decision = next(e for e in store.incident_timeline(inc.id) if e["kind"] == "decision")
        assert decision["detail"]["guard"] == "kill_switch"


def test_dry_run_means_zero_actions(store):
    fleet = Fleet()
    eng = _engine(store, fleet, _rules(dry_run=True))
    got = store.ingest([_alert()], "alertmanager")
    eng.process(got[0].incident_id)
    assert fleet.calls == [] and store.incident(got[0].incident_id).state == "dry_run"


def test_a_flapping_target_stops_being_acted_on_after_n_incidents(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    # Incidents here come milliseconds apart: no merging of near-simultaneous ones.
    eng = _engine(store, fleet, _rules(flap_count=3), flap_merge=0)
    states = []
    for n in range(5):
        fleet.healthy.discard("web1")
        got = store.ingest([_alert(n=n)], "alertmanager")
        eng.process(got[0].incident_id)
        states.append(store.incident(got[0].incident_id).state)
    assert states == ["healed", "healed", "escalated", "escalated", "escalated"]
    assert len(fleet.calls) == 2


def test_one_failure_seen_by_both_paths_is_one_action_and_one_flap(store):
    """The pushed event and the Prometheus alert of one unit failure are two incidents a
    moment apart: the second finds the host healed by the first (cooldown, then verified),
    and the two count once for the flap guard."""
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet, _rules(cooldown=60, flap_count=2))
    pushed = store.ingest([_alert(n=1)], "event")
    eng.process(pushed[0].incident_id)
    seen = store.ingest([_alert(n=2)], "alertmanager")
    eng.process(seen[0].incident_id)
    assert store.incident(pushed[0].incident_id).state == "healed"
    second = store.incident(seen[0].incident_id)
    assert second.state == "healed" and len(fleet.calls) == 1
    healed = store.incident_timeline(second.id)[-1]["detail"]
    assert healed["reason"].startswith("already healthy, nothing done")
    # A failure that is really back (the host broken again) is not healed by looking: it
    # waits out the host's cooldown (nothing done yet) ...
    fleet.healthy.discard("web1")
    again = store.ingest([_alert(n=3)], "alertmanager")
    eng.process(again[0].incident_id)
    assert store.incident(again[0].incident_id).state == "acting"
    assert _kinds(store, again[0].incident_id)[-1] == "waiting"
    assert len(fleet.calls) == 1


def _clock(start: float = 1_000_000.0) -> list[float]:
    return [start]


def test_a_fault_within_the_cooldown_is_acted_on_when_the_cooldown_ends(store):
    """A host acted on a moment ago for one fault, broken by another: the cooldown spaces the
    two actions out, it does not drop the second fault."""
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    now = _clock(time.time())
    eng = _engine(store, fleet, _rules(cooldown=60), clock=lambda: now[0])
    first = store.ingest([_alert(n=1)], "event")
    eng.process(first[0].incident_id)
    fleet.healthy.discard("web1")
    now[0] += 45
    other = store.ingest([_alert(n=2, unit="exporter.service")], "alertmanager")
    eng.process(other[0].incident_id)
    inc = store.incident(other[0].incident_id)
    assert inc.state == "acting" and len(fleet.calls) == 1
    waiting = store.incident_timeline(inc.id)[-1]
    assert waiting["kind"] == "waiting" and 14 <= waiting["detail"]["seconds"] <= 16, waiting
    assert waiting["detail"]["verification"] == "inactive"
    # decided again before the cooldown ends (a stray wake-up): it waits again
    now[0] += 5
    eng.process(inc.id)
    assert store.incident(inc.id).state == "acting" and len(fleet.calls) == 1
    now[0] += 11
    eng.process(inc.id)
    assert store.incident(inc.id).state == "healed"
    assert fleet.calls[-1] == ("restart_service", "web1", {"service": "exporter.service"})
    assert len(fleet.calls) == 2


def test_a_cooldown_check_polls_no_longer_than_the_cooldown_lasts(store):
    """In the e2e a guest's VmDown came 23 s after a restart_service on it (its ExporterDown
    came first and failed): the cooldown's verification polled the step's 300 s before the
    incident waited out a cooldown that had long ended. It polls at most what is left."""
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    now = _clock(time.time())
    eng = _engine(store, fleet, _rules(LADDER.replace("timeout: 0.1", "timeout: 30"),
                                       cooldown=60), clock=lambda: now[0])
    eng.process(store.ingest([_alert(n=1)], "event")[0].incident_id)
    fleet.healthy.discard("web1")
    now[0] += 59.95
    other = store.ingest([_alert(n=2, unit="exporter.service")], "alertmanager")[0].incident_id
    t0 = time.monotonic()
    eng.process(other)
    assert time.monotonic() - t0 < 5
    looked = next(e for e in store.incident_timeline(other) if e["kind"] == "verify_failed")
    assert looked["detail"]["after"] == "cooldown" and looked["detail"]["timeout"] < 1
    assert _kinds(store, other)[-1] == "waiting" and len(fleet.calls) == 1


def test_a_cooldown_that_ends_while_it_is_checked_is_not_waited_out_a_second_time(store):
    """The e2e: the check polled to the cooldown's end, and then the action that set it was
    outside the guards' window, so the wait began a whole new cooldown (60 s for nothing)."""
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    now = _clock(time.time())
    actions, verifiers = fleet.registries()
    late = {"on": False}

    def probe(call):                 # time passes while the host is probed
        if late["on"]:
            now[0] += 1.0
        return VerifyResult(call.target in fleet.healthy, "inactive")

    verifiers.register("service_active", probe)
    eng = Remediator(store, _rules(LADDER.replace("timeout: 0.1", "timeout: 30"), cooldown=60),
                     actions, verifiers, clock=lambda: now[0])
    eng.process(store.ingest([_alert(n=1)], "event")[0].incident_id)
    fleet.healthy.discard("web1")
    late["on"] = True
    now[0] += 59.95
    other = store.ingest([_alert(n=2, unit="exporter.service")], "alertmanager")[0].incident_id
    eng.process(other)
    waiting = store.incident_timeline(other)[-1]
    assert waiting["kind"] == "waiting" and waiting["detail"]["seconds"] == 0, waiting
    assert other in eng._wakes and len(fleet.calls) == 1
    eng.process(other)               # its wake-up, at once: the cooldown is over
    assert store.incident(other).state == "healed" and len(fleet.calls) == 2


def test_a_fault_that_resolves_during_its_cooldown_wait_ends_resolved_with_nothing_done(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    now = _clock(time.time())
    eng = _engine(store, fleet, _rules(cooldown=60), clock=lambda: now[0])
    eng.process(store.ingest([_alert(n=1)], "event")[0].incident_id)
    fleet.healthy.discard("web1")
    alert = _alert(n=2, unit="exporter.service")
    other = store.ingest([alert], "alertmanager")[0].incident_id
    eng.process(other)
    assert store.incident(other).state == "acting"
    store.ingest([IncidentInput(alert.fingerprint, alert.starts_at, "resolved",
                                alert.alertname, alert.target, alert.labels)], "alertmanager")
    now[0] += 61
    eng.process(other)
    inc = store.incident(other)
    assert inc.state == "resolved" and len(fleet.calls) == 1
    assert store.incident_timeline(other)[-1]["detail"]["reason"].startswith(
        "its alert resolved while it waited")


def test_a_running_engine_wakes_a_cooldown_wait_on_time_not_at_its_backstop(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet, _rules(cooldown=0.5), backstop=3600)
    eng.start()
    try:
        first = store.ingest([_alert(n=1)], "event")
        eng.on_ingested(first)
        wait_for(lambda: store.incident(first[0].incident_id).state == "healed", 5,
                 "the first fault healed")
        fleet.healthy.discard("web1")
        other = store.ingest([_alert(n=2, unit="exporter.service")], "alertmanager")
        t0 = time.monotonic()
        eng.on_ingested(other)
        wait_for(lambda: store.incident(other[0].incident_id).state == "healed", 5,
                 "the second fault healed after the cooldown")
        assert time.monotonic() - t0 < 3
    finally:
        eng.stop(5)
    assert [c[2]["service"] for c in fleet.calls] == ["nginx.service", "exporter.service"]


def test_an_incident_on_a_host_being_acted_on_waits_for_that_action(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    fleet.hold.clear()
    eng = _engine(store, fleet, _rules(cooldown=60), workers=2)
    eng.start()
    try:
        first = store.ingest([_alert(n=1)], "event")
        eng.on_ingested(first)
        assert fleet.started.wait(5)
        second = store.ingest([_alert(n=2)], "alertmanager")
        eng.on_ingested(second)
        wait_for(lambda: any(e["kind"] == "decision" and e["detail"]["deferred"]
                             for e in store.incident_timeline(second[0].incident_id)),
                 5, "the second incident to wait")
        assert store.incident(second[0].incident_id).state == "acting"
        fleet.hold.set()
        assert eng.wait_idle(5)
    finally:
        fleet.hold.set()
        eng.stop(5)
    assert store.incident(first[0].incident_id).state == "healed"
    assert store.incident(second[0].incident_id).state == "healed"
    assert len(fleet.calls) == 1


def test_disruptive_actions_wait_for_approval_unless_the_rule_allows_them(store):
    fleet = Fleet()
    text = """
rules:
  - name: down
    match: {alertname: HostDown}
    steps: [{action: power_cycle}]
  - name: down-ok
    match: {alertname: NodePoweredOff}
    steps: [{action: power_cycle, allow: true}]
"""
    eng = _engine(store, fleet, _rules(text))
    a = IncidentInput("f1", "t", "firing", "HostDown", "n1", {"alertname": "HostDown"})
    b = IncidentInput("f2", "t", "firing", "NodePoweredOff", "n2",
                      {"alertname": "NodePoweredOff"})
    ga, gb = store.ingest([a, b], "alertmanager")
    eng.process(ga.incident_id)
    eng.process(gb.incident_id)
    assert store.incident(ga.incident_id).state == "escalated"
    assert store.incident(gb.incident_id).state == "healed"   # no verification configured
    assert fleet.calls == [("power_cycle", "n2", {})]


def test_pickup_verifies_an_interrupted_action_first_and_does_not_run_it_again(store):
    fleet = Fleet()
    got = store.ingest([_alert()], "alertmanager")
    inc_id = got[0].incident_id
    # What a process killed mid-action leaves: acting, one action running.
    assert store.update_incident(inc_id, event="claimed", state="acting", rule="unit-failed",
                                 step=0, expect=["open"])
    store.start_action(inc_id, "web1", "restart_service", 0)
    fleet.healthy.add("web1")   # the restart had taken effect before the kill
    eng = _engine(store, fleet)
    eng.start()
    try:
        assert eng.wait_idle(5)
    finally:
        assert eng.stop(5)
    assert store.incident(inc_id).state == "healed"
    assert fleet.calls == []
    [act] = store.actions(incident_id=inc_id)
    assert act.outcome == "interrupted"
    kinds = _kinds(store, inc_id)
    assert kinds.index("picked_up") < kinds.index("verified") < kinds.index("healed")


def test_pickup_runs_an_interrupted_action_once_more_when_it_had_not_taken_effect(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    got = store.ingest([_alert()], "alertmanager")
    inc_id = got[0].incident_id
    store.update_incident(inc_id, event="claimed", state="acting", rule="unit-failed",
                          step=0, expect=["open"])
    store.start_action(inc_id, "web1", "restart_service", 0)
    eng = _engine(store, fleet)
    eng.start()
    try:
        assert eng.wait_idle(5)
    finally:
        assert eng.stop(5)
    assert store.incident(inc_id).state == "healed"
    assert [c[0] for c in fleet.calls] == ["restart_service"]
    assert [a.outcome for a in store.actions(incident_id=inc_id)] == ["interrupted", "ok"]


def test_pickup_after_an_action_that_ended_but_was_not_verified_verifies_it(store):
    fleet = Fleet()
    fleet.fixes["apply_role"] = "heals"
    got = store.ingest([_alert()], "alertmanager")
    inc_id = got[0].incident_id
    # Killed after the restart was recorded ok, before its verification ended.
    store.update_incident(inc_id, event="claimed", state="acting", rule="unit-failed",
                          step=0, expect=["open"])
    aid = store.start_action(inc_id, "web1", "restart_service", 0)
    store.finish_action(aid, "ok")
    eng = _engine(store, fleet)
    eng.start()
    try:
        assert eng.wait_idle(5)
    finally:
        assert eng.stop(5)
    # Not in effect: the restart is not run again (it ran); the ladder goes on to step 2.
    assert [c[0] for c in fleet.calls] == ["apply_role"]
    assert store.incident(inc_id).state == "healed"


def test_an_action_cut_short_twice_is_not_run_a_third_time(store):
    fleet = Fleet()
    fleet.fixes["apply_role"] = "heals"
    got = store.ingest([_alert()], "alertmanager")
    inc_id = got[0].incident_id
    store.update_incident(inc_id, event="claimed", state="acting", rule="unit-failed",
                          step=0, expect=["open"])
    store.finish_action(store.start_action(inc_id, "web1", "restart_service", 0),
                        "interrupted")
    store.start_action(inc_id, "web1", "restart_service", 0)   # the re-run, killed too
    eng = _engine(store, fleet)
    eng.start()
    try:
        assert eng.wait_idle(5)
    finally:
        assert eng.stop(5)
    assert [c[0] for c in fleet.calls] == ["apply_role"]
    assert store.incident(inc_id).state == "healed"


def test_a_second_live_engine_on_the_store_is_refused_a_dead_ones_record_is_taken_over(
        store):
    import os
    import socket

    from monitor.engine import RemediationBusy
    from runtime.pidfile import process_stat

    fleet = Fleet()
    parent = os.getppid()   # a live process that is not this one
    live = {"host": socket.gethostname(), "pid": parent, "start": process_stat(parent).start}
    store.set_remediation_setting("engine", live, actor="test")
    eng = _engine(store, fleet)
    with pytest.raises(RemediationBusy, match=f"pid {parent}"):
        eng.start()
    store.set_remediation_setting("engine", {**live, "start": live["start"] + 1}, actor="t")
    eng.start()   # that pid's process is not the one recorded: gone, its record is stale
    try:
        assert store.remediation_setting("engine")["pid"] == os.getpid()
    finally:
        assert eng.stop(5)
    assert store.remediation_setting("engine") is None   # a clean stop lets the next one in


def test_stop_during_an_action_leaves_it_for_the_next_start(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    fleet.hold.clear()
    eng = _engine(store, fleet)
    eng.start()
    got = store.ingest([_alert()], "alertmanager")
    eng.on_ingested(got)
    assert fleet.started.wait(5)
    stopper = threading.Thread(target=eng.stop, args=(5,))
    stopper.start()
    fleet.hold.set()
    stopper.join(10)
    again = _engine(store, fleet)
    again.start()
    try:
        assert again.wait_idle(5)
    finally:
        again.stop(5)
    assert store.incident(got[0].incident_id).state == "healed"
    assert len(fleet.calls) == 1


def test_one_incident_delivered_100_times_concurrently_is_acted_on_once(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet, workers=8)
    eng.start()
    try:
        results: list[list[Ingested]] = []
        lock = threading.Lock()
        gate = threading.Barrier(100)

        def deliver() -> None:
            gate.wait(5)
            got = store.ingest([_alert()], "alertmanager")
            with lock:
                results.append(got)
            eng.on_ingested(got)

        threads = [threading.Thread(target=deliver) for _ in range(100)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert eng.wait_idle(10)
    finally:
        assert eng.stop(5)
    ids = {r[0].incident_id for r in results}
    assert len(ids) == 1 and sum(r[0].new for r in results) == 1
    assert len(fleet.calls) == 1
    assert store.incident(ids.pop()).state == "healed"
    assert len(store.actions()) == 1


def test_two_engines_on_one_store_never_both_act_on_an_incident(tmp_path):
    """Two controllers sharing a state store (or a worker racing a restarted one): the
    compare-and-set claim lets exactly one of them act."""
    stores = [StateStore.open_file(tmp_path / "shared.db") for _ in range(2)]
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    engines = [_engine(s, fleet, workers=4) for s in stores]
    try:
        got = stores[0].ingest([_alert(f"h{n}", n) for n in range(20)], "alertmanager")
        gate = threading.Barrier(2)

        def run(engine: Remediator) -> None:
            gate.wait(5)
            for g in got:
                engine.process(g.incident_id)

        threads = [threading.Thread(target=run, args=(e,)) for e in engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(c[1] for c in fleet.calls) == sorted(f"h{n}" for n in range(20))
        assert all(stores[0].incident(g.incident_id).state == "healed" for g in got)
    finally:
        for s in stores:
            s.close()


def test_a_storm_respects_the_concurrency_cap_and_the_fleet_cap(store):
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    hosts = [f"h{n:02d}" for n in range(40)]
    fleet.groups = {h: ("a" if i < 20 else "b") for i, h in enumerate(hosts)}
    rules = _rules(max_concurrent=6, fleet_cap=0.2, rate_count=1000, flap_count=100)
    eng = _engine(store, fleet, rules, workers=16,
                  group_sizes_fn=lambda: {"a": 20, "b": 20},
                  groups_of_fn=lambda h: (fleet.groups[h],))
    fleet.crowd = 6
    eng.start()
    try:
        items = [_alert(hosts[i % 40], n=i // 40) for i in range(100)]
        got = store.ingest(items, "alertmanager")
        eng.on_ingested(got)
        assert eng.wait_idle(60)
    finally:
        assert eng.stop(5)
    assert fleet.max_running <= 6
    assert fleet.max_by_group["a"] <= 4 and fleet.max_by_group["b"] <= 4   # 20 % of 20
    states = Counter(store.incident(g.incident_id).state for g in got)
    assert set(states) <= {"healed", "suppressed"}
    assert states["healed"] >= 40    # every host was healed at least once
    assert states["healed"] == len(fleet.calls)
    assert fleet.max_running == 6 and fleet.max_by_group["a"] == 4   # the caps were reached


def test_a_rule_built_by_hand_runs_too(store):
    # Rules are plain data: the engine does not depend on the YAML loader. A rule with no
    # matchers takes every incident.
    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    rule = Rule("r", (), (RuleStep("restart_service", {"service": "x.service"},
                                   verify=Verification("service_active", timeout=0)),))
    eng = _engine(store, fleet, RuleSet(Policy(cooldown=0), (rule,)))
    got = store.ingest([IncidentInput("f", "t", "firing", "Anything", "db1",
                                      {"alertname": "Anything"})], "alertmanager")
    eng.process(got[0].incident_id)
    assert store.incident(got[0].incident_id).state == "healed"
    assert fleet.calls == [("restart_service", "db1", {"service": "x.service"})]


def test_a_host_whose_lease_a_run_holds_waits_for_it_and_a_fault_gone_by_then_ends_resolved(
        store):
    """A site run restarting the exporter looks like ExporterDown from outside: remediation
    does not act while the run holds the host's lease, and when the alert resolved meanwhile
    there is nothing to do."""
    from inventory.state.leases import Owner

    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet)
    run = Owner.this_process("site-run", "metalchain run site.yml")
    assert store.acquire_leases(["web1"], run).acquired == ["web1"]
    alert = _alert(n=1)
    got = store.ingest([alert], "alertmanager")[0].incident_id
    eng.process(got)
    inc = store.incident(got)
    assert inc.state == "acting" and fleet.calls == []
    decision = [e for e in store.incident_timeline(got) if e["kind"] == "decision"][-1]
    assert decision["detail"]["guard"] == "lease" and decision["detail"]["deferred"]
    assert "metalchain run site.yml" in decision["detail"]["reason"]
    # still held: it waits again, and its wait is recorded once
    eng.process(got)
    assert store.incident(got).state == "acting" and fleet.calls == []
    assert [e["kind"] for e in store.incident_timeline(got)].count("decision") == 1
    store.release_leases("site-run")
    store.ingest([IncidentInput(alert.fingerprint, alert.starts_at, "resolved",
                                alert.alertname, alert.target, alert.labels)], "alertmanager")
    eng.process(got)
    assert store.incident(got).state == "resolved" and fleet.calls == []


def test_a_host_whose_lease_is_released_with_the_fault_still_there_is_acted_on(store):
    from inventory.state.leases import Owner

    fleet = Fleet()
    fleet.fixes["restart_service"] = "heals"
    eng = _engine(store, fleet)
    store.acquire_leases(["web1"], Owner.this_process("apply-run", "metalchain apply"))
    got = store.ingest([_alert(n=1)], "alertmanager")[0].incident_id
    eng.process(got)
    assert store.incident(got).state == "acting"
    store.release_leases("apply-run")
    eng.process(got)
    assert store.incident(got).state == "healed" and len(fleet.calls) == 1


def test_a_resolved_alert_stops_the_ladder_before_its_next_step(store):
    """Step 0 acted but its verification failed (a slow host, a short timeout) while the
    alert resolved: the heavier step 1 is not taken."""
    fleet = Fleet()   # restart_service does not heal: the verification fails
    eng = _engine(store, fleet)
    alert = _alert(n=1)
    got = store.ingest([alert], "alertmanager")[0].incident_id

    def resolve_then_run(call):
        store.ingest([IncidentInput(alert.fingerprint, alert.starts_at, "resolved",
                                    alert.alertname, alert.target, alert.labels)],
                     "alertmanager")
        return ActionResult(True, "restarted")

    eng.actions.register("restart_service", resolve_then_run)
    eng.process(got)
    inc = store.incident(got)
    assert inc.state == "resolved" and fleet.calls == []    # apply_role never ran
    last = store.incident_timeline(got)[-1]
    assert "step 1 (apply_role) not taken" in last["detail"]["reason"], last


POWER = """
rules:
  - name: host-down
    match: {alertname: HostDown}
    steps:
      - action: power_cycle
        allow: true
        verify: {kind: service_active, timeout: 30}
"""


def _host_down(target: str = "node1", n: int = 0) -> IncidentInput:
    return IncidentInput(fingerprint=f"hd-{target}-{n}", starts_at=f"2026-12-01T10:01:{n:02d}Z",
                         status="firing", alertname="HostDown", target=target,
                         labels={"alertname": "HostDown", "host": target})


def test_a_machine_that_answers_when_looked_at_is_not_power_cycled(store):
    """HostDown from a host that missed its probes while busy, answering again by the time
    the engine decides: the cycle is not done on a stale signal. The incident waits for the
    alert's resolution, which ends it healed with nothing done."""
    fleet = Fleet()
    fleet.healthy.add("node1")
    eng = _engine(store, fleet, _rules(POWER), look_again_after=600)
    alert = _host_down()
    got = store.ingest([alert], "alertmanager")[0].incident_id
    eng.process(got)
    assert store.incident(got).state == "acting" and fleet.calls == []
    waiting = [e for e in store.incident_timeline(got) if e["kind"] == "waiting"]
    assert len(waiting) == 1 and waiting[0]["detail"]["seconds"] == 600
    assert got in eng._wakes
    # The resolution arrives: the incident is queued at once, not at its wake-up.
    resolved = replace(alert, status="resolved")
    eng.on_ingested(store.ingest([resolved], "alertmanager"))
    assert got not in eng._wakes and eng._queue.count(got) == 1
    eng.process(eng._queue.popleft())
    inc = store.incident(got)
    assert inc.state == "healed" and fleet.calls == [], _kinds(store, got)
    looked = [e for e in store.incident_timeline(got) if e["kind"] == "verified"]
    assert [e["detail"]["after"] for e in looked] == ["before"]
    assert looked[0]["detail"]["attempts"] == 1
    assert "its alert resolved" in store.incident_timeline(got)[-1]["detail"]["reason"]


def test_a_machine_healthy_when_looked_at_and_again_later_is_left_alone(store):
    """Its alert never resolves (Prometheus sees what the engine's probe does not): the
    second look, after look_again_after, decides; the host answers, nothing is done."""
    fleet = Fleet()
    fleet.healthy.add("node1")
    eng = _engine(store, fleet, _rules(POWER), look_again_after=600)
    got = store.ingest([_host_down()], "alertmanager")[0].incident_id
    eng.process(got)
    eng.process(got)                   # its wake-up
    inc = store.incident(got)
    assert inc.state == "healed" and fleet.calls == [], _kinds(store, got)
    looked = [e["detail"]["after"] for e in store.incident_timeline(got)
              if e["kind"] == "verified"]
    assert looked == ["before", "again"]


def test_a_fault_that_becomes_real_after_the_look_is_acted_on(store):
    """The alert was stale when looked at, then the host really went down (its alert, still
    firing, would not be sent again): the second look fails and the step acts."""
    fleet = Fleet()
    fleet.healthy.add("node1")
    fleet.fixes["power_cycle"] = "heals"
    eng = _engine(store, fleet, _rules(POWER), look_again_after=600)
    got = store.ingest([_host_down()], "alertmanager")[0].incident_id
    eng.process(got)
    assert store.incident(got).state == "acting"
    fleet.healthy.discard("node1")     # killed after the look
    eng.process(got)
    inc = store.incident(got)
    assert inc.state == "healed" and [c[0] for c in fleet.calls] == ["power_cycle"]
    after = [(e["kind"], e["detail"].get("after")) for e in store.incident_timeline(got)
             if e["kind"] in ("verified", "verify_failed")]
    assert after[:2] == [("verified", "before"), ("verify_failed", "again")]
    assert after[-1] == ("verified", "action")


def test_without_look_again_a_healthy_look_ends_the_incident_at_once(store):
    fleet = Fleet()
    fleet.healthy.add("node1")
    eng = _engine(store, fleet, _rules(POWER), look_again_after=0)
    got = store.ingest([_host_down()], "alertmanager")[0].incident_id
    eng.process(got)
    assert store.incident(got).state == "healed" and fleet.calls == []


def test_a_machine_that_does_not_answer_is_power_cycled_after_one_look(store):
    fleet = Fleet()
    fleet.fixes["power_cycle"] = "heals"
    eng = _engine(store, fleet, _rules(POWER))
    t0 = time.monotonic()
    got = store.ingest([_host_down()], "alertmanager")[0].incident_id
    eng.process(got)
    assert store.incident(got).state == "healed"
    assert [c[0] for c in fleet.calls] == ["power_cycle"]
    first = next(e for e in store.incident_timeline(got) if e["kind"] == "verify_failed")
    assert first["detail"]["after"] == "before" and first["detail"]["attempts"] == 1
    assert time.monotonic() - t0 < 5     # one probe, not the step's 30 s of polling

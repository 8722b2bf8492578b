"""The state store's incidents: one row per (fingerprint, startsAt) however often and however
concurrently it is delivered, the timeline, actions, event tokens and switches."""

from __future__ import annotations

import threading

import pytest

from inventory.state import StateStore
from inventory.state.incidents import IncidentInput

pytestmark = pytest.mark.unit


def _alert(fp: str = "a1", starts: str = "2026-12-01T10:00:00Z", status: str = "firing",
           target: str = "web1") -> IncidentInput:
    return IncidentInput(fingerprint=fp, starts_at=starts, status=status,
                         alertname="ExporterDown", target=target,
                         labels={"alertname": "ExporterDown", "instance": target})


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "s.db")
    yield s
    s.close()


def test_a_redelivered_alert_is_the_same_incident_and_a_new_startsat_a_new_one(store):
    first = store.ingest([_alert()], "alertmanager")
    again = store.ingest([_alert()], "alertmanager")
    later = store.ingest([_alert(starts="2026-12-01T11:00:00Z")], "alertmanager")
    assert first[0].new and not again[0].new and later[0].new
    assert first[0].incident_id == again[0].incident_id != later[0].incident_id
    inc = store.incident(first[0].incident_id)
    assert inc is not None and inc.deliveries == 2 and inc.state == "open"
    assert [e["kind"] for e in store.incident_timeline(inc.id)] == ["received", "duplicate"]


def test_concurrent_replays_make_one_incident(store):
    results = []

    def deliver() -> None:
        results.extend(store.ingest([_alert()], "alertmanager"))

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.new for r in results) == 1
    assert len({r.incident_id for r in results}) == 1
    assert store.incident(results[0].incident_id).deliveries == 20


def test_resolution_ends_an_open_incident_but_not_one_being_acted_on(store):
    a = store.ingest([_alert("a")], "alertmanager")[0].incident_id
    b = store.ingest([_alert("b")], "alertmanager")[0].incident_id
    assert store.update_incident(b, event="decision", state="acting", expect=("open",))
    res = store.ingest([_alert("a", status="resolved"), _alert("b", status="resolved")],
                       "alertmanager")
    assert [r.resolved for r in res] == [True, True]
    assert store.incident(a).state == "resolved" and store.incident(a).ended_at
    assert store.incident(b).state == "acting" and store.incident(b).alert_status == "resolved"
    assert [i.id for i in store.unfinished_incidents()] == [b]


def test_update_with_expect_is_a_compare_and_set(store):
    i = store.ingest([_alert()], "alertmanager")[0].incident_id
    assert store.update_incident(i, event="decision", state="acting", expect=("open",))
    assert not store.update_incident(i, event="decision", state="acting", expect=("open",))
    with pytest.raises(ValueError):
        store.update_incident(i, event="x", state="nonsense")


def test_actions_are_recorded_with_their_timeline_and_interrupted_on_restart(store):
    i = store.ingest([_alert()], "alertmanager")[0].incident_id
    a1 = store.start_action(i, "web1", "restart_service", 0, groups=("web", "fleet"))
    store.finish_action(a1, "failed", run_uid="r1", detail={"why": "verify failed"})
    a2 = store.start_action(i, "web1", "apply_role", 1)
    running = store.actions(running=True)
    assert [a.id for a in running] == [a2] and running[0].groups == ()
    assert store.actions(incident_id=i)[0].groups == ("web", "fleet")
    assert [a.id for a in store.interrupt_running_actions("controller restarted")] == [a2]
    assert store.actions(running=True) == []
    kinds = [e["kind"] for e in store.incident_timeline(i)]
    assert kinds == ["received", "action_started", "action_finished", "action_started",
                     "action_finished"]


def test_switches_are_kept_and_audited(store):
    assert store.remediation_setting("paused", False) is False
    store.set_remediation_setting("paused", True, "alice")
    assert store.remediation_setting("paused") is True
    assert store.remediation_settings()["paused"]["actor"] == "alice"
    assert store.audit_log("remediation")[0]["action"] == "remediation paused"

"""`metalchain incidents list|show` and `remediation pause|resume|status`: JSON documents, the
timeline with times, the kill switch audited with the operator, alert values printed as data."""

from __future__ import annotations

import json
import re

import pytest

from inventory.site import Site
from inventory.state.incidents import IncidentInput
from orchestrate.forget import operator

pytestmark = pytest.mark.unit

EVIL = "web1\x1b]0;owned\x07\x1b[2J"


@pytest.fixture
def site_dir(tmp_path, run_cli):
    path = tmp_path / "s"
    assert run_cli("init", str(path)).code == 0
    site = Site.open(path)
    try:
        store = site.state
        [got] = store.ingest([IncidentInput(
            fingerprint="f1", starts_at="2026-12-01T10:00:00Z", status="firing",
            alertname="SystemdUnitFailed", target=EVIL,
            labels={"alertname": "SystemdUnitFailed", "unit": "nginx\x1b[31m.service"})],
            "alertmanager")
        store.update_incident(got.incident_id, event="claimed", state="acting",
                              rule="unit-failed", step=0, expect=["open"])
        store.add_incident_event(got.incident_id, "decision", {
            "action": "restart_service", "verdict": "act", "guard": None, "reason": "ok"})
        aid = store.start_action(got.incident_id, EVIL, "restart_service", 0)
        store.finish_action(aid, "ok", run_uid="r1", detail={"message": "done"})
        store.update_incident(got.incident_id, event="healed", state="healed",
                              detail={"reason": "nginx is active"})
    finally:
        site.close()
    return path


def test_list_and_show_as_json(site_dir, run_cli):
    r = run_cli("--site", str(site_dir), "incidents", "list", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["kind"] == "incidents.list" and doc["incidents"][0]["state"] == "healed"
    r = run_cli("--site", str(site_dir), "incidents", "list", "--state", "open", "--json")
    assert json.loads(r.out)["incidents"] == []
    r = run_cli("--site", str(site_dir), "incidents", "show", "1", "--json")
    doc = json.loads(r.out)
    assert doc["kind"] == "incidents.show"
    assert [e["kind"] for e in doc["timeline"]] == [
        "received", "claimed", "decision", "action_started", "action_finished", "healed"]
    assert doc["actions"][0]["run"] == "r1"


def test_human_output_shows_times_and_never_terminal_escapes(site_dir, run_cli):
    r = run_cli("--site", str(site_dir), "incidents", "show", "1")
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "healed" in r.out and "decision" in r.out and "verdict=act" in r.out
    times = re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r.out)
    assert len(times) >= 6   # one per timeline event
    r = run_cli("--site", str(site_dir), "incidents", "list")
    assert "\x1b" not in r.out and "web1?]0;owned?" in r.out


def test_show_of_an_unknown_incident_is_bad_input(site_dir, run_cli):
    r = run_cli("--site", str(site_dir), "incidents", "show", "99")
    assert r.code == 2 and "no incident 99" in r.err


def test_pause_and_resume_are_audited_with_the_operator(site_dir, run_cli):
    r = run_cli("--site", str(site_dir), "remediation", "pause", "--json")
    assert r.code == 0 and json.loads(r.out)["paused"] is True
    r = run_cli("--site", str(site_dir), "remediation", "status", "--json")
    doc = json.loads(r.out)
    assert doc["paused"] is True and doc["paused_by"] == operator()
    assert doc["incidents"] == {"healed": 1} and doc["actions_last_hour"] == {"ok": 1}
    assert "unit-failed" in doc["rules"]["rules"]
    r = run_cli("--site", str(site_dir), "remediation", "resume")
    assert r.code == 0
    site = Site.open(site_dir)
    try:
        audit = [a for a in site.state.audit_log(target="remediation")
                 if a["action"] == "remediation paused"]
        assert [a["detail"]["value"] for a in audit] == [False, True]
        assert {a["actor"] for a in audit} == {operator()}
        assert site.state.remediation_setting("paused") is False
    finally:
        site.close()

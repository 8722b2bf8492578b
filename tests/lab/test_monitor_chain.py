"""The whole chain of issue 11 on one lab (tests/lab/chainsite.py): real Prometheus and two
clustered Alertmanagers (`metalchain monitor up`) -> webhook -> `metalchain serve --no-boot`
(receiver + remediation engine) -> a remediation run on a fleet host -> verified healed; and
the pushed path (the node_exporter role's OnFailure companion -> POST /v1/events -> the same
engine). The site's rules are the shipped ones (cooldown 60 s) with the flap stop out of the
way; the SIGKILL test sets the cooldown to 0 (its host was acted on a minute ago)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.chainsite import (
    AM_URLS,
    EXPORTER,
    HOSTS,
    ChainLab,
    chain_lab,
    http_get,
    notification,
    rules_text,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

FIGURES: dict[str, Any] = {}
RESULTS: dict[str, int] = {}     # test -> the incident it healed (for the CLI test)
VICTIM = """\
[Unit]
Description=metalchain chain test: a service the test kills
[Service]
ExecStart=/bin/sleep infinity
"""
# A unit whose start takes ~3 s and leaves one line per start on the host.
SLOW = """\
[Unit]
Description=metalchain chain test: a slow starter that counts its starts
[Service]
ExecStartPre=/bin/sh -c 'echo start >> /var/lib/mc-slow.starts'
ExecStartPre=/bin/sleep 3
ExecStart=/bin/sleep infinity
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[ChainLab]:
    with chain_lab(tmp_path_factory.mktemp("chain") / "site", FIGURES) as lab:
        try:
            yield lab
        finally:
            print(f"\nmonitor chain figures: {json.dumps(FIGURES)}")
        # Nothing secret in serve's output, whatever happened.
        log = lab.serve.log.read_text(errors="replace")
        assert lab.webhook_token not in log and lab.event_key not in log


def actions_on(lab: ChainLab, host: str) -> list[Any]:
    return [a for a in lab.store.actions(since=0) if a.target == host]


def kinds(lab: ChainLab, incident_id: int) -> list[str]:
    return [e["kind"] for e in lab.store.incident_timeline(incident_id)]


def test_a_killed_service_is_pushed_healed_once_and_the_alert_after_it_does_nothing(lab):
    host, unit = "fleet03", "mc-victim.service"
    lab.install_unit(host, unit, VICTIM, start=True)
    pid = lab.exec_(host, f"systemctl show -P MainPID {unit}")
    assert pid.isdigit() and pid != "0"
    fault = lab.fault(host, f"kill -9 {pid}")
    pushed = lab.wait_incident(lambda i: i.target == host and i.source == "event"
                               and i.labels.get("unit") == unit, 30, "the pushed failure")
    inc = lab.wait_ended(pushed.id, 60)
    assert inc.state == "healed", lab.store.incident_timeline(inc.id)
    FIGURES["pushed"] = lab.breakdown(inc.id, fault)
    acts = lab.store.actions(incident_id=inc.id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "ok")]
    assert lab.exec_(host, f"systemctl is-active {unit}") == "active"
    assert lab.exec_(host, f"systemctl show -P MainPID {unit}") != pid
    # The same failure as Prometheus reports it (Alertmanager's copy, which may also really
    # come, below): a new incident, the host's cooldown, verified healthy: nothing done.
    status, answer = lab.post_alerts(notification(
        host, "SystemdUnitFailed", "chain-b-prom", inc.starts_at, unit=unit, name=unit,
        job="node", state="failed"))
    assert status == 200 and answer["new"] == 1
    late = lab.wait_ended(answer["incidents"][0], 60)
    assert late.state == "healed" and lab.store.actions(incident_id=late.id) == []
    decision = next(e for e in lab.store.incident_timeline(late.id) if e["kind"] == "decision")
    assert decision["detail"]["guard"] == "cooldown"
    # Whatever Prometheus itself sent about this failure ends without an action either.
    for real in lab.incidents(lambda i: i.target == host and i.source == "alertmanager"
                              and i.fingerprint != "chain-b-prom"):
        assert lab.wait_ended(real.id, 60).state in ("healed", "resolved")
    assert len(actions_on(lab, host)) == 1
    FIGURES["pushed_prometheus_alerts_too"] = len(lab.incidents(
        lambda i: i.target == host and i.source == "alertmanager")) - 1


def test_a_stopped_exporter_fires_through_prometheus_and_is_healed_once(lab):
    host = "fleet01"
    fault = lab.fault(host, f"systemctl stop {EXPORTER}")
    found = lab.wait_incident(lambda i: i.target == host and i.alertname == "ExporterDown",
                              30, "ExporterDown from Alertmanager in the store")
    inc = lab.wait_ended(found.id, 60)
    assert inc.state == "healed", lab.store.incident_timeline(inc.id)
    assert inc.source == "alertmanager" and inc.labels["job"] == "node"
    FIGURES["prometheus"] = lab.breakdown(inc.id, fault)
    acts = lab.store.actions(incident_id=inc.id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "ok")]
    assert len(actions_on(lab, host)) == 1
    assert lab.exec_(host, f"systemctl is-active {EXPORTER}") == "active"
    wait_for(lambda: b"node_exporter_build_info" in http_get(
        f"http://{lab.address(host)}:9100/metrics")[1], 30, "the exporter answering")
    # Every delivery came from a real replica, all onto this one incident.
    senders = {e["detail"].get("sender") for e in lab.store.incident_timeline(inc.id)
               if e["kind"] in ("received", "duplicate")}
    assert senders and senders <= set(AM_URLS), senders
    assert len(lab.incidents(lambda i: i.target == host and i.alertname == "ExporterDown"
                             and i.starts_at == inc.starts_at)) == 1
    # Its alert resolves once the exporter answers again; the incident stays healed.
    wait_for(lambda: lab.store.incident(inc.id).alert_status == "resolved", 30,
             "the resolved notification")
    assert lab.store.incident(inc.id).state == "healed"
    RESULTS["prometheus"] = inc.id


def test_incidents_list_and_show_give_the_timeline(lab):
    incident_id = RESULTS.get("prometheus")
    assert incident_id is not None, "needs the Prometheus path's incident"
    r = lab.cli("incidents", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {i["id"]: i for i in json.loads(r.stdout)["incidents"]}
    assert listed[incident_id]["state"] == "healed"
    assert listed[incident_id]["alertname"] == "ExporterDown"
    r = lab.cli("incidents", "show", str(incident_id), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    got = [e["kind"] for e in doc["timeline"]]
    wanted = ["received", "decision", "action_started", "action_finished", "verified",
              "healed"]
    assert [k for k in got if k in wanted][:len(wanted)] == wanted, got
    assert [(a["action"], a["outcome"]) for a in doc["actions"]] == [("restart_service", "ok")]
    r = lab.cli("incidents", "show", str(incident_id))
    assert r.returncode == 0 and "healed" in r.stdout, r.stdout


def test_one_notification_replayed_100_times_and_by_both_replicas_is_one_action(lab):
    host, unit = "fleet02", "mc-victim.service"
    lab.install_unit(host, unit, VICTIM)        # installed, not running
    doc = notification(host, "SystemdUnitFailed", "chain-c-replay", "2026-12-01T17:00:00Z",
                       unit=unit, name=unit, job="node", state="failed")
    answers = lab.post_many([doc] * 100)
    assert [s for s, _a in answers] == [200] * 100
    assert sum(a["new"] for _s, a in answers) == 1
    (incident_id,) = {a["incidents"][0] for _s, a in answers}
    status, again = lab.post_alerts({**doc, "externalURL": AM_URLS[1]})
    assert status == 200 and again["incidents"] == [incident_id] and again["new"] == 0
    inc = lab.wait_ended(incident_id, 60)
    assert inc.state == "healed", lab.store.incident_timeline(incident_id)
    assert inc.deliveries == 101
    senders = [e["detail"]["sender"] for e in lab.store.incident_timeline(incident_id)
               if e["kind"] in ("received", "duplicate")]
    assert len(senders) == 101 and set(senders) == set(AM_URLS)
    acts = lab.store.actions(incident_id=incident_id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "ok")]
    assert len(actions_on(lab, host)) == 1
    assert lab.exec_(host, f"systemctl is-active {unit}") == "active"


def test_serve_killed_during_an_action_ends_healed_with_one_start_on_the_host(lab):
    host, unit = "fleet01", "mc-slow.service"
    # fleet01 was restarted a moment ago (the exporter): no cooldown for this one.
    (lab.root / "playbooks" / "remediation.yml").write_text(rules_text(cooldown=0))
    lab.serve.stop(signal.SIGTERM)
    lab.serve.start()
    lab.install_unit(host, unit, SLOW)
    lab.exec_(host, "rm -f /var/lib/mc-slow.starts")
    status, answer = lab.post_alerts(notification(
        host, "SystemdUnitFailed", "chain-e-kill", "2026-12-01T17:10:00Z", unit=unit,
        name=unit, job="node", state="failed"))
    assert status == 200 and answer["new"] == 1
    incident_id = answer["incidents"][0]
    wait_for(lambda: [a for a in lab.store.actions(running=True)
                      if a.incident_id == incident_id], 30, "the restart running")
    wait_for(lambda: lab.exec_(host, "cat /var/lib/mc-slow.starts 2>/dev/null || true"), 30,
             "the unit's start on the host")
    lab.serve.stop(signal.SIGKILL)
    assert [a for a in lab.store.actions(running=True) if a.incident_id == incident_id], \
        "the action ended before the kill"
    t0 = time.monotonic()
    lab.serve.start()
    inc = lab.wait_ended(incident_id, 60)
    FIGURES["sigkill_restart_to_healed_s"] = round(time.monotonic() - t0, 2)
    got = kinds(lab, incident_id)
    assert inc.state == "healed", got
    acts = lab.store.actions(incident_id=incident_id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "interrupted")]
    assert got.index("picked_up") < got.index("verified") < got.index("healed")
    assert lab.exec_(host, "cat /var/lib/mc-slow.starts").splitlines() == ["start"]
    assert lab.exec_(host, f"systemctl is-active {unit}") == "active"


def test_paused_remediation_acts_on_none_of_a_100_alert_storm(lab):
    before = len(lab.store.actions(since=0))
    r = lab.cli("remediation", "pause", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["paused"] is True, r.stderr
    try:
        docs = [notification(HOSTS[n % 3], "SystemdUnitFailed", f"chain-d-{n:03d}",
                             "2026-12-01T17:20:00Z", unit=f"mc-storm{n}.service",
                             name=f"mc-storm{n}.service", job="node", state="failed")
                for n in range(100)]
        answers = lab.post_many(docs)
        assert [s for s, _a in answers] == [200] * 100, (answers, lab.retried_503)
        print(f"\nstorm: 100 notifications, {lab.retried_503} sent again after a 503 or a "
              "closed connection (the per-client cap)")
        ids = [a["incidents"][0] for _s, a in answers]
        assert len(set(ids)) == 100
        ended = [lab.wait_ended(i, 60) for i in ids]
        assert {i.state for i in ended} == {"suppressed"}
        guards = {e["detail"]["guard"] for i in ids for e in lab.store.incident_timeline(i)
                  if e["kind"] == "decision"}
        assert guards == {"kill_switch"}
        assert len(lab.store.actions(since=0)) == before
    finally:
        r = lab.cli("remediation", "resume", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["paused"] is False, r.stderr
    r = lab.cli("remediation", "status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["paused"] is False

"""Alertmanager delivers at least once: a notification replayed (its retry after a lost answer,
a ``repeat_interval`` resend, the second replica's copy, or an attacker with the token
replaying a captured body) must never make a second remediation. Checked on the receiver's
own path — bytes -> ``parse_notification`` -> ``alert_inputs`` -> ``ingest`` -> the engine —
after the incident healed, after it escalated, and while its action still runs."""

from __future__ import annotations

import json
import threading

import pytest
import yaml

from inventory.state import StateStore
from monitor import webhook
from monitor.actions import ActionCall, ActionResult, Actions, Verifiers, VerifyResult
from monitor.engine import Remediator
from monitor.guards import Policy
from monitor.ingest import alert_inputs
from monitor.rules import RuleSet, parse_rules

pytestmark = pytest.mark.unit

RULES = """
rules:
  - name: unit-failed
    match: {alertname: SystemdUnitFailed}
    steps:
      - action: restart_service
        args: {service: "{{ labels.unit }}"}
        verify: {kind: service_active, timeout: 0.2}
"""


def body(fingerprint: str = "a1b2c3d4e5f60708", starts: str = "2026-12-01T10:00:00.5Z",
         *, group_key: str = '{}:{alertname="SystemdUnitFailed"}', status: str = "firing",
         sender: str = "http://am1:9093") -> bytes:
    alert = {"status": status, "labels": {"alertname": "SystemdUnitFailed", "instance": "web1",
                                          "unit": "nginx.service"},
             "annotations": {"summary": "nginx failed"}, "startsAt": starts,
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/graph",
             "fingerprint": fingerprint}
    return json.dumps({"version": "4", "groupKey": group_key, "truncatedAlerts": 0,
                       "status": status, "receiver": "metalchain", "groupLabels": {},
                       "commonLabels": alert["labels"], "commonAnnotations": {},
                       "externalURL": sender, "alerts": [alert]}).encode()


class Host:
    """A fake host counting restarts; ``heals`` says whether a restart fixes it."""

    def __init__(self, heals: bool = True) -> None:
        self.heals = heals
        self.restarts = 0
        self.healthy = False
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()

    def restart(self, call: ActionCall) -> ActionResult:
        self.restarts += 1
        self.started.set()
        self.hold.wait(5)
        self.healthy = self.heals
        return ActionResult(True, "restarted")

    def registries(self) -> tuple[Actions, Verifiers]:
        actions, verifiers = Actions(), Verifiers()
        actions.register("restart_service", self.restart)
        verifiers.register("service_active", lambda call: VerifyResult(self.healthy, "?"))
        return actions, verifiers


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "s.db")
    yield s
    s.close()


def engine(store, host: Host) -> Remediator:
    parsed = parse_rules(yaml.safe_load(RULES), "rules.yml")
    rules = RuleSet(policy=Policy(cooldown=0), rules=parsed.rules, pager=parsed.pager)
    actions, verifiers = host.registries()
    return Remediator(store, rules, actions, verifiers, pages=lambda *_: None)


def deliver(store, eng: Remediator, raw: bytes):
    got = store.ingest(alert_inputs(webhook.parse_notification(raw)), "alertmanager",
                       received={"client": "127.0.0.1"})
    eng.on_ingested(got)
    return got


@pytest.mark.parametrize("heals, final", [(True, "healed"), (False, "escalated")])
def test_a_replayed_notification_after_the_incident_ended_runs_nothing_again(store, heals,
                                                                             final):
    host = Host(heals=heals)
    eng = engine(store, host)
    eng.start()
    try:
        [first] = deliver(store, eng, body())
        assert eng.wait_idle(10)
        assert store.incident(first.incident_id).state == final
        # The same bytes again, a repeat_interval resend under another group key, and the
        # second replica's copy: the same (fingerprint, startsAt).
        replays = [body(), body(), body(group_key='{}:{unit="nginx.service"}'),
                   body(sender="http://am2:9093")]
        for raw in replays:
            [again] = deliver(store, eng, raw)
            assert (again.incident_id, again.new) == (first.incident_id, False)
        assert eng.wait_idle(10)
    finally:
        assert eng.stop(5)
    assert host.restarts == 1
    assert len(store.actions(incident_id=first.incident_id)) == 1
    inc = store.incident(first.incident_id)
    assert inc.state == final and inc.deliveries == 1 + len(replays)
    # Replays queued together are looked at once: at least one audit row says so.
    assert any(e["action"] == "remediation deduplicated" for e in store.audit_log("web1"))


def test_a_replay_while_the_action_runs_does_not_start_a_second_one(store):
    host = Host()
    host.hold.clear()
    eng = engine(store, host)
    eng.start()
    try:
        [first] = deliver(store, eng, body())
        assert host.started.wait(5)
        for _ in range(20):
            deliver(store, eng, body())
        host.hold.set()
        assert eng.wait_idle(10)
    finally:
        assert eng.stop(5)
    assert host.restarts == 1
    assert store.incident(first.incident_id).state == "healed"


def test_the_same_alert_firing_again_later_is_a_new_incident_and_is_acted_on(store):
    """Deduplication must not swallow a real recurrence: a new startsAt is a new incident."""
    host = Host()
    eng = engine(store, host)
    eng.start()
    try:
        deliver(store, eng, body())
        assert eng.wait_idle(10)
        host.healthy = False
        [later] = deliver(store, eng, body(starts="2026-12-01T11:00:00Z"))
        assert later.new
        assert eng.wait_idle(10)
    finally:
        assert eng.stop(5)
    assert host.restarts == 2


def test_one_instant_spelt_two_ways_is_one_incident(store):
    """A proxy or a second sender may write the same startsAt with an offset instead of Z,
    or with trailing zeros: still (fingerprint, startsAt) of one incident, one action."""
    host = Host()
    eng = engine(store, host)
    eng.start()
    try:
        [first] = deliver(store, eng, body(starts="2026-12-01T10:00:00.5Z"))
        for spelling in ("2026-12-01T10:00:00.500+00:00", "2026-12-01T11:00:00.5+01:00",
                         "2026-12-01t10:00:00.50z"):
            [again] = deliver(store, eng, body(starts=spelling))
            assert (again.incident_id, again.new) == (first.incident_id, False), spelling
        [later] = deliver(store, eng, body(starts="2026-12-01T10:00:01.5Z"))
        assert later.new and later.incident_id != first.incident_id
        assert eng.wait_idle(10)
    finally:
        assert eng.stop(5)
    assert store.incident(first.incident_id).starts_at == "2026-12-01T10:00:00.5Z"


@pytest.mark.parametrize("spelling, canonical", [
    ("2026-12-01T16:20:00.123456789Z", "2026-12-01T16:20:00.123456789Z"),  # Alertmanager's
    ("2026-12-01T16:20:00Z", "2026-12-01T16:20:00Z"),
    ("2026-12-01T16:20:00.000Z", "2026-12-01T16:20:00Z"),
    ("2026-12-01T18:20:00-00:00".replace("-00:00", "+02:00"), "2026-12-01T16:20:00Z"),
    ("2026-12-01 16:20:00.10+00:00", "2026-12-01T16:20:00.1Z"),
])
def test_starts_at_has_one_spelling_per_instant(spelling, canonical):
    assert webhook.canonical_time(spelling, "x") == canonical


@pytest.mark.parametrize("bad", ["2026-12-01", "2026-12-01T16:20:00", "2026-13-01T00:00:00Z",
                                 "0001-01-01T00:00:00+01:00", "2026-12-01T16:20:00.1234567891Z",
                                 "١٢٣٤-12-01T16:20:00Z"])
def test_a_start_that_is_not_an_rfc3339_instant_is_refused(bad):
    with pytest.raises(webhook.WebhookError, match="RFC 3339"):
        webhook.canonical_time(bad, "alerts[0].startsAt")

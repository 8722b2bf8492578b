"""Network input fuzzed over real HTTP (CI size; full size: ``bench/fuzz_net.py``).

The receiver of ``metalchain serve`` (``/v1/alerts``, ``/v1/events``, every other route) and
the boot server's install callbacks, on 127.0.0.1 (ports 20500-20501) with a real state
store, get raw requests from :mod:`tests.netfuzz` — valid bodies, structure-aware mutations
of them, raw bytes, invalid UTF-8, NUL, huge and deeply nested bodies, huge numbers,
duplicated keys, wrong or lying Content-Type/Content-Length, chunked bodies, odd methods and
targets — each on a fresh connection. Property: every request is answered, within the
server's deadline, and never with a 5xx (a 501 for a method the server does not implement
is HTTP's own answer and counted apart); afterwards both servers still serve. The requests
that once escaped are sent as fixed cases too, so the property is checked on them in every
run whatever the generator draws.

A replayed webhook (Alertmanager delivers at least once) runs its remediation once, over
this same HTTP path, with a real engine and a fake action.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from monitor.actions import ActionResult, Actions, Verifiers, VerifyResult
from monitor.engine import Remediator
from monitor.guards import Policy
from monitor.receiver import ALERTS_PATH
from monitor.rules import RuleSet, parse_rules
from tests import netfuzz, netfuzz_servers
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

RECEIVER_PORT, BOOT_PORT = 20500, 20501
EXAMPLES = 250          # per target; bench/fuzz_net.py runs the same for minutes
BUDGET_S = 40.0         # the whole random part stops here whatever is left


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with netfuzz_servers.servers(tmp_path_factory.mktemp("netfuzz"),
                                 receiver_port=RECEIVER_PORT, boot_port=BOOT_PORT) as s:
        yield s


def test_the_requests_that_once_escaped_are_answered_4xx(srv):
    bad = []
    for what, server, request in netfuzz_servers.regression_corpus():
        port = srv.receiver.port if server == "receiver" else srv.boot.port
        got = netfuzz.exchange(port, request, timeout=15)
        if got.status is None or not 400 <= got.status < 500:
            bad.append((what, got))
    assert bad == []


def test_fuzzed_requests_are_always_answered_and_never_with_a_5xx(srv):
    deadline = time.monotonic() + BUDGET_S
    tallies = [netfuzz_servers.run_target(srv, target, examples=EXAMPLES, deadline=deadline)
               for target in netfuzz_servers.targets()]
    report = [t.to_json() for t in tallies]
    print("\nnetfuzz CI size:", json.dumps([{k: r[k] for k in (
        "target", "examples", "failures", "unknown_method_501", "max_latency_s", "answers")}
        for r in report]))
    assert [r["first_failures"] for r in report if r["failures"]] == []
    assert sum(t.examples for t in tallies) >= 200      # the budget left room for a campaign
    # Not only refusals: valid requests were among them and were accepted.
    assert all(t.by_class["2xx"] > 0 for t in tallies[:2]), report
    assert netfuzz_servers.still_serving(srv)


RULES = """
rules:
  - name: unit-failed
    match: {alertname: SystemdUnitFailed}
    steps:
      - action: restart_service
        args: {service: "{{ labels.unit }}"}
        verify: {kind: service_active, timeout: 0.2}
"""


def test_a_webhook_replayed_over_http_remediates_once(srv):
    # The engine also picks up what the fuzzing left open: calls are told apart by incident.
    restarts: list[tuple[int, str]] = []
    actions, verifiers = Actions(), Verifiers()
    actions.register("restart_service", lambda call: restarts.append(
        (call.incident_id, call.args["service"])) or ActionResult(True, ""))
    verifiers.register("service_active", lambda call: VerifyResult(True, ""))
    parsed = parse_rules(yaml.safe_load(RULES), "rules.yml")
    # The fuzzing left incidents in the store, which the engine picks up when it starts: the
    # guards that count across incidents (rate, flap, caps) are opened wide, and this
    # incident has a target of its own, so only deduplication decides here.
    policy = Policy(cooldown=0, rate_count=1_000_000, flap_count=1_000_000,
                    max_concurrent=1000, fleet_cap=1.0)
    engine = Remediator(srv.state, RuleSet(policy=policy, rules=parsed.rules,
                                           pager=parsed.pager),
                        actions, verifiers, pages=lambda *_: None)
    listener = engine.on_ingested
    srv.receiver.ingestor.listeners.append(listener)
    engine.start()
    try:
        alert = {"status": "firing", "fingerprint": "5e1a7ed000000001",
                 "startsAt": "2026-12-01T12:00:00.123Z",
                 "labels": {"alertname": "SystemdUnitFailed", "instance": "replayed:9100",
                            "unit": "nginx.service"}}
        body = json.dumps({"version": "4", "status": "firing", "receiver": "metalchain",
                           "groupKey": "{}:{}", "alerts": [alert]}).encode()
        request = netfuzz.Request("POST", ALERTS_PATH, (
            ("Host", "127.0.0.1"), ("Authorization", f"Bearer {netfuzz_servers.WEBHOOK_TOKEN}"),
            ("Content-Type", "application/json"), ("Content-Length", str(len(body)))), body)
        assert netfuzz.exchange(srv.receiver.port, request).status == 200
        wait_for(lambda: (i := srv.state.list_incidents(limit=1000)) and any(
            x.fingerprint == alert["fingerprint"] and x.state == "healed" for x in i),
            30, "the incident to heal")
        for _ in range(10):    # Alertmanager's retries, resends, the other replica
            assert netfuzz.exchange(srv.receiver.port, request).status == 200
        assert engine.wait_idle(30)
    finally:
        srv.receiver.ingestor.listeners.remove(listener)
        assert engine.stop(5)
    [inc] = [i for i in srv.state.list_incidents(limit=1000)
             if i.fingerprint == alert["fingerprint"]]
    assert [r for r in restarts if r[0] == inc.id] == [(inc.id, "nginx.service")]
    assert inc.state == "healed" and inc.deliveries == 11

"""From a notification to incident inputs (monitor/ingest.py), the commit-then-notify order,
and the per-host event variables apply hands to the node_exporter role
(orchestrate/receiving.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from inventory.errors import StateError
from inventory.secrets import Secret, SecretStore
from inventory.state.incidents import Ingested
from monitor.events import derive_token
from monitor.ingest import Ingestor, alert_inputs, alert_target, call_listeners
from monitor.webhook import parse_notification
from orchestrate.receiving import event_auth, event_vars
from tests.waiting import wait_for

pytestmark = pytest.mark.unit


def notification(*alerts: dict) -> bytes:
    return json.dumps({"version": "4", "status": "firing", "receiver": "remediation",
                       "groupKey": "g", "alerts": list(alerts)}).encode()


def alert(fp: str, **labels: str) -> dict:
    return {"status": "firing", "labels": {"alertname": "SystemdUnitFailed", **labels},
            "annotations": {"summary": "s"}, "startsAt": "2026-12-01T10:00:00Z",
            "endsAt": "", "fingerprint": fp}


@pytest.mark.parametrize(("labels", "target"), [
    ({"host": "fleet01", "instance": "10.0.0.5:9100"}, "fleet01"),
    ({"instance": "fleet02:9100"}, "fleet02"),
    ({"instance": "10.0.0.5:9100"}, "10.0.0.5"),
    ({"instance": "[fd00::5]:9100"}, "fd00::5"),
    ({"instance": "fd00::5"}, "fd00::5"),
    ({"instance": "fleet03"}, "fleet03"),
    ({}, ""),
])
def test_the_target_is_the_host_label_else_the_instance_without_its_port(labels, target):
    assert alert_target(labels) == target


def test_every_alert_of_a_notification_is_one_input_with_its_labels():
    n = parse_notification(notification(alert("a", host="fleet01", name="cron.service"),
                                        alert("b", instance="fleet02:9100")))
    items = alert_inputs(n)
    assert [(i.fingerprint, i.target, i.alertname) for i in items] == [
        ("a", "fleet01", "SystemdUnitFailed"), ("b", "fleet02", "SystemdUnitFailed")]
    assert items[0].labels["name"] == "cron.service" and items[0].annotations == {"summary": "s"}
    assert items[0].starts_at == "2026-12-01T10:00:00Z" and items[0].status == "firing"


class _Store:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def ingest(self, items, source, received=None):
        self.calls.append((len(items), source, received))
        return [Ingested(i + 1, True, False) for i in range(len(items))]


def test_listeners_run_after_the_commit_on_their_own_thread_and_a_failing_one_is_contained():
    store = _Store()
    got: list[tuple[str, list[Ingested]]] = []
    done = threading.Event()

    def broken(_results):
        raise RuntimeError("bug")

    def engine(results):
        got.append((threading.current_thread().name, results))
        done.set()

    ingestor = Ingestor(store, [broken, engine])
    ingestor.start()
    try:
        results = ingestor.commit(alert_inputs(parse_notification(notification(alert("a")))),
                                  "alertmanager", {"client": "127.0.0.1"})
        assert store.calls == [(1, "alertmanager", {"client": "127.0.0.1"})] and not got
        ingestor.notify(results)
        assert done.wait(5)
    finally:
        ingestor.stop()
    assert got == [("ingest-listeners", [Ingested(1, True, False)])]


def test_call_listeners_calls_each_once_in_order():
    seen: list[int] = []
    call_listeners([lambda r: seen.append(1), lambda r: seen.append(2)], [])
    assert seen == [1, 2]


def _site(secrets: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(settings={"monitor": {"receiver_address": "10.92.0.1",
                                                 "receiver_port": 19301}},
                           root=Path("/nonexistent"),
                           secrets=SecretStore(secrets),
                           inventory=SimpleNamespace(hosts={"fleet01": object()}))


def test_event_vars_give_each_host_its_own_token_as_a_secret():
    vars_for = event_vars(_site({"monitor_event_key": "k3y"}))
    one, two = vars_for("fleet01"), vars_for("fleet02")
    token = one["metalchain_event_token"]
    assert isinstance(token, Secret) and str(token) == "***" and "k3y" not in repr(token)
    assert token.reveal() == derive_token("k3y", "fleet01") != two["metalchain_event_token"] \
        .reveal()
    assert one["metalchain_event_url"] == "http://10.92.0.1:19301/v1/events"
    assert vars_for("fleet01")["metalchain_event_token"] == token      # idempotent apply


def test_without_an_event_key_no_host_gets_a_token_and_no_event_passes():
    site = _site({})
    assert event_vars(site)("fleet01") == {}
    assert not event_auth(site, "")("fleet01", derive_token("x", "fleet01"))


def test_event_auth_wants_the_hosts_own_token_and_a_host_of_the_inventory():
    auth = event_auth(_site({}), "k")
    assert auth("fleet01", derive_token("k", "fleet01"))
    assert not auth("fleet01", derive_token("k", "fleet02"))
    assert not auth("ghost", derive_token("k", "ghost"))


class _BatchStore:
    """Holds the first write until ``release`` is set, so the others queue up behind it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.writes: list[int] = []       # notifications per transaction
        self.next_id = 0

    def _results(self, items):
        out = []
        for item in items:
            if item.fingerprint == "poison":
                raise StateError("integrity")
            self.next_id += 1
            out.append(Ingested(self.next_id, True, False))
        return out

    def ingest(self, items, source, received=None):
        self.started.set()
        self.release.wait(5)
        self.writes.append(1)
        return self._results(items)

    def ingest_batch(self, batches):
        self.writes.append(len(batches))
        return [self._results(items) for items, _s, _r in batches]


def test_group_commit_writes_what_queued_up_in_one_transaction_and_a_bad_one_fails_alone():
    store = _BatchStore()
    ingestor = Ingestor(store)
    ingestor.start()
    items = alert_inputs(parse_notification(notification(alert("a"))))
    poison = alert_inputs(parse_notification(notification(alert("poison"))))
    outcomes: dict[int, object] = {}

    def post(k: int) -> None:
        try:
            outcomes[k] = ingestor.commit(poison if k == 5 else items, "alertmanager", {})
        except StateError as exc:
            outcomes[k] = exc

    try:
        first = threading.Thread(target=post, args=(0,))
        first.start()
        wait_for(store.started.is_set, 5, "the first write")
        others = [threading.Thread(target=post, args=(k,)) for k in range(1, 10)]
        for t in others:
            t.start()
        wait_for(lambda: ingestor._pending.qsize() == 9, 5, "nine queued behind it")
        store.release.set()
        for t in [first, *others]:
            t.join(5)
    finally:
        ingestor.stop()
    assert isinstance(outcomes[5], StateError)
    assert all(isinstance(outcomes[k], list) and len(outcomes[k]) == 1
               for k in range(10) if k != 5)
    # The first alone; the nine behind it in one batch, which failed on the poison and was
    # written again one by one.
    assert store.writes == [1, 9] + [1] * 9

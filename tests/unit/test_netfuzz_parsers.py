"""Property-based fuzzing of the network parsers (bounded: each test well under 3 s).

Property: ``parse_notification`` / ``parse_event`` return a value or raise the project's own
error (a :class:`monitor.webhook.PayloadError` with a 4xx status), whatever the bytes; what
they accept can be stored as it is (no lone surrogate, no value wider than its column) and
a valid document is accepted. The full-size campaign is ``bench/fuzz_net.py``.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory.state import StateStore
from monitor import events as ev
from monitor import webhook
from monitor.ingest import alert_inputs
from monitor.receiver import request_path
from tests import netfuzz

pytestmark = pytest.mark.unit

FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _outcome(parse, body: bytes):
    try:
        return parse(body)
    except webhook.PayloadError as exc:
        assert exc.status in (400, 413), exc.status
        assert str(exc) and "\n" not in str(exc)
        return None


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@FAST
@given(netfuzz.json_body(netfuzz.notification()))
def test_any_body_is_a_notification_or_a_webhook_error(body):
    got = _outcome(webhook.parse_notification, body)
    if got is None:
        return
    for item in alert_inputs(got):
        assert len(item.fingerprint) <= webhook.MAX_FINGERPRINT
        assert len(item.starts_at) <= webhook.MAX_STARTS_AT
        assert len(item.alertname) <= webhook.MAX_ALERTNAME
        assert len(item.target) <= webhook.MAX_TARGET
        for k, v in [*item.labels.items(), *item.annotations.items()]:
            assert _storable(k) and _storable(v)


@FAST
@given(netfuzz.json_body(netfuzz.event()))
def test_any_body_is_an_event_or_an_event_error(body):
    got = _outcome(ev.parse_event, body)
    if got is not None:
        inc = got.incident_input()
        assert len(inc.starts_at) <= webhook.MAX_STARTS_AT and _storable(inc.target)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(netfuzz.notification())
def test_a_valid_notification_is_accepted_as_sent(doc):
    got = webhook.parse_notification(json.dumps(doc).encode())
    assert [a.fingerprint for a in got.alerts] == [a["fingerprint"] for a in doc["alerts"]]
    assert [a.labels for a in got.alerts] == [a["labels"] for a in doc["alerts"]]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(netfuzz.event())
def test_a_valid_event_is_accepted(doc):
    assert ev.parse_event(json.dumps(doc).encode()).host == doc["host"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = StateStore.open_file(tmp_path_factory.mktemp("netfuzz") / "s.db")
    yield s
    s.close()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(netfuzz.mutated_json(netfuzz.notification()),
                 netfuzz.notification().map(lambda d: json.dumps(d).encode())))
def test_what_the_parser_accepts_the_state_store_stores(store, body):
    got = _outcome(webhook.parse_notification, body)
    if got is None:
        return
    results = store.ingest(alert_inputs(got), "alertmanager", received={"client": "t"})
    assert len(results) == len(got.alerts)


# -- the cases that escaped before (each one a regression test) -------------------------------

ALERT = {"status": "firing", "labels": {"alertname": "A"}, "startsAt": "2026-12-01T10:00:00Z",
         "fingerprint": "0123456789abcdef"}
GOOD = {"version": "4", "status": "firing", "receiver": "r", "groupKey": "g", "alerts": [ALERT]}
EVENT = {"version": "1", "host": "web1", "kind": "unit_failed", "unit": "nginx.service",
         "at": "2026-12-01T10:00:00Z"}


def _alerts(**alert) -> bytes:
    return json.dumps({**GOOD, "alerts": [{**ALERT, **alert}]}).encode()


@pytest.mark.parametrize("body, why", [
    (b"[" * 100_000, "nested deeper"),                             # RecursionError before
    (b'{"alerts": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper"),
    (b'{"version": ' + b"9" * 5000 + b"}", "number too long"),       # ValueError before
    (b'{"version": "4", "version": "4"}', "given twice"),
    (b'{"version": NaN}', "not a JSON number"),
    (json.dumps({**GOOD, "receiver": "\ud800"}).encode("utf-8", "surrogatepass")
     .replace(b"\xed\xa0\x80", b"\\ud800"), "lone surrogate"),    # a 503 loop before
    (_alerts(fingerprint="f" * 65), "fingerprint"),                 # wider than its column
    (_alerts(startsAt="2026-12-01T10:00:00.000000000000000000000Z"), "startsAt"),
    (_alerts(labels={"alertname": "A" * 201}), "alertname"),
    (_alerts(labels={"alertname": "A", "host": "h" * 254}), "host"),
])
def test_hostile_notifications_are_refused_with_a_reason(body, why):
    with pytest.raises(webhook.WebhookError, match=why) as err:
        webhook.parse_notification(body)
    assert err.value.status == 400


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_an_event_time_out_of_range_after_conversion_is_refused(at):
    with pytest.raises(ev.EventError, match="plausible"):              # OverflowError before
        ev.parse_event(json.dumps({**EVENT, "at": at}).encode())


def test_a_request_target_that_is_no_url_has_no_path():
    assert request_path("http://[") is None and request_path("/v1/alerts?a=[") == "/v1/alerts"


def test_a_body_at_the_size_limit_is_parsed_in_bounded_memory():
    wide = {**GOOD, "alerts": [ALERT] * 900,
            "commonAnnotations": {f"k{i}": "v" * 4000 for i in range(60)}}
    deep_ish = b'{"x": ' + b"[" * 31 + b"]" * 31 + b', "v": 1}'
    bodies = [json.dumps(wide).encode()[:webhook.MAX_BODY], deep_ish,
              b"[" * webhook.MAX_BODY, b'"' + b"\\u0000" * (webhook.MAX_BODY // 6 - 1) + b'"']
    for body in bodies:
        assert len(body) <= webhook.MAX_BODY
        tracemalloc.start()
        try:
            _outcome(webhook.parse_notification, body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 40 * webhook.MAX_BODY, (len(body), peak)

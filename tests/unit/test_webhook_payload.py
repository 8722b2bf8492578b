"""Alertmanager's v4 webhook, read strictly (monitor/webhook.py): every refusal has a status
and a reason, and one alert sent again (a retry, a resend, the other replica) has one key."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from monitor.webhook import (
    MAX_BODY,
    WebhookError,
    check_bearer,
    parse_notification,
)

pytestmark = pytest.mark.unit

ALERT = {
    "status": "firing",
    "labels": {"alertname": "UnitFailed", "instance": "fleet01:9100", "name": "cron.service"},
    "annotations": {"summary": "cron.service failed on fleet01"},
    "startsAt": "2026-12-01T10:00:00.371Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://127.0.0.1:9090/graph",
    "fingerprint": "5f1c3a9b2e7d4c10",
}
NOTIFICATION = {
    "version": "4", "groupKey": "{}:{alertname=\"UnitFailed\"}", "truncatedAlerts": 0,
    "status": "firing", "receiver": "remediation",
    "groupLabels": {"alertname": "UnitFailed"}, "commonLabels": {}, "commonAnnotations": {},
    "externalURL": "http://127.0.0.1:9093", "alerts": [ALERT],
}


def body(**changes: Any) -> bytes:
    doc = copy.deepcopy(NOTIFICATION)
    doc.update(changes)
    return json.dumps(doc).encode()


def alert_body(**changes: Any) -> bytes:
    alert = {**copy.deepcopy(ALERT), **changes}
    return body(alerts=[{k: v for k, v in alert.items() if v is not ...}])


def test_a_notification_is_read_with_its_alerts():
    n = parse_notification(body())
    assert (n.status, n.receiver, n.truncated_alerts) == ("firing", "remediation", 0)
    (alert,) = n.alerts
    assert alert.name == "UnitFailed" and alert.labels["name"] == "cron.service"
    assert alert.key == ("5f1c3a9b2e7d4c10", "2026-12-01T10:00:00.371Z")


def test_one_alert_resent_has_one_key_and_a_new_firing_a_new_one():
    """A retry and the other replica's copy differ in group fields, not in the alert's key;
    the same alert firing again later starts a new incident."""
    first = parse_notification(body()).alerts[0].key
    resent = parse_notification(body(receiver="remediation", groupKey="other",
                                     truncatedAlerts=0)).alerts[0].key
    later = parse_notification(alert_body(startsAt="2026-12-01T11:00:00Z")).alerts[0].key
    assert first == resent and later != first


@pytest.mark.parametrize("raw,status,reason", [
    (body()[:-7], 400, "not JSON"),                                       # truncated
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b"x" * (MAX_BODY + 1), 413, "over the limit"),                      # 1 MiB + 1 (10 MB too)
    (b"[1, 2]", 400, "not a JSON object"),
    (body(version="3"), 400, "payload version '3'"),
    (body(version=None), 400, "payload version 'null'"),
    (body(status="pending"), 400, "unknown status 'pending'"),
    (body(alerts=[]), 400, "non-empty list"),
    (body(alerts="everything"), 400, "non-empty list"),
    (body(truncatedAlerts=-1), 400, "truncatedAlerts"),
    (alert_body(fingerprint=...), 400, "alerts[0]: 'fingerprint' is missing"),
    (alert_body(fingerprint=12), 400, "alerts[0]: 'fingerprint' must be a string"),
    (alert_body(startsAt=...), 400, "alerts[0]: 'startsAt' is missing"),
    (alert_body(fingerprint=""), 400, "'fingerprint' is missing or empty"),
    (alert_body(status="silenced"), 400, "alerts[0]: unknown status 'silenced'"),
    (alert_body(startsAt="yesterday"), 400, "alerts[0].startsAt is not an RFC 3339 time"),
    (alert_body(labels={}), 400, "alerts[0].labels must be a non-empty object"),
    (alert_body(labels={"alertname": 7}), 400, "'alertname' must be a string"),
    (alert_body(labels={"a": "x" * 5000}), 400, "at most 4096 characters"),
    (body(alerts=[ALERT, "not an alert"]), 400, "alerts[1] is not an object"),
])
def test_garbage_is_refused_with_a_status_and_a_reason(raw, status, reason):
    with pytest.raises(WebhookError, match=re.escape(reason)) as err:
        parse_notification(raw)
    assert err.value.status == status


def test_a_ten_megabyte_body_is_refused_before_it_is_decoded():
    with pytest.raises(WebhookError) as err:
        parse_notification(b"{" * (10 << 20))
    assert err.value.status == 413


def test_an_error_quotes_the_payload_short_and_printable():
    with pytest.raises(WebhookError) as err:
        parse_notification(body(status="\x1b[31mred" + "x" * 100))
    message = str(err.value)
    assert "\x1b" not in message and len(message) < 120


@pytest.mark.parametrize("header,ok", [
    ("Bearer s3cret-token", True),
    ("bearer s3cret-token", True),
    ("Bearer s3cret-token ", True),
    ("Bearer wrong", False),
    ("Bearer ", False),
    ("Basic s3cret-token", False),
    ("s3cret-token", False),
    ("", False),
    (None, False),
])
def test_bearer_token(header, ok):
    assert check_bearer(header, "s3cret-token") is ok


def test_no_configured_token_accepts_nothing():
    assert not check_bearer("Bearer ", "") and not check_bearer("Bearer x", "")


def test_the_sending_replica_is_kept_printable_and_recorded_per_delivery():
    """Two replicas on one machine post from one address with one receiver name: only their
    externalURL tells their copies apart in an incident's timeline."""
    from monitor.ingest import received_detail

    one = parse_notification(body(externalURL="http://127.0.0.1:19691"))
    two = parse_notification(body(externalURL="http://127.0.0.1:19692"))
    assert one.alerts[0].key == two.alerts[0].key
    assert received_detail(one, "127.0.0.1") == {"receiver": "remediation",
                                                 "client": "127.0.0.1",
                                                 "sender": "http://127.0.0.1:19691"}
    assert received_detail(two, "127.0.0.1")["sender"] == "http://127.0.0.1:19692"
    assert parse_notification(body(externalURL="http://x\x1b[31m\n")).external_url == \
        "http://x?[31m?"
    assert parse_notification(body(externalURL=None)).external_url == ""
    with pytest.raises(WebhookError, match="'externalURL' must be a string"):
        parse_notification(body(externalURL=7))

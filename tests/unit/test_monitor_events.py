"""Pushed events (monitor/events.py): strict parsing, the incident key (one failure pushed
twice is one incident, a later failure another), and per-host tokens bound to their host."""

from __future__ import annotations

import json
from typing import Any

import pytest

from monitor.events import (
    MAX_BODY,
    EventError,
    derive_token,
    event_fingerprint,
    normalise_time,
    parse_event,
    token_matches,
)

pytestmark = pytest.mark.unit

EVENT = {"version": "1", "host": "fleet01", "kind": "unit_failed", "unit": "cron.service",
         "at": "2026-12-01T10:00:00.5Z", "id": "4f0e9c2d"}


def body(**changes: Any) -> bytes:
    doc = {**EVENT, **changes}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


def test_an_event_becomes_the_incident_of_a_systemd_unit_failure():
    event = parse_event(body())
    item = event.incident_input()
    assert (item.alertname, item.target, item.status) == ("SystemdUnitFailed", "fleet01",
                                                          "firing")
    assert item.labels == {"alertname": "SystemdUnitFailed", "host": "fleet01",
                           "unit": "cron.service", "source": "event"}
    assert item.starts_at == "2026-12-01T10:00:00.500000Z"
    assert item.annotations["invocation_id"] == "4f0e9c2d"
    assert len(item.fingerprint) == 16


def test_the_same_failure_twice_is_one_key_and_a_later_failure_a_new_one():
    first = parse_event(body()).incident_input()
    # The same instant as epoch seconds, and another delivery id: the same incident.
    again = parse_event(body(at=1796119200.5, id="other")).incident_input()
    later = parse_event(body(at="2026-12-01T10:05:00Z")).incident_input()
    assert (first.fingerprint, first.starts_at) == (again.fingerprint, again.starts_at)
    assert first.fingerprint == later.fingerprint and first.starts_at != later.starts_at


def test_the_fingerprint_tells_hosts_units_and_kinds_apart():
    prints = {event_fingerprint(h, "unit_failed", u) for h in ("a", "b") for u in ("x", "y")}
    assert len(prints) == 4
    assert event_fingerprint("a", "unit_failed", "x") == event_fingerprint("a", "unit_failed",
                                                                           "x")


def test_time_zones_are_normalised_to_utc():
    assert normalise_time("2026-12-01T11:00:00+01:00") == "2026-12-01T10:00:00.000000Z"


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b"\xff\xfe{}", 400, "not UTF-8"),
    (b'{"version": "1", "host"', 400, "not JSON"),
    (b"[]", 400, "not a JSON object"),
    (body(version="2"), 400, "version '2'"),
    (body(version=...), 400, "version"),
    (body(kind="disk_full"), 400, "unknown kind"),
    (body(host="web_1;rm"), 400, "'host' must be"),
    (body(host=...), 400, "'host' must be"),
    (body(unit="a b.service"), 400, "'unit' must be"),
    (body(unit=7), 400, "'unit' must be"),
    (body(at="yesterday"), 400, "not an RFC 3339"),
    (body(at="2026-12-01T10:00:00"), 400, "no time zone"),
    (body(at=True), 400, "'at' must be"),
    (body(at=12), 400, "not a plausible time"),
    (body(at=...), 400, "'at' must be"),
    (body(id="x" * 200), 400, "'id' must be"),
    (body(extra=1), 400, "unknown field 'extra'"),
    (b" " * (MAX_BODY + 1), 413, "over the limit"),
])
def test_refusals_say_why(raw, status, reason):
    with pytest.raises(EventError) as err:
        parse_event(raw)
    assert err.value.status == status and reason in str(err.value)
    assert "\n" not in str(err.value)


def test_tokens_are_stable_bound_to_the_host_and_the_key():
    token = derive_token("site-key", "fleet01")
    assert token == derive_token("site-key", "fleet01")
    assert len(token) == 64 and "site-key" not in token
    assert token_matches("site-key", "fleet01", token)
    assert not token_matches("site-key", "fleet02", token)          # another host's
    assert not token_matches("other-key", "fleet01", token)         # a rotated key
    assert not token_matches("", "fleet01", token)                  # no key: nothing passes
    assert not token_matches("site-key", "fleet01", "")
    assert not token_matches("site-key", "fleet01", token[:-1] + "é")
    with pytest.raises(ValueError):
        derive_token("", "fleet01")

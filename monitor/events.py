"""Events pushed by hosts (``POST /v1/events``), read strictly, and the per-host tokens that
authenticate them.

A host tells the controller itself that a systemd unit failed, the moment it does (the
node_exporter role's ``metalchain-event@.service``), instead of waiting for Prometheus to
scrape it. The payload, version 1::

    {"version": "1", "host": "web1", "kind": "unit_failed", "unit": "nginx.service",
     "at": "2026-12-01T16:30:00.123456Z", "id": "9f0c..."}

``at`` is when the unit failed (RFC 3339, or seconds since the epoch); ``id`` (optional) is
the failed run's systemd invocation id, kept as an annotation. The incident key is
``(fingerprint, starts_at)`` as for alerts: the fingerprint is a stable hash of
``("event", host, kind, unit)`` and ``starts_at`` the failure time, so one failure pushed
twice (the host retried) is one incident and a new failure later is a new one.

**Tokens.** ``token = HMAC-SHA256(site key, "metalchain-event/v1:" + host)`` (hex), with the
site key read from the secrets file (``MonitorSettings.event_key_secret``). Why derived rather
than issued once and stored:

- ``apply`` stays idempotent and stateless: the same host always renders the same token file,
  so a converged host reports no change, a re-imaged host gets its token back with the next
  apply, and there is no plain-text copy of every token to keep anywhere on the controller.
- The receiver checks a token with one HMAC and a constant-time compare, without a database
  read on the hot path and without any state shared between controllers but the key.
- A token is bound to its host name: another host's token is refused (403), and a host can
  only report about itself.
- Revocation is rotation: a new key in secrets.yml and one ``apply`` of the node_exporter
  role re-key the fleet (the old tokens stop working the moment ``serve`` restarts with it).

The token is a :class:`inventory.secrets.Secret` in the host's variables, so configure masks
it in diffs, event logs and ``--json`` like every secret; on the host it lives only in a 0600
root file that the push script reads (it never goes into argv or a journal).

Every value from a host is data: checked for type and size here, never rendered.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from inventory.state.incidents import IncidentInput
from monitor.webhook import PayloadError, json_object, shown

#: The payload version this receiver reads.
VERSION = "1"
#: Bytes an event may have (a few hundred in practice).
MAX_BODY = 16 * 1024
KINDS = ("unit_failed",)
#: The alert name and labels a pushed unit failure carries: those of the Prometheus rule for
#: the same failure, so remediation rules match both paths alike.
ALERTNAMES = {"unit_failed": "SystemdUnitFailed"}
SOURCE = "event"
_FIELDS = ("version", "host", "kind", "unit", "at", "id")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# systemd's unit name characters (an instance may hold '@' and '\x2d' escapes).
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,255}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_TOKEN_CONTEXT = b"metalchain-event/v1:"
#: Oldest and newest failure times accepted (seconds since the epoch): 2001 .. 2286.
_EPOCH_RANGE = (1e9, 1e10)


class EventError(PayloadError):
    """An event refused."""


@dataclass(frozen=True)
class PushedEvent:
    host: str
    kind: str
    unit: str
    at: str                  # the failure time, normalised: RFC 3339 UTC with microseconds
    id: str = ""

    @property
    def fingerprint(self) -> str:
        return event_fingerprint(self.host, self.kind, self.unit)

    def incident_input(self) -> IncidentInput:
        """The incident this event opens (or, pushed again, counts a delivery of)."""
        return IncidentInput(
            fingerprint=self.fingerprint, starts_at=self.at, status="firing",
            alertname=ALERTNAMES[self.kind], target=self.host,
            labels={"alertname": ALERTNAMES[self.kind], "host": self.host,
                    "unit": self.unit, "source": SOURCE},
            annotations={"summary": f"{self.unit} failed on {self.host} (pushed by the host)",
                         **({"invocation_id": self.id} if self.id else {})})


def event_fingerprint(host: str, kind: str, unit: str) -> str:
    """A stable 16-hex-digit hash of what identifies the failing thing (not when it failed),
    the same width as Alertmanager's fingerprints."""
    doc = json.dumps([SOURCE, host, kind, unit], separators=(",", ":"))
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:16]


def derive_token(key: str, host: str) -> str:
    """``host``'s event token under the site ``key`` (see the module doc).

    >>> derive_token("k", "web1") == derive_token("k", "web1") != derive_token("k", "web2")
    True
    """
    if not key:
        raise ValueError("the event key is empty")
    return hmac.new(key.encode("utf-8"), _TOKEN_CONTEXT + host.encode("utf-8"),
                    hashlib.sha256).hexdigest()


def token_matches(key: str, host: str, token: str) -> bool:
    """Whether ``token`` is ``host``'s token (constant time; an empty key accepts nothing)."""
    if not key or not token:
        return False
    return hmac.compare_digest(derive_token(key, host).encode(), token.encode("utf-8",
                                                                             "replace"))


def parse_event(body: bytes) -> PushedEvent:
    """The event in ``body``, or :class:`EventError` saying what is wrong with it."""
    doc = json_object(body, MAX_BODY, EventError)
    if doc.get("version") != VERSION:
        raise EventError(f"event version {shown(doc.get('version'))}, expected \"{VERSION}\"")
    unknown = sorted(str(k) for k in doc if k not in _FIELDS)
    if unknown:
        raise EventError(f"unknown field {shown(unknown[0])}; allowed: {', '.join(_FIELDS)}")
    host = _matching(doc, "host", _HOST_RE, "an RFC 1123 host name")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise EventError(f"unknown kind {shown(kind)} (expected {', '.join(KINDS)})")
    unit = _matching(doc, "unit", _UNIT_RE, "a systemd unit name")
    event_id = _matching(doc, "id", _ID_RE, "an id of letters, digits and _.:-") \
        if doc.get("id") not in (None, "") else ""
    return PushedEvent(host=host, kind=str(kind), unit=unit,
                       at=normalise_time(doc.get("at")), id=event_id)


def normalise_time(value: Any) -> str:
    """``at`` (RFC 3339 text or epoch seconds) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, so the
    same instant written two ways is one incident key."""
    if isinstance(value, bool) or value is None:
        raise EventError("'at' must be an RFC 3339 time or seconds since the epoch")
    if isinstance(value, int | float):
        seconds = float(value)
        if not math.isfinite(seconds) or not _EPOCH_RANGE[0] <= seconds <= _EPOCH_RANGE[1]:
            raise EventError(f"'at' {shown(value)} is not a plausible time")
        when = datetime.fromtimestamp(seconds, UTC)
    elif isinstance(value, str) and len(value) <= 64:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventError(f"'at' is not an RFC 3339 time: {shown(value)}") from None
        if when.tzinfo is None:
            raise EventError("'at' has no time zone (add Z or an offset)")
        try:
            when = when.astimezone(UTC)
        except OverflowError:   # e.g. 9999-12-31T23:59:59-14:00 is past year 9999 in UTC
            raise EventError(f"'at' {shown(value)} is not a plausible time") from None
    else:
        raise EventError("'at' must be an RFC 3339 time or seconds since the epoch")
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _matching(doc: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not pattern.match(value):
        raise EventError(f"'{key}' must be {what}, got {shown(value)}")
    return value

"""Alertmanager's webhook (payload version 4), read strictly: a notification or a reason.

The receiver in ``metalchain serve`` (:mod:`monitor.receiver`) answers with what this module
decides, before it writes anything::

    check_bearer(request.headers.get("Authorization"), token)   # False -> 401
    notification = parse_notification(body)                      # WebhookError -> its status
    ingestor.commit(alert_inputs(notification), ...)             # then 200, then act

Every value that comes from Alertmanager is data (labels end up in audit rows and incident
timelines): it is checked for type and size here and never rendered as a template. An
incident is keyed by ``(fingerprint, startsAt)`` (:attr:`Alert.key`), so Alertmanager's
retries, its ``repeat_interval`` resends and the second replica's copy of one alert map to one
key, while the same alert firing again later (a new ``startsAt``) is a new incident.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: The payload version this receiver reads (Alertmanager 0.x sends "4").
VERSION = "4"
#: Bytes a notification may have; Alertmanager's default groups stay far below this.
MAX_BODY = 1 << 20
#: Alerts in one notification, labels in one alert, characters in one label or annotation.
MAX_ALERTS = 1000
MAX_LABELS = 64
MAX_VALUE = 4096
#: What the state store's columns hold (inventory/state/schema.py: incidents): a longer value
#: would be refused by a database that checks lengths (PostgreSQL) with a 503, and
#: Alertmanager would deliver the notification again forever.
MAX_FINGERPRINT = 64
MAX_STARTS_AT = 40
MAX_ALERTNAME = 200
MAX_TARGET = 253
STATUSES = ("firing", "resolved")
#: Containers nested in a body (Alertmanager's payload has 4 levels).
MAX_DEPTH = 32


class PayloadError(ValueError):
    """A request body refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class WebhookError(PayloadError):
    """A notification refused."""


def json_object(body: bytes, limit: int, error: type[PayloadError]) -> dict[str, Any]:
    """``body`` as a JSON object, or ``error`` (413 over ``limit`` bytes, 400 for a body that
    is not UTF-8, not strict JSON — a key given twice, NaN, a number too long, nesting over
    :data:`MAX_DEPTH`, a lone surrogate — or not an object) saying what is wrong with it."""
    if len(body) > limit:
        raise error(f"body of {len(body)} bytes is over the limit of {limit}", 413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise error(f"body is not JSON: {exc.msg} at line {exc.lineno} column "
                    f"{exc.colno}") from None
    except _NotStrictJson as exc:
        raise error(f"body is not strict JSON: {exc}") from None
    except RecursionError:
        raise error(f"body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:   # an integer of more digits than Python converts (4300)
        raise error("body has a number too long to read") from None
    if not isinstance(doc, dict):
        raise error("body is not a JSON object")
    problem = _unsound(doc)
    if problem:
        raise error(f"body {problem}")
    return doc


class _NotStrictJson(ValueError):
    """What RFC 8259 leaves undefined or forbids, which Python's json module would take."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two readers of one body must not see two different documents: a key given twice
    # (json.loads keeps the last one silently) is refused.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotStrictJson(f"key {shown(key)} is given twice")
            seen.add(key)
    return doc


def _no_constant(name: str) -> Any:
    raise _NotStrictJson(f"{name} is not a JSON number")


def _unsound(doc: Any) -> str:
    """Why ``doc`` cannot be stored and shown as it is ("" if it can): containers nested
    deeper than :data:`MAX_DEPTH`, or a string holding a lone surrogate (``"\\ud800"`` is
    valid JSON but no UTF-8 text: the state store could not write it, and a notification it
    refused with 503 would be delivered again forever)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            items: list[Any] = [*value.keys(), *value.values()]
        elif isinstance(value, list):
            items = value
        elif isinstance(value, str):
            if not _is_utf8(value):
                return "has a string that is not UTF-8 text (a lone surrogate escape)"
            continue
        else:
            continue
        if depth > MAX_DEPTH:
            return f"is nested deeper than {MAX_DEPTH} levels"
        stack.extend((item, depth + 1) for item in items)
    return ""


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str
    generator_url: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """What identifies the incident this alert belongs to: (fingerprint, startsAt)."""
        return (self.fingerprint, self.starts_at)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Notification:
    status: str
    receiver: str
    group_key: str
    alerts: tuple[Alert, ...]
    truncated_alerts: int = 0
    #: The sending Alertmanager's own URL (``--web.external-url``): what tells the replicas
    #: apart when they run on one machine with one receiver name ("" if absent).
    external_url: str = ""


def alert_target(labels: Mapping[str, str]) -> str:
    """The host an alert is about: its ``host`` label, else ``instance`` without the port.

    >>> alert_target({"instance": "10.0.0.5:9100"}), alert_target({"instance": "[::1]:9100"})
    ('10.0.0.5', '::1')
    """
    host = labels.get("host", "")
    if host:
        return host
    instance = labels.get("instance", "")
    if instance.startswith("["):
        return instance[1:].split("]", 1)[0]
    name, sep, port = instance.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name
    return instance


def check_bearer(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer TOKEN`` (compared in constant
    time; an empty configured token accepts nothing)."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def parse_notification(body: bytes) -> Notification:
    """The notification in ``body``, or :class:`WebhookError` saying what is wrong with it
    (413 for a body over :data:`MAX_BODY`, 400 for everything else)."""
    doc = json_object(body, MAX_BODY, WebhookError)
    version = doc.get("version")
    if version != VERSION:
        raise WebhookError(f"payload version {shown(version)}, expected \"{VERSION}\"")
    status = _choice(doc, "status", "notification")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise WebhookError("'alerts' must be a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise WebhookError(f"{len(alerts)} alerts in one notification, over {MAX_ALERTS}")
    truncated = doc.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise WebhookError("'truncatedAlerts' must be a whole number >= 0")
    return Notification(status=status, receiver=_text(doc, "receiver", "notification"),
                        group_key=_text(doc, "groupKey", "notification"),
                        alerts=tuple(_alert(a, i) for i, a in enumerate(alerts)),
                        truncated_alerts=truncated,
                        external_url=_printable(_text(doc, "externalURL", "notification",
                                                      required=False)))


def _alert(raw: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(raw, dict):
        raise WebhookError(f"{where} is not an object")
    fingerprint = _text(raw, "fingerprint", where)
    if not fingerprint:
        raise WebhookError(f"{where}: 'fingerprint' is missing or empty")
    if len(fingerprint) > MAX_FINGERPRINT:
        raise WebhookError(f"{where}: 'fingerprint' is longer than {MAX_FINGERPRINT} "
                           "characters")
    starts_at = _text(raw, "startsAt", where)
    if len(starts_at) > MAX_STARTS_AT:
        raise WebhookError(f"{where}: 'startsAt' is longer than {MAX_STARTS_AT} characters")
    starts_at = canonical_time(starts_at, f"{where}.startsAt")
    ends_at = _text(raw, "endsAt", where, required=False)
    if ends_at:
        _timestamp(ends_at, f"{where}.endsAt")
    labels = _string_map(raw.get("labels"), f"{where}.labels", required=True)
    if len(labels.get("alertname", "")) > MAX_ALERTNAME:
        raise WebhookError(f"{where}: label 'alertname' is longer than {MAX_ALERTNAME} "
                           "characters")
    if len(alert_target(labels)) > MAX_TARGET:
        raise WebhookError(f"{where}: the host its 'host' or 'instance' label names is longer "
                           f"than {MAX_TARGET} characters")
    return Alert(status=_choice(raw, "status", where),
                 labels=labels,
                 annotations=_string_map(raw.get("annotations", {}), f"{where}.annotations"),
                 starts_at=starts_at, ends_at=ends_at, fingerprint=fingerprint,
                 generator_url=_text(raw, "generatorURL", where, required=False))


def _choice(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if value not in STATUSES:
        raise WebhookError(f"{where}: unknown status {shown(value)} (expected firing or "
                           "resolved)")
    return str(value)


def _text(doc: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise WebhookError(f"{where}: '{key}' is missing")
        return ""
    if not isinstance(value, str):
        raise WebhookError(f"{where}: '{key}' must be a string")
    if len(value) > MAX_VALUE:
        raise WebhookError(f"{where}: '{key}' is longer than {MAX_VALUE} characters")
    return value


def _string_map(value: Any, where: str, *, required: bool = False) -> dict[str, str]:
    if not isinstance(value, dict) or (required and not value):
        raise WebhookError(f"{where} must be a{' non-empty' if required else 'n'} object")
    if len(value) > MAX_LABELS:
        raise WebhookError(f"{where} has {len(value)} entries, over {MAX_LABELS}")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > MAX_VALUE or len(v) > MAX_VALUE:
            raise WebhookError(f"{where}: {shown(k)} must be a string of at most "
                               f"{MAX_VALUE} characters")
    return dict(value)


def _timestamp(value: str, where: str) -> None:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WebhookError(f"{where} is not an RFC 3339 time: {shown(value)}") from None


_RFC3339 = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})"
                      r"(?:\.([0-9]{1,9}))?([Zz]|[+-][0-9]{2}:[0-9]{2})")


def canonical_time(value: str, where: str) -> str:
    """``value`` (RFC 3339) as one spelling per instant: UTC, ``T``, the fraction's trailing
    zeros dropped, ``Z`` -- Go's RFC3339Nano, so Alertmanager's own ``startsAt`` comes out
    unchanged while ``...+00:00``, ``...+01:00`` or ``...z`` of the same instant map to it (an
    incident is keyed by it: two spellings must not be two incidents)."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise WebhookError(f"{where} is not an RFC 3339 time: {shown(value)}")
    day, clock, fraction, zone = match.groups()
    try:
        when = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if zone in 'Zz' else zone}")
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise WebhookError(f"{where} is not a valid RFC 3339 time: {shown(value)}") from None
    fraction = (fraction or "").rstrip("0")
    return when.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def _printable(text: str) -> str:
    """``text`` with anything unprintable (escapes, newlines) replaced by "?": it is shown
    in timelines and CLI output as data."""
    return "".join(c if c.isprintable() else "?" for c in text)


def shown(value: Any) -> str:
    """A value from the payload as an error message may quote it: short, printable only."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else value
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:40] + ("..." if len(text) > 40 else ""))

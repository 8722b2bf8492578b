"""Alert rules: ``playbooks/alerts.yml`` (data) checked, and turned into a Prometheus rules file.

::

    defaults: {for: 1m, severity: warning}
    alerts:
      - name: ExporterDown
        expr: up{job="node"} == 0
        severity: critical            # critical | warning | info
        host_from: instance           # the series label holding the host name (default)
        unit_from: name               # optional: the label holding a systemd unit
        for: 0s                       # optional: overrides defaults.for
        summary: node_exporter on {host} does not answer

Each rule gets the labels remediation rules match on, whatever the series carry: ``host``
(the inventory host name: file_sd sets ``instance`` to it, metalchain's own metrics have a
``host`` label), ``unit`` when ``unit_from`` is given, and ``severity``. A summary may use
``{host}``, ``{unit}`` and ``{value}``; they become Prometheus templates, and nothing else in
the file is a template (a stray brace is an error), so a value never turns into one.

Errors are :class:`AlertsError` naming ``file:line``. PromQL itself is checked by ``promtool
check rules`` when the stack is generated (:mod:`monitor.stack`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inventory.errors import InventoryError
from inventory.yamlsource import read_yaml_file

SHIPPED_ALERTS = Path(__file__).resolve().parents[1] / "playbooks" / "alerts.yml"
ALERTS_FILE = "alerts.yml"
SEVERITIES = ("critical", "warning", "info")
TOP_KEYS = ("defaults", "notifications", "alerts")
DEFAULT_KEYS = ("for", "severity")
NOTIFICATION_KEYS = ("group_wait", "group_interval", "repeat_interval")
ALERT_KEYS = ("name", "expr", "for", "severity", "host_from", "unit_from", "summary")
#: Labels every generated rule sets (remediation rules match on them).
CONTRACT_LABELS = ("host", "unit", "severity")
RULE_GROUP = "metalchain"

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DURATION = re.compile(r"^(?:\d+(?:ms|s|m|h|d|w|y))+$")
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class AlertsError(InventoryError):
    """A malformed alerts file (``file:line: message``)."""


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    host_from: str = "instance"
    unit_from: str | None = None
    summary: str = ""
    source: str = ""   # file:line of the entry


@dataclass(frozen=True)
class Notifications:
    """How Alertmanager repeats itself (``notifications:`` of the alerts file): a new group
    is sent after ``group_wait`` (0s: at once), a changed one again after ``group_interval``
    (None: the evaluation interval), a firing one every ``repeat_interval``."""

    group_interval: str | None = None
    repeat_interval: str = "4h"
    group_wait: str = "0s"


@dataclass(frozen=True)
class AlertsFile:
    alerts: list[AlertRule]
    notifications: Notifications


def alerts_path(site_playbooks: Path | None) -> Path:
    """The site's ``playbooks/alerts.yml`` if it has one, else the shipped file."""
    if site_playbooks is not None and (site_playbooks / ALERTS_FILE).is_file():
        return site_playbooks / ALERTS_FILE
    return SHIPPED_ALERTS


def load_alerts(path: Path) -> list[AlertRule]:
    """Read and check an alerts file; AlertsError names file:line."""
    return parse_alerts(read_yaml_file(path), str(path))


def load_alerts_file(path: Path) -> AlertsFile:
    """The alerts and the ``notifications:`` settings of an alerts file, checked."""
    doc = read_yaml_file(path)
    return AlertsFile(parse_alerts(doc, str(path)), parse_notifications(doc, str(path)))


def parse_notifications(doc: Any, file: str) -> Notifications:
    def fail(message: str, line: int | None) -> AlertsError:
        return AlertsError(message, file=file, line=line or 1)

    line_of = getattr(doc, "line_of", lambda _k: 1)
    raw = doc.get("notifications") or {} if isinstance(doc, Mapping) else {}
    if not isinstance(raw, Mapping):
        raise fail("notifications must be a mapping like {group_wait: 0s, "
                   "group_interval: 1s, repeat_interval: 4h}", line_of("notifications"))
    n_line = getattr(raw, "line_of", lambda _k: line_of("notifications"))
    for key in raw:
        if key not in NOTIFICATION_KEYS:
            raise fail(f"notifications: unknown key '{key}'; allowed: "
                       f"{', '.join(NOTIFICATION_KEYS)}", n_line(key))
    group = None
    if "group_interval" in raw:
        group = _duration(raw["group_interval"], "notifications.group_interval", fail,
                          n_line("group_interval"))
    repeat = _duration(raw.get("repeat_interval", "4h"), "notifications.repeat_interval",
                       fail, n_line("repeat_interval"))
    # 0s is Alertmanager's "send a new group at once" (metalchain's default), so no floor here
    wait = _duration(raw.get("group_wait", "0s"), "notifications.group_wait", fail,
                     n_line("group_wait"))
    for key, value in (("group_interval", group), ("repeat_interval", repeat)):
        if value is not None and duration_seconds(value) < 1:
            raise fail(f"notifications.{key} must be at least 1s, got {value}", n_line(key))
    return Notifications(group, repeat, wait)


def parse_alerts(doc: Any, file: str) -> list[AlertRule]:
    def fail(message: str, line: int | None) -> AlertsError:
        return AlertsError(message, file=file, line=line or 1)

    if not isinstance(doc, Mapping):
        raise fail("an alerts file must be a mapping with 'alerts:' (and 'defaults:')", 1)
    line_of = getattr(doc, "line_of", lambda _k: 1)
    for key in doc:
        if key not in TOP_KEYS:
            raise fail(f"unknown key '{key}'; allowed: {', '.join(TOP_KEYS)}", line_of(key))
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise fail("defaults must be a mapping like {for: 1m, severity: warning}",
                   line_of("defaults"))
    d_line = getattr(defaults, "line_of", lambda _k: line_of("defaults"))
    for key in defaults:
        if key not in DEFAULT_KEYS:
            raise fail(f"defaults: unknown key '{key}'; allowed: {', '.join(DEFAULT_KEYS)}",
                       d_line(key))
    default_for = _duration(defaults.get("for", "1m"), "defaults.for", fail, d_line("for"))
    default_sev = _severity(defaults.get("severity", "warning"), "defaults.severity", fail,
                            d_line("severity"))
    entries = doc.get("alerts")
    if not isinstance(entries, list) or not entries:
        raise fail("alerts must be a non-empty list of alerts", line_of("alerts"))
    out: list[AlertRule] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        item_line = entries.line_of(i) if hasattr(entries, "line_of") else line_of("alerts")
        rule = _alert(entry, item_line, file, default_for, default_sev, fail)
        if rule.name in seen:
            raise fail(f"alert {rule.name} is defined twice (first at {seen[rule.name]})",
                       item_line)
        seen[rule.name] = rule.source
        out.append(rule)
    return out


def _alert(entry: Any, item_line: int, file: str, default_for: str, default_sev: str,
           fail: Any) -> AlertRule:
    if not isinstance(entry, Mapping):
        raise fail("each alert must be a mapping with name, expr and summary", item_line)
    line = getattr(entry, "line_of", lambda _k: item_line)
    for key in entry:
        if key not in ALERT_KEYS:
            raise fail(f"unknown key '{key}'; allowed: {', '.join(ALERT_KEYS)}", line(key))
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"name must be an alert name (letters, digits, _), got {name!r}",
                   line("name"))
    expr = entry.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        raise fail(f"alert {name}: expr must be a PromQL expression", line("expr"))
    host_from = _label(entry.get("host_from", "instance"), name, "host_from", fail,
                       line("host_from"))
    unit_from = None
    if "unit_from" in entry:
        unit_from = _label(entry["unit_from"], name, "unit_from", fail, line("unit_from"))
    summary = entry.get("summary", "")
    if not isinstance(summary, str):
        raise fail(f"alert {name}: summary must be text", line("summary"))
    _check_summary(summary, name, unit_from, fail, line("summary"))
    return AlertRule(
        name=name, expr=expr.strip(),
        for_=_duration(entry.get("for", default_for), f"alert {name}: for", fail, line("for")),
        severity=_severity(entry.get("severity", default_sev), f"alert {name}: severity", fail,
                           line("severity")),
        host_from=host_from, unit_from=unit_from, summary=summary,
        source=f"{file}:{item_line}")


def _label(value: Any, alert: str, key: str, fail: Any, line: int) -> str:
    if not isinstance(value, str) or not _LABEL.match(value) or value.startswith("__"):
        raise fail(f"alert {alert}: {key} must be a label name, got {value!r}", line)
    return value


def _duration(value: Any, what: str, fail: Any, line: int) -> str:
    if not isinstance(value, str) or not _DURATION.match(value):
        raise fail(f"{what} must be a duration like 0s, 30s, 5m or 1h, got {value!r}", line)
    return value


def _severity(value: Any, what: str, fail: Any, line: int) -> str:
    if value not in SEVERITIES:
        raise fail(f"{what} must be one of {', '.join(SEVERITIES)}, got {value!r}", line)
    return str(value)


def _check_summary(summary: str, alert: str, unit_from: str | None, fail: Any,
                   line: int) -> None:
    allowed = {"host", "value"} | ({"unit"} if unit_from else set())
    for found in _PLACEHOLDER.findall(summary):
        if found not in allowed:
            raise fail(f"alert {alert}: summary may use {{{'}, {'.join(sorted(allowed))}}}, "
                       f"not {{{found}}}", line)
    rest = _PLACEHOLDER.sub("", summary)
    if "{" in rest or "}" in rest:
        raise fail(f"alert {alert}: summary has a brace that is not {{host}}, {{unit}} or "
                   "{value} (nothing else is templated)", line)


def duration_seconds(text: str) -> float:
    """``1m30s`` -> 90.0 (text checked by the alerts file's rules)."""
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def prometheus_duration(seconds: float) -> str:
    """90 -> ``1m30s``, 0.5 -> ``500ms``, 0 -> ``0s``: how Prometheus and Alertmanager
    configs spell a duration."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


def rule_document(alerts: list[AlertRule], *, group: str = RULE_GROUP) -> dict[str, Any]:
    """The Prometheus rules file for ``alerts`` (one group)."""
    rules = []
    for a in alerts:
        labels = {"severity": a.severity, "host": _label_template(a.host_from)}
        if a.unit_from:
            labels["unit"] = _label_template(a.unit_from)
        rule: dict[str, Any] = {"alert": a.name, "expr": a.expr, "for": a.for_,
                                "labels": labels}
        annotations = {"source": a.source}
        if a.summary:
            annotations["summary"] = _summary_template(a)
        rule["annotations"] = annotations
        rules.append(rule)
    return {"groups": [{"name": group, "rules": rules}]}


def rule_text(alerts: list[AlertRule]) -> str:
    head = "# Generated by metalchain monitor from alerts.yml; changes here are overwritten.\n"
    return head + yaml.safe_dump(rule_document(alerts), sort_keys=False, allow_unicode=True,
                                 width=1000)


def _label_template(label: str) -> str:
    return "{{ $labels." + label + " }}"


def _summary_template(a: AlertRule) -> str:
    subst = {"host": _label_template(a.host_from), "value": "{{ $value }}",
             "unit": _label_template(a.unit_from or "")}
    return _PLACEHOLDER.sub(lambda m: subst[m.group(1)], a.summary)

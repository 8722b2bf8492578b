"""Alert rules from playbooks/alerts.yml (monitor/alerts.py): the shipped file, the label
contract remediation rules match on, and errors naming file:line."""

from __future__ import annotations

import pytest
import yaml

from inventory.yamlsource import parse_yaml
from monitor.alerts import (
    SHIPPED_ALERTS,
    AlertsError,
    Notifications,
    duration_seconds,
    load_alerts,
    load_alerts_file,
    parse_alerts,
    parse_notifications,
    prometheus_duration,
    rule_document,
)

pytestmark = pytest.mark.unit

WANTED = {"ExporterDown", "HostDown", "SystemdUnitFailed", "DiskFilling", "DriftDetected",
          "BmcUnreachable", "ProvisioningStuck", "NodePoweredOff", "VmDown"}


def rules(text: str) -> list[dict]:
    return rule_document(parse_alerts(parse_yaml(text, "alerts.yml"), "alerts.yml"))[
        "groups"][0]["rules"]


def test_the_shipped_alerts_are_all_there_with_the_label_contract():
    doc = rule_document(load_alerts(SHIPPED_ALERTS))
    by_name = {r["alert"]: r for r in doc["groups"][0]["rules"]}
    assert set(by_name) == WANTED
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["labels"]["host"].startswith("{{ $labels."), name
    assert by_name["ExporterDown"]["expr"].startswith('up{job="node"} == 0 unless on(instance)')
    assert by_name["ExporterDown"]["labels"]["host"] == "{{ $labels.instance }}"
    assert by_name["BmcUnreachable"]["labels"]["host"] == "{{ $labels.host }}"
    assert by_name["SystemdUnitFailed"]["labels"]["unit"] == "{{ $labels.name }}"
    assert "unit" not in by_name["ExporterDown"]["labels"]
    # What the metrics helper exports (monitor/metrics.py) is what the rules read.
    exprs = " ".join(r["expr"] for r in by_name.values())
    for metric in ("metalchain_node_state", "metalchain_bmc_reachable",
                   "metalchain_node_power_on", "metalchain_drift_resources",
                   "metalchain_host_reachable", "node_systemd_unit_state"):
        assert metric in exprs


def test_for_comes_from_defaults_unless_the_alert_says_otherwise():
    got = rules("defaults: {for: 0s, severity: info}\nalerts:\n"
                "  - {name: A, expr: up == 0}\n  - {name: B, expr: up == 0, for: 5m}\n")
    assert [(r["for"], r["labels"]["severity"]) for r in got] == [("0s", "info"),
                                                                  ("5m", "info")]


def test_notifications_default_to_the_evaluation_interval_and_4h(tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text("alerts: [{name: A, expr: up}]\n")
    assert load_alerts_file(path).notifications == Notifications(None, "4h")
    path.write_text("notifications: {group_interval: 2s, repeat_interval: 1h}\n"
                    "alerts: [{name: A, expr: up}]\n")
    assert load_alerts_file(path).notifications == Notifications("2s", "1h")
    assert load_alerts_file(path).notifications.group_wait == "0s"


def test_group_wait_is_read_and_may_be_0s(tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text("notifications: {group_wait: 30s}\nalerts: [{name: A, expr: up}]\n")
    assert load_alerts_file(path).notifications == Notifications(None, "4h", "30s")
    path.write_text("notifications: {group_wait: 0s}\nalerts: [{name: A, expr: up}]\n")
    assert load_alerts_file(path).notifications.group_wait == "0s"


def test_summaries_become_templates_of_the_series_labels_and_nothing_else():
    got = rules("alerts:\n  - name: U\n    expr: x == 1\n    unit_from: name\n"
                "    summary: '{unit} on {host} is {value}'\n")
    assert got[0]["annotations"]["summary"] == \
        "{{ $labels.name }} on {{ $labels.instance }} is {{ $value }}"
    assert got[0]["annotations"]["source"] == "alerts.yml:2"


@pytest.mark.parametrize(("text", "line", "message"), [
    ("- a\n", 1, "must be a mapping"),
    ("alerts: []\n", 1, "non-empty list"),
    ("alerts:\n  - {name: A, expr: up}\nextra: 1\n", 3, "unknown key 'extra'"),
    ("defaults:\n  for: 1m\n  when: x\nalerts: [{name: A, expr: up}]\n", 3,
     "defaults: unknown key 'when'"),
    ("defaults:\n  for: soon\nalerts: [{name: A, expr: up}]\n", 2, "defaults.for must be"),
    ("alerts:\n  - name: A\n    expr: up\n    for: 10\n", 4, "alert A: for must be"),
    ("alerts:\n  - name: A\n    expr: up\n    severity: page\n", 4, "severity must be one of"),
    ("alerts:\n  - name: A\n    expr: up\n    labels: {x: y}\n", 4, "unknown key 'labels'"),
    ("alerts:\n  - name: 9lives\n    expr: up\n", 2, "name must be an alert name"),
    ("alerts:\n  - name: A\n    expr: ''\n", 3, "expr must be a PromQL"),
    ("alerts:\n  - name: A\n    expr: up\n    host_from: __name__\n", 4,
     "host_from must be a label name"),
    ("alerts:\n  - name: A\n    expr: up\n    summary: '{unit} down'\n", 4, "not {unit}"),
    ("alerts:\n  - name: A\n    expr: up\n    summary: '{{ $labels.x }}'\n", 4,
     "brace"),
    ("alerts:\n  - {name: A, expr: up}\n  - {name: A, expr: up}\n", 3,
     r"defined twice \(first at alerts.yml:2\)"),
    ("alerts:\n  - just a string\n", 2, "each alert must be a mapping"),
    ("notifications: [1s]\nalerts: [{name: A, expr: up}]\n", 1,
     "notifications must be a mapping"),
    ("notifications:\n  group_by: [host]\nalerts: [{name: A, expr: up}]\n", 2,
     "notifications: unknown key 'group_by'; allowed: group_wait, group_interval"),
    ("notifications:\n  repeat_interval: 1h\n  group_wait: soon\nalerts: [{name: A, expr: up}]\n",
     3, "notifications.group_wait must be a duration"),
    ("notifications:\n  group_wait: 30\nalerts: [{name: A, expr: up}]\n", 2,
     "notifications.group_wait must be a duration"),
    ("notifications:\n  repeat_interval: 100ms\nalerts: [{name: A, expr: up}]\n", 2,
     "repeat_interval must be at least 1s"),
    ("notifications:\n  group_interval: often\nalerts: [{name: A, expr: up}]\n", 2,
     "group_interval must be a duration"),
])
def test_errors_name_file_and_line(text, line, message):
    with pytest.raises(AlertsError, match=message) as err:
        doc = parse_yaml(text, "alerts.yml")
        parse_alerts(doc, "alerts.yml")
        parse_notifications(doc, "alerts.yml")
    assert str(err.value).startswith(f"alerts.yml:{line}: "), str(err.value)


def test_a_file_that_is_not_yaml_names_its_line(tmp_path):
    bad = tmp_path / "alerts.yml"
    bad.write_text("alerts:\n  - {name: A\n", encoding="utf-8")
    with pytest.raises(Exception, match=rf"{bad}:\d+: invalid YAML"):
        load_alerts(bad)


def test_rules_file_is_yaml_prometheus_reads():
    from monitor.alerts import rule_text

    doc = yaml.safe_load(rule_text(load_alerts(SHIPPED_ALERTS)))
    assert doc["groups"][0]["name"] == "metalchain"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (1, "1s"), (0.5, "500ms"),
                                               (90, "1m30s"), (3600, "1h"), (15.0, "15s")])
def test_durations_round_trip(seconds, text):
    assert prometheus_duration(seconds) == text
    assert duration_seconds(text) == seconds


def test_a_dead_guest_is_vm_down_and_a_dead_machine_host_down_never_both():
    """The two read one series; the guest's has kind="vm" (monitor/metrics.py), so each
    down host fires exactly one of them and rules can tell them apart by name and label."""
    by_name = {r["alert"]: r for r in rule_document(load_alerts(SHIPPED_ALERTS))[
        "groups"][0]["rules"]}
    assert by_name["HostDown"]["expr"] == 'metalchain_host_reachable{kind!="vm"} == 0'
    assert by_name["VmDown"]["expr"] == 'metalchain_host_reachable{kind="vm"} == 0'
    assert by_name["VmDown"]["labels"]["host"] == "{{ $labels.host }}"
    # an exporter on a host that does not answer SSH at all is that host's alert, not its own
    assert "unless on(instance)" in by_name["ExporterDown"]["expr"]
    assert "metalchain_host_reachable == 0" in by_name["ExporterDown"]["expr"]

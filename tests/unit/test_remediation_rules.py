"""Remediation rules: the shipped file loads; every error names file:line; references are a
fixed syntax, and alert values are substituted as plain data."""

from __future__ import annotations

import pytest

from inventory.errors import InventoryError
from monitor.rules import SHIPPED_RULES, MissingValue, load_rules, substitute

pytestmark = pytest.mark.unit


def test_the_shipped_rules_load_and_match_the_alerts_they_are_for():
    rules = load_rules(SHIPPED_RULES)
    assert rules.match({"alertname": "SystemdUnitFailed", "unit": "x.service"}).name \
        == "unit-failed"
    assert rules.match({"alertname": "ExporterDown", "job": "node"}).name == "exporter-down"
    off = rules.match({"alertname": "NodePoweredOff"})
    assert off.name == "powered-off" and off.steps[0].allow
    assert (off.steps[0].action, off.steps[0].args) == ("power_cycle", {"if_on": "leave"})
    assert rules.match({"alertname": "HostDown"}).name == "host-down"
    assert rules.rule("host-down").steps[0].args == {}    # a hung host is cycled
    assert rules.match({"alertname": "DiskFilling"}) is None
    unit = rules.rule("unit-failed")
    assert [s.action for s in unit.steps] == ["restart_service", "apply_role"]
    assert rules.rule("host-down").steps[0].allow
    # A BMC that does not answer is never power-cycled through: a human is paged at once.
    for name in ("BmcUnreachable",):
        bmc = rules.match({"alertname": name, "host": "node1"})
        assert bmc.name == "bmc-unreachable" and bmc.steps == () and "BMC" in bmc.escalate


BAD = [
    ("rules:\n  - name: a\n    match: {alertname: X}\n    stepz: []\n",
     3 + 1, "unknown key 'stepz' in rules[0] (did you mean 'steps'?)"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
     "      - action: restart_servce\n", 5, "unknown action 'restart_servce' (did you mean "
     "'restart_service'?)"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
     "      - action: restart_service\n        verify: {kind: ssh}\n", 6,
     "unknown verification 'ssh'"),
    ("policy:\n  cooldown: -1\n", 2, "'cooldown' must be between"),
    ("policy:\n  max_concurent: 3\n", 2, "did you mean 'max_concurrent'?"),
    ("policy:\n  fleet_cap: 0\n", 2, "'fleet_cap' must be above 0"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
     "      - action: restart_service\n        args: {service: '{{ lookup(\"env\") }}'}\n",
     6, "a reference is labels.NAME"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
     "      - action: restart_service\n        args: {service: '{% if 1 %}x{% endif %}'}\n",
     6, "'{%' and '{#' are not"),
    ("rules:\n  - name: a\n    match: {alertname: {regex: '('}}\n    steps: "
     "[{action: restart_service}]\n", 3, "bad regex"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps: []\n", 4,
     "needs 'steps'"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    escalate: ''\n", 4,
     "'escalate' needs the reason"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    escalate: why\n"
     "    steps: [{action: apply_role}]\n", 5, "both 'escalate' and 'steps'"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps: [{action: playbook}]\n", 4,
     "needs args: {name: PLAYBOOK}"),
    ("rules:\n  - {name: a, match: {alertname: X}, steps: [{action: apply_role}]}\n"
     "  - {name: a, match: {alertname: Y}, steps: [{action: apply_role}]}\n", 3,
     "used twice"),
    ("policy:\n  page_webhook: {url: 'file:///etc/passwd'}\n", 2, "http:// or https://"),
    ("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
     "      - action: restart_service\n        verify:\n          kind: prometheus\n"
     "          args: {query: 'up{instance=\"{{ target }}\"}'}\n", 8,
     "cannot refer to the incident"),
]


@pytest.mark.parametrize("text,line,message", BAD)
def test_errors_name_the_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "remediation.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InventoryError) as err:
        load_rules(path, display_name="remediation.yml")
    assert str(err.value).startswith(f"remediation.yml:{line}: "), str(err.value)
    assert message in str(err.value)


def test_actions_are_checked_against_the_registered_ones(tmp_path):
    path = tmp_path / "remediation.yml"
    path.write_text("rules:\n  - name: a\n    match: {alertname: X}\n    steps:\n"
                    "      - action: power_cycle\n", encoding="utf-8")
    assert load_rules(path, actions=["power_cycle"]).rules
    with pytest.raises(InventoryError, match=r":5: .*unknown action 'power_cycle'"):
        load_rules(path, actions=["restart_service", "apply_role"])


def test_references_take_the_first_value_and_never_render_alert_values():
    labels = {"unit": "", "name": "a.service", "evil": "{{ labels.name }}"}
    assert substitute("{{ labels.unit | labels.name }}", "h", labels) == "a.service"
    assert substitute("{{labels.evil}}", "h", labels) == "{{ labels.name }}"
    assert substitute("on {{ target }}: {{ alertname }}", "h1", {"alertname": "X"}) \
        == "on h1: X"
    assert substitute(["{{ labels.x | 'dflt' }}", 3], "h", {}) == ["dflt", 3]
    assert substitute("{{ labels.x | '' }}", "h", {}) == ""
    with pytest.raises(MissingValue, match=r"labels\.x"):
        substitute("{{ labels.x }}", "h", {})

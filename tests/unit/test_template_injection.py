"""Template injection (SSTI) campaign: values from hosts and alerts are data.

Every payload of :data:`tests.netfuzz.SSTI_PAYLOADS` (Jinja expressions and statements, the
``cycler.__init__.__globals__.os.popen`` escape aimed at a canary file, ``{% raw %}`` and
comment tricks, Go templates, lookalike braces) is put where a host or an alert can put a
value — inventory labels and vars, facts returned by a host, alert labels and annotations,
webhook and event bodies, the inputs of remediation rules, Prometheus targets — and followed
to every template that reads it. Property: rendered literally or refused, never evaluated:
no canary file appears, and ``49`` never appears where ``{{ 7*7 }}`` was put. (Operator
templates are trusted: they are the templates here; the payloads are only ever values.)

The same with a real hostile host over SSH: tests/lab/test_netfuzz_http.py.
"""

from __future__ import annotations

import json

import pytest

from configure.facts import parse_facts
from configure.roles import blocks_for_host, resolve
from configure.templating import evaluate_condition, render_text, render_value
from inventory.errors import MetalchainError
from inventory.site import Site
from inventory.variables import host_variables
from monitor import events as ev
from monitor import webhook
from monitor.alerts import parse_alerts, rule_text
from monitor.ingest import alert_inputs
from monitor.rules import parse_rules, substitute
from monitor.targets import ScrapeHost, ScrapeTarget, file_sd_groups
from orchestrate.remediation import _Refused, _unit
from provision.templates import render
from tests import netfuzz
from tests.conftest import write_site

pytestmark = pytest.mark.unit


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary-ssti"
    yield path
    assert not path.exists(), "a payload was evaluated: the canary file exists"


@pytest.fixture
def payloads(canary):
    return netfuzz.ssti_payloads(str(canary))


def _literal(payload: str, rendered: str) -> None:
    assert payload in rendered, (payload, rendered)
    assert not netfuzz.evaluated(payload, rendered), (payload, rendered)


def test_the_detector_sees_a_payload_that_was_evaluated(canary):
    """The property could not fail if the checks were blind: rendered as an operator's own
    template (trusted, so evaluated), the payloads do show."""
    assert netfuzz.evaluated("{{ 7*7 }}", render_text("{{ 7*7 }}", {}, "t"))
    assert netfuzz.evaluated("{{ '7'*7 }}", render_text("{{ '7'*7 }}", {}, "t"))
    assert not netfuzz.evaluated("{{ 7*7 }}", "{{ 7*7 }}")


# -- inventory labels and vars --------------------------------------------------------------

def test_inventory_vars_and_labels_holding_templates_are_inserted_as_text(tmp_path, payloads):
    hosts = {f"h{i}": {"address": f"10.0.0.{i + 1}", "labels": {"note": p},
                       "vars": {"motd": p, "nested": {"list": [p]}}}
             for i, p in enumerate(payloads)}
    root = write_site(tmp_path / "site", json.dumps({"hosts": hosts}))
    site = Site.open(root)
    try:
        template = "motd={{ motd }} note={{ labels.note if labels is defined else '' }}" \
                   " n={{ nested.list[0] }}\n"
        for i, p in enumerate(payloads):
            hv = host_variables(site.inventory, f"h{i}")
            out = render_text(template, hv, "operator.j2")
            assert out.count(p) >= 2, out
            _literal(p, out)
            # A step's arguments: each value rendered once; the value is not looked at again.
            args = render_value({"content": "{{ motd }}", "argv": ["echo", "{{ motd }}"]}, hv,
                                "playbook.yml:1")
            assert args == {"content": p, "argv": ["echo", p]}
            # when: compares the value as a string
            assert evaluate_condition("motd == '49'", hv, "recipe.yml:1") is False
            assert site.inventory.hosts[f"h{i}"].labels["note"] == p
    finally:
        site.close()


@pytest.mark.parametrize("name", ["{{7*7}}", "{% raw %}x", "a{{b}}", "{#x"])
def test_host_names_that_are_templates_are_refused_when_loading(tmp_path, name):
    root = write_site(tmp_path / "site", json.dumps({"hosts": {name: {"address": "10.0.0.1"}}}))
    site = Site.open(root)
    try:
        with pytest.raises(MetalchainError, match="not a valid RFC 1123 host name"):
            _ = site.inventory
    finally:
        site.close()


# -- facts returned by a hostile host -------------------------------------------------------

def _role(tmp_path):
    role = tmp_path / "roles" / "motd"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "motd.j2").write_text(
        "Welcome to {{ facts.os_pretty }} ({{ facts.os_id }} {{ facts.kernel }})\n"
        "{% for a in facts.ipv4 %}{{ a }} {% endfor %}\n")
    (role / "recipe.yml").write_text(
        "- template: {source: motd.j2, path: /etc/motd}\n"
        "- file: {path: /etc/os-name, content: '{{ facts.os_pretty }}'}\n"
        "  when: facts.os_id != '49'\n")
    return resolve(["motd"], [tmp_path / "roles"])


def test_facts_holding_templates_are_rendered_literally_in_role_templates(tmp_path, payloads):
    roles = _role(tmp_path)
    for p in payloads:
        one_line = p.replace("\n", " ")
        probe = (f"os_id={one_line}\nos_pretty={one_line}\nkernel={one_line}\n"
                 f"ipv4={one_line}\ncpus={one_line}\n")
        facts = parse_facts(probe)
        blocks = blocks_for_host(roles, {"inventory_hostname": "h1", "facts": facts})
        motd, osname = (item.resource for item in blocks[0].items)
        text = motd.content.decode()
        _literal(one_line.strip(), text)
        assert osname.content.decode() == one_line.strip()


# -- alerts: labels, annotations, webhook bodies, remediation rule inputs -------------------

RULES = """
rules:
  - name: unit-failed
    match: {alertname: SystemdUnitFailed}
    steps:
      - action: restart_service
        args: {service: "{{ labels.unit }}", note: "{{ labels.note | 'none' }} on {{ target }}"}
        verify: {kind: service_active}
"""


def _notification(p: str) -> bytes:
    alert = {"status": "firing", "fingerprint": "00000000000000aa",
             "startsAt": "2026-12-01T10:00:00Z",
             "labels": {"alertname": "SystemdUnitFailed", "instance": "web1:9100", "unit": p,
                        "note": p},
             "annotations": {"summary": p, "description": p}}
    return json.dumps({"version": "4", "status": "firing", "receiver": p, "groupKey": p,
                       "externalURL": "http://am:9093", "alerts": [alert]}).encode()


def test_alert_values_reach_remediation_args_as_text_and_actions_refuse_them(payloads):
    rules = parse_rules(__import__("yaml").safe_load(RULES), "rules.yml")
    step = rules.rules[0].steps[0]
    for p in payloads:
        try:
            notification = webhook.parse_notification(_notification(p))
        except webhook.WebhookError:
            continue   # refused: fine too
        [item] = alert_inputs(notification)
        assert item.labels["unit"] == p and item.annotations["summary"] == p
        args = substitute(step.args, item.target, item.labels)
        assert args["service"] == p
        _literal(p, args["note"])
        with pytest.raises(_Refused):     # never a unit name: nothing reaches a host
            _unit(args)


def test_remediation_rules_refuse_any_template_but_their_references():
    for p in ("{{ 7*7 }}", "{{ labels.unit | upper }}", "{% if 1 %}x{% endif %}",
              "{{ cycler.__init__ }}"):
        text = RULES.replace('"{{ labels.unit }}"', json.dumps(p))
        try:
            rules = parse_rules(__import__("yaml").safe_load(text), "rules.yml")
        except MetalchainError:
            continue
        # A statement that is not a {{ }} reference is not a template: it stays text.
        args = substitute(rules.rules[0].steps[0].args, "web1", {"unit": "x"})
        assert args["service"] == p


def test_event_bodies_holding_templates_are_refused(payloads):
    base = {"version": "1", "host": "web1", "kind": "unit_failed", "unit": "nginx.service",
            "at": "2026-12-01T10:00:00Z", "id": "abc"}
    for p in payloads:
        for key in ("host", "unit", "id", "kind"):
            with pytest.raises(ev.EventError):
                ev.parse_event(json.dumps({**base, key: p}).encode())


# -- what the monitoring stack is configured with --------------------------------------------

def test_prometheus_targets_carry_inventory_labels_as_plain_values(payloads):
    hosts = [ScrapeHost(name=f"h{i}", address=f"10.0.0.{i + 1}", labels={"note": p},
                        targets=(ScrapeTarget(port=9100, job="node"),))
             for i, p in enumerate(payloads)]
    got = {g["labels"]["instance"]: g["labels"]["note"] for g in file_sd_groups(hosts)}
    assert got == {f"h{i}": p for i, p in enumerate(payloads)}


def test_generated_alert_rules_hold_no_value_from_hosts_and_refuse_stray_templates():
    doc = {"alerts": [{"name": "ExporterDown", "expr": 'up{job="node"} == 0',
                       "summary": "node_exporter on {host} is down"}]}
    text = rule_text(parse_alerts(doc, "alerts.yml"))
    assert "{{ $labels.instance }}" in text
    for p in ("{{ 7*7 }}", "{{ $labels.x }}", "{% raw %}", "{{ printf \"49\" }}"):
        bad = {"alerts": [{**doc["alerts"][0], "summary": f"down {p}"}]}
        with pytest.raises(MetalchainError, match=r"brace|summary"):
            parse_alerts(bad, "alerts.yml")


def test_boot_scripts_insert_node_values_literally(payloads):
    for p in payloads:
        if "\0" in p:
            continue
        out = render("boot.ipxe.j2", install=False, node=p)
        _literal(p, out)

"""Validation before contact: what a run would fail on that is known without a host is found
by `run --plan`, `run`, `apply` and `drift` alike — all of it, one line each, rc 2 — and what
only a host can tell (facts, untaken branches, guarded names) is not called an error.

Every host here has an address nothing listens on: a run that got past validation would
fail them as unreachable (rc 1), never rc 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from configure.facts import FACT_KEYS, PROBE, could_be_fact
from configure.templating import names_in_expression, names_in_text, names_in_value
from inventory.site import Site
from orchestrate.actions import drift_result
from orchestrate.reports import HostReport, RunReport, StepReport
from orchestrate.steps import StepOutcome
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
vars: {site_var: s}
groups:
  fleet:
    vars: {group_var: g}
  web: {}
hosts:
  h01: {address: 127.0.0.2, groups: [fleet], labels: {rack: r1}, vars: {only_h01: x}}
  h02: {address: 127.0.0.3, groups: [fleet], labels: {rack: r2}}
  w01: {address: 127.0.0.4, groups: [web]}
"""


def site_with(tmp_path: Path, playbook: str, inventory: str = INVENTORY,
              roles: dict[str, dict[str, str]] | None = None) -> Path:
    site = write_site(tmp_path / "site", inventory)
    (site / "playbooks").mkdir()
    (site / "playbooks" / "site.yml").write_text(playbook, encoding="utf-8")
    for role, files in (roles or {}).items():
        for rel, text in files.items():
            path = site / "playbooks" / "roles" / role / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    return site


def errors(result) -> list[str]:
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert all(ln.startswith("error: ") for ln in lines), result.err
    return [ln[len("error: "):] for ln in lines]


def no_runs(site: Path) -> bool:
    s = Site.open(site)
    try:
        return s.state.list_runs() == []
    finally:
        s.close()


UNDEFINED = """\
- name: touch then echo
  hosts: fleet
  steps:
    - command: {argv: [touch, /nonexistent/marker]}
    - command: {argv: [echo, "{{ fail_host }}"]}
"""


@pytest.mark.parametrize("mode", [["--plan"], [], ["--check"]])
def test_undefined_variable_in_a_step_stops_plan_and_run(tmp_path, run_cli, mode):
    site = site_with(tmp_path, UNDEFINED)
    r = run_cli("--site", str(site), "run", "site", *mode)
    assert r.code == 2, r
    pb = site / "playbooks" / "site.yml"
    assert errors(r) == [f"{pb}:5: 'fail_host' is undefined (hosts h01, h02)"]
    assert no_runs(site)


def test_a_variable_defined_for_some_hosts_names_the_others(tmp_path, run_cli):
    site = site_with(tmp_path, UNDEFINED.replace("fail_host", "only_h01"))
    r = run_cli("--site", str(site), "run", "site", "--plan")
    assert r.code == 2 and errors(r)[0].endswith("'only_h01' is undefined (host h02)")


@pytest.mark.parametrize("text", [
    "{{ site_var }} {{ group_var }} {{ inventory_hostname }} {{ address }} {{ e_var }}",
    "{{ maybe | default('x') }}",
    "{{ maybe if maybe is defined else 'none' }}",
    "{% if site_var == 'other' %}{{ maybe }}{% endif %}",
    "{% for g in group_names %}{{ g }}{% endfor %}{{ range(2) | list }}",
    "{{ ansible_hostname }} {{ os_id }}",          # could be facts: the host tells
    "{{ facts.os_id }}",                           # no facts stored: the host tells
])
def test_what_is_defined_or_only_a_host_can_tell_is_not_an_error(tmp_path, run_cli, text):
    site = site_with(tmp_path, UNDEFINED.replace("{{ fail_host }}", text))
    r = run_cli("--site", str(site), "run", "site", "--plan", "-e", "e_var=1")
    assert r.code == 0, r.err


def test_extra_vars_define_a_variable(tmp_path, run_cli):
    site = site_with(tmp_path, UNDEFINED)
    assert run_cli("--site", str(site), "run", "site", "--plan").code == 2
    assert run_cli("--site", str(site), "run", "site", "--plan", "-e", "fail_host=h").code == 0


def test_every_problem_is_collected_one_line_each(tmp_path, run_cli):
    pb_text = UNDEFINED + """\
- name: typos
  hosts: flet,rakc=r1,web*,nosuch*
  steps:
    - command: {argv: [echo, "{{ other }}"]}
"""
    site = site_with(tmp_path, pb_text)
    pb = site / "playbooks" / "site.yml"
    r = run_cli("--site", str(site), "run", "site")
    assert r.code == 2
    assert errors(r) == [
        f"{pb}:5: 'fail_host' is undefined (hosts h01, h02)",
        f"{pb}:7: target 'flet' matches no group, host or label (did you mean 'fleet'?)",
        f"{pb}:7: target 'rakc=r1' matches no host's label (did you mean 'rack=r1'?)",
        f"{pb}:7: target 'nosuch*' matches no host or group",
    ]
    assert no_runs(site)


def test_limit_terms_that_match_nothing(tmp_path, run_cli):
    site = site_with(tmp_path, UNDEFINED.replace("{{ fail_host }}", "x"))
    r = run_cli("--site", str(site), "run", "site", "--limit", "h1,@faild")
    assert r.code == 2
    assert errors(r) == [
        "--limit: target 'h1' matches no group, host or label (did you mean 'h01'?)",
        "--limit: unknown host list '@faild' (did you mean '@failed'?) (known: @failed)"]
    r = run_cli("--site", str(site), "run", "site", "--limit", "w01")
    assert r.code == 2 and "selects no hosts" in errors(r)[0]


def test_unknown_step_kinds_are_all_reported(tmp_path, run_cli):
    site = site_with(tmp_path, "- hosts: fleet\n  steps:\n    - comand: [echo]\n"
                               "    - apply_rolez: {}\n")
    pb = site / "playbooks" / "site.yml"
    r = run_cli("--site", str(site), "run", "site", "--plan")
    assert r.code == 2
    assert errors(r) == [f"{pb}:3: unknown step kind 'comand' (did you mean 'command'?)",
                         f"{pb}:4: unknown step kind 'apply_rolez' (did you mean "
                         "'apply_role'?)"]


ROLE = {"recipe.yml": "- template: {path: '/etc/{{ demo_name }}.conf', source: demo.j2}\n"
                      "- file: {path: /etc/kvm.conf, content: '{{ kvm_opt }}'}\n"
                      "  when: site_var == 'kvm'\n"
                      "- file: {path: /etc/w.conf, content: x}\n"
                      "  when: typo_var == 1\n",
        "defaults.yml": "demo_name: demo\n",
        "templates/demo.j2": "name={{ demo_name }}\nport={{ demo_port }}\n"}


def test_roles_from_the_command_line_a_step_and_the_inventory(tmp_path, run_cli):
    inv = INVENTORY.replace("    vars: {group_var: g}", "    roles: [demo, bsae]\n"
                                                        "    vars: {group_var: g}")
    site = site_with(tmp_path, "- hosts: fleet\n  steps:\n    - apply_role: demoo\n",
                     inventory=inv, roles={"demo": ROLE})
    pb = site / "playbooks" / "site.yml"
    r = run_cli("--site", str(site), "apply", "--role", "bsae", "fleet")
    assert r.code == 2
    assert errors(r) == ["command line: unknown role 'bsae' (did you mean 'base'?)"]
    r = run_cli("--site", str(site), "run", "site", "--plan")
    assert errors(r) == [f"{pb}:3: unknown role 'demoo' (did you mean 'demo'?)"]
    r = run_cli("--site", str(site), "drift", "fleet")
    assert r.code == 2
    assert errors(r) == [f"{site / 'inventory.yml'}:4: unknown role 'bsae' "
                         "(did you mean 'base'?)"]
    r = run_cli("--site", str(site), "inventory", "validate")
    assert r.code == 2 and errors(r) == [f"{site / 'inventory.yml'}:4: unknown role 'bsae' "
                                         "(did you mean 'base'?)"]
    assert no_runs(site)


def test_variables_a_role_needs(tmp_path, run_cli):
    site = site_with(tmp_path, "- hosts: fleet\n  steps:\n    - apply_role: demo\n",
                     roles={"demo": ROLE})
    role = site / "playbooks" / "roles" / "demo"
    r = run_cli("--site", str(site), "run", "site", "--plan")
    assert r.code == 2
    # demo_name comes from the role's defaults; kvm_opt is only read where when: is true.
    assert errors(r) == [f"{role / 'templates' / 'demo.j2'}:2: 'demo_port' is undefined "
                         "(hosts h01, h02)",
                         f"{role / 'recipe.yml'}:4: when: 'typo_var' is undefined "
                         "(hosts h01, h02)"]
    r = run_cli("--site", str(site), "apply", "--role", "demo", "fleet", "-e", "demo_port=1",
                "-e", "typo_var=1", "-e", "site_var=kvm")
    assert r.code == 2
    assert errors(r) == [f"{role / 'recipe.yml'}:2: 'kvm_opt' is undefined (hosts h01, h02)"]
    assert no_runs(site)
    r = run_cli("--site", str(site), "apply", "--role", "demo", "fleet", "-e", "demo_port=1",
                "-e", "typo_var=1")
    assert r.code == 1     # past validation: the hosts are contacted (and unreachable)


def test_drift_with_no_roles_assigned_says_so(tmp_path, run_cli):
    site = site_with(tmp_path, UNDEFINED)
    r = run_cli("--site", str(site), "drift", "fleet")
    assert r.code == 2
    assert errors(r) == ["no roles assigned to h01, h02: nothing to check (assign roles in "
                         "the inventory, or name them with --role)"]
    assert "no drift" not in r.out + r.err
    assert no_runs(site)


def _report(**statuses: str) -> RunReport:
    report = RunReport(uid="r1")
    for host, status in statuses.items():
        data = {"results": [{"role": "demo", "resource": "file:/x", "status": "changed",
                             "changes": ["content"], "message": "", "handler": None}]
                } if status == "changed" else {"results": []}
        if status == "no_roles":
            status, data = "ok", {"no_roles": True}
        h = HostReport(host)
        h.add(StepReport("drift", "drift check", StepOutcome(status, status, data=data), 1, 0))
        report.hosts[host] = h
    return report


@pytest.mark.parametrize("statuses,hosts,code,said", [
    ({"a": "ok", "b": "ok"}, ["a", "b"], 0, "no drift: 2 hosts checked, all match"),
    ({"a": "ok", "b": "changed"}, ["a", "b"], 3, "drift found on 1 host of 2: b"),
    ({"a": "unreachable", "b": "changed"}, ["a", "b"], 1, "1 host could not be checked: a"),
    ({"a": "failed", "b": "changed"}, ["a", "b"], 1, "drift found on 1 host of 2: b"),
    ({"a": "ok"}, ["a", "b"], 1, "1 host could not be checked: b (not run)"),
    ({"a": "ok", "b": "no_roles"}, ["a", "b"], 2, "no roles assigned to 1 host (not "
                                                  "checked): b"),
])
def test_drift_verdict(statuses, hosts, code, said):
    result = drift_result(_report(**statuses), hosts)
    assert result.exit_code == code
    text = "\n".join(result.lines())
    assert said in text, text
    if code != 0:
        assert "no drift:" not in text
    doc = result.to_json()
    assert doc["exit_code"] == code and doc["summary"] == result.lines()


def test_names_a_template_reads():
    assert names_in_text("{% for x in xs %}{{ loop.index }}{{ x }}{{ y }}{% endfor %}"
                         "{% set z = 1 %}{{ z }}{{ range(2) }}") == {"xs", "y"}
    assert names_in_expression("facts.cpus > 1 and flag is defined") == {"facts", "flag"}
    assert names_in_value({"a": ["{{ p }}", "plain"], "b": 3}) == {"p"}
    assert names_in_text("{{ unclosed") == frozenset()


def test_fact_keys_are_what_the_probe_prints():
    printed = set(re.findall(r'"(\w+)=', PROBE.script)) | set(re.findall(r'print "(\w+)=',
                                                                          PROBE.script))
    assert printed == set(FACT_KEYS)
    assert could_be_fact("ansible_distribution") and not could_be_fact("fail_host")


def test_a_play_that_selects_no_host_is_skipped_when_another_play_runs(tmp_path, run_cli):
    site = site_with(tmp_path, "- hosts: fleet\n  steps:\n    - command: [echo]\n"
                               "- hosts: fleet,!h01,!h02\n  steps:\n    - command: [echo]\n")
    r = run_cli("--site", str(site), "run", "site", "--plan", "--json")
    assert r.code == 0, r.err
    plays = json.loads(r.out)["plays"] if "plays" in json.loads(r.out) else \
        json.loads(r.out)["plan"]["plays"]
    assert [p["hosts"] for p in plays][1] == []

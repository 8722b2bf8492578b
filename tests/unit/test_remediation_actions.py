"""orchestrate's remediation actions with the runner replaced: what run they start (kind,
command line, argv after ``--``, the host's lease through ``wait``), and what they refuse to
send to a host (a target that is not one inventory host, a unit name that is not one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from inventory.contracts import StepOutcome
from inventory.errors import InventoryError
from monitor.actions import ActionCall, Actions, Verifiers, VerifyCall, call_action
from orchestrate.remediation import OrchestrateActions, promql_string, register
from orchestrate.reports import HostReport, RunReport, StepReport

pytestmark = pytest.mark.unit


class Runs:
    def __init__(self, status: str = "changed", held: dict[str, str] | None = None) -> None:
        self.calls: list[tuple] = []
        self.status = status
        self.held = held or {}

    def __call__(self, site, playbook, options, *, stop=None) -> RunReport:
        self.calls.append((playbook, options))
        report = RunReport(uid=f"run{len(self.calls)}", held=dict(self.held))
        if not self.held:
            host = options.limit or playbook.plays[0].hosts
            step = StepReport("p", "s", StepOutcome(self.status, "did it"), 1, 0.1)
            report.hosts[host] = HostReport(host, self.status, [step])
        return report


def _impl(runs: Runs, connect_timeout: int | None = None) -> OrchestrateActions:
    host = SimpleNamespace(ssh=SimpleNamespace(connect_timeout=connect_timeout))
    site = SimpleNamespace(inventory=SimpleNamespace(hosts={"web1": host}))
    return OrchestrateActions(site, run=runs)


def _call(target: str = "web1", **args) -> ActionCall:
    return ActionCall(target=target, args=args, incident_id=7, timeout=30)


def test_restart_service_is_a_remediation_run_of_systemctl_with_the_unit_after_dashes():
    runs = Runs()
    result = _impl(runs).restart_service(_call(service="nginx.service"))
    assert result.ok and result.run_uid == "run1"
    [(pb, options)] = runs.calls
    step = pb.plays[0].steps[0]
    assert pb.plays[0].hosts == "web1" and step.kind == "command"
    argv = step.args.command
    assert argv[:2] == ("sh", "-c") and argv[-1] == "nginx.service"   # data: an argument
    assert "nginx" not in argv[2] and 'systemctl restart -- "$1"' in argv[2]
    assert step.args.become and step.timeout == 30
    assert options.kind == "remediation" and options.takes_leases and options.wait == 30
    assert options.command == "remediation: incident 7 restart_service nginx.service"


@pytest.mark.parametrize("target", ["all", "web*", "role=web", "@failed", "nosuch"])
def test_a_target_that_is_not_exactly_one_inventory_host_is_refused(target):
    runs = Runs()
    result = _impl(runs).restart_service(_call(target, service="nginx.service"))
    assert not result.ok and "not a host of the inventory" in result.message
    assert runs.calls == []


@pytest.mark.parametrize("unit", ["", "-x", "a b", "a;reboot", "$(id)", "x\n", 5, None])
def test_a_unit_name_that_is_not_one_is_refused(unit):
    runs = Runs()
    assert not _impl(runs).restart_service(_call(service=unit)).ok
    assert runs.calls == []


def test_apply_role_names_the_role_or_converges_the_hosts_roles():
    runs = Runs()
    impl = _impl(runs)
    assert impl.apply_role(_call(role="node_exporter")).ok
    assert impl.apply_role(_call(role="")).ok
    assert not impl.apply_role(_call(role="../etc")).ok
    (first, o1), (second, _o2) = runs.calls
    assert first.plays[0].steps[0].kind == "apply_role"
    assert first.plays[0].steps[0].args == ["node_exporter"]
    assert second.plays[0].steps[0].kind == "apply_roles"
    assert o1.kind == "remediation" and "incident 7 apply_role node_exporter" in o1.command


def test_a_failed_or_held_run_is_a_failed_action():
    assert not _impl(Runs(status="failed")).restart_service(_call(service="x.service")).ok
    held = _impl(Runs(held={"web1": "held by run r9"})).restart_service(
        _call(service="x.service"))
    assert not held.ok and "held by run r9" in held.message


def test_service_active_takes_no_lease_and_power_cycle_without_its_helper_fails_cleanly():
    runs = Runs(status="ok")
    impl = _impl(runs)
    result = impl.service_active(VerifyCall("web1", {"service": "x.service"}, {}, 5))
    assert result.ok
    options = runs.calls[0][1]
    assert not options.takes_leases
    assert runs.calls[0][0].plays[0].steps[0].args.command == (
        "systemctl", "is-active", "--", "x.service")
    actions, verifiers = Actions(), Verifiers()
    register(actions, verifiers, impl)
    assert set(actions.names()) == {"restart_service", "apply_role", "playbook",
                                    "reprovision", "power_cycle", "restart_vm"}
    assert set(verifiers.names()) == {"service_active", "host_ssh", "prometheus"}
    try:
        import orchestrate.power_remedy  # noqa: F401
    except ImportError:
        result = call_action(actions, "power_cycle", _call())
        assert not result.ok and "not available" in result.message


@pytest.mark.parametrize("own,left,want", [(None, 60, 10), (30, 60, 30), (30, 20, 20),
                                            (5, 60, 10)])
def test_a_verification_probe_waits_as_long_as_the_hosts_own_ssh_connect_timeout(own, left,
                                                                                 want):
    """One probe's limit: the step's time left, at most PROBE_TIMEOUT (10 s) or the host's
    longer ssh.connect_timeout (a host whose sessions take 12 s would fail every 10 s probe)."""
    runs = Runs(status="ok")
    assert _impl(runs, own).service_active(VerifyCall("web1", {"service": "x"}, {}, left)).ok
    assert runs.calls[0][0].plays[0].steps[0].timeout == want


def test_promql_strings_quote_what_an_alert_holds():
    assert promql_string('web1"} or vector(1) #') == '"web1\\"} or vector(1) #"'
    assert promql_string("a\\b") == '"a\\\\b"'


def test_rules_reload_from_the_site_and_a_broken_file_keeps_the_old_ones(tmp_path):
    from inventory.errors import InventoryError
    from monitor.engine import Remediator
    from monitor.rules import SHIPPED_RULES, load_rules
    from orchestrate.remediation import reload_rules

    site = SimpleNamespace(playbooks_dir=tmp_path)
    actions, verifiers = Actions(), Verifiers()
    register(actions, verifiers, _impl(Runs()))
    eng = Remediator(None, load_rules(SHIPPED_RULES), actions, verifiers)
    (tmp_path / "remediation.yml").write_text(
        "rules:\n  - {name: only, match: {alertname: X}, steps: [{action: apply_role}]}\n",
        encoding="utf-8")
    reload_rules(eng, site)
    assert [r.name for r in eng.rules.rules] == ["only"]
    (tmp_path / "remediation.yml").write_text("rules: [{name: x}]\n", encoding="utf-8")
    with pytest.raises(InventoryError, match=r"remediation\.yml:1"):
        reload_rules(eng, site)
    assert [r.name for r in eng.rules.rules] == ["only"]


def test_the_playbook_action_runs_only_a_playbook_of_the_site_limited_to_the_host(tmp_path):
    (tmp_path / "fix.yml").write_text("- name: fix\n  hosts: all\n  steps:\n"
                                      "    - command: [echo, fixed]\n", encoding="utf-8")
    (tmp_path.parent / "elsewhere.yml").write_text("[]\n", encoding="utf-8")
    runs = Runs()
    site = SimpleNamespace(inventory=SimpleNamespace(hosts={"web1": object()}),
                           playbooks_dir=tmp_path)
    impl = OrchestrateActions(site, run=runs)
    for bad in ("../elsewhere.yml", "/etc/passwd", "nosuch", ".hidden"):
        assert not impl.playbook(_call(name=bad)).ok
    assert runs.calls == []
    assert impl.playbook(_call(name="fix")).ok
    [(pb, options)] = runs.calls
    assert options.limit == "web1" and options.kind == "remediation"
    assert pb.path.name == "fix.yml"


def test_build_remediator_uses_the_sites_rules_and_groups(tmp_path, run_cli):
    from inventory.site import Site
    from orchestrate.remediation import build_remediator

    assert run_cli("init", str(tmp_path / "s")).code == 0
    site = Site.open(tmp_path / "s")
    try:
        eng = build_remediator(site)
        assert [r.name for r in eng.rules.rules] == ["unit-failed", "guest-exporter-down",
                                                     "exporter-down", "powered-off",
                                                     "host-down", "vm-down",
                                                     "bmc-unreachable"]
        sizes = eng.group_sizes_fn()
        groups = tuple(eng.groups_of_fn("node2"))
        assert groups and all(sizes[g] >= 1 for g in groups)
        assert tuple(eng.groups_of_fn("nosuch")) == ()
        (tmp_path / "s" / "playbooks" / "remediation.yml").write_text(
            "rules:\n  - {name: r, match: {alertname: X}, steps: [{action: reboot}]}\n",
            encoding="utf-8")
        with pytest.raises(InventoryError, match=r"remediation\.yml:2: .*unknown action"):
            build_remediator(site)
    finally:
        site.close()


def test_decisions_are_counted_by_guard_and_verdict():
    from prometheus_client import CollectorRegistry, Counter

    from orchestrate.remediation import decision_counter

    registry = CollectorRegistry()
    counter = Counter("decisions", "d", ["guard", "verdict"], registry=registry)
    observe = decision_counter(counter)
    observe("decision", {"guard": None, "verdict": "act"})
    observe("decision", {"guard": "cooldown", "verdict": "suppressed"})
    observe("action", {"outcome": "ok"})
    assert registry.get_sample_value("decisions_total", {"guard": "none",
                                                          "verdict": "act"}) == 1
    assert registry.get_sample_value("decisions_total", {"guard": "cooldown",
                                                          "verdict": "suppressed"}) == 1


@pytest.mark.parametrize(("args", "want"), [({}, "cycle"), ({"if_on": "leave"}, "leave"),
                                            ({"if_on": "cycle"}, "cycle")])
def test_power_cycle_passes_if_on_and_refuses_anything_else(monkeypatch, args, want):
    import orchestrate.power_remedy as power_remedy

    seen = []
    monkeypatch.setattr(power_remedy, "power_cycle_node",
                        lambda site, host, timeout, stop, *, if_on: seen.append(if_on)
                        or (True, "ok", "r1"))
    impl = _impl(Runs())
    assert impl.power_cycle(_call(**args)).ok and seen == [want]
    bad = impl.power_cycle(_call(if_on="reboot; rm"))
    assert not bad.ok and "if_on is cycle or leave" in bad.message and seen == [want]

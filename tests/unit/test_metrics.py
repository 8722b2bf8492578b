"""metalchain's own metrics: every series read back from the text exposition of a fresh
registry over a real state store (SQLite on tmp_path); no sockets, no processes."""

from __future__ import annotations

import time

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inventory.errors import StateError
from inventory.state import StateStore
from inventory.state.incidents import IncidentInput
from monitor.metrics import ACTION_BUCKETS, build_registry, exposition
from monitor.power import PowerCache, PowerSample

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "state.db")
    yield s
    s.close()


class FakeTime:
    """Stands in for the ``time`` module of one store module: its next times, in order."""

    def __init__(self, times) -> None:
        self.times = times

    def time(self) -> float:
        return next(self.times)


def scrape(registry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, parsed from the exposition text."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def test_node_states_one_series_per_state_and_counts_per_state(store):
    store.set_node_state("n1", "enrolled")
    store.set_node_state("n2", "enrolled")
    store.set_node_state("n2", "powering_on")
    store.set_node_state("n2", "active")
    store.ensure_node("unmanaged1")
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_node_state", host="n2", state="active") == 1.0
    assert value(m, "metalchain_node_state", host="n2", state="enrolled") == 0.0
    assert value(m, "metalchain_node_state", host="n1", state="enrolled") == 1.0
    assert sum(v for (lbl, v) in m["metalchain_node_state"].items()
               if dict(lbl)["host"] == "n1") == 1.0
    assert not any(dict(lbl)["host"] == "unmanaged1" for lbl in m["metalchain_node_state"])
    assert value(m, "metalchain_nodes", state="active") == 1.0
    assert value(m, "metalchain_nodes", state="enrolled") == 1.0
    assert value(m, "metalchain_nodes", state="unmanaged") == 1.0
    assert value(m, "metalchain_nodes", state="provision_failed") == 0.0
    # read at scrape time: a change shows in the next scrape of the same registry
    registry = build_registry(store)[0]
    store.set_node_state("n1", "maintenance")
    m = scrape(registry)
    assert value(m, "metalchain_node_state", host="n1", state="maintenance") == 1.0
    assert value(m, "metalchain_node_state", host="n1", state="enrolled") == 0.0


def test_provisioning_durations_from_powering_on_to_active_or_failed(store, monkeypatch):
    clock = iter([100.0, 110.0, 160.0,              # n1: enrolled, powering_on, active (50 s)
                  200.0, 210.0, 900.0,              # n2: enrolled, powering_on, failed (690 s)
                  1000.0, 1040.0])                  # n2 retried: powering_on, active (40 s)
    monkeypatch.setattr("inventory.state.nodes.time", FakeTime(clock))
    for state in ("enrolled", "powering_on", "active"):
        store.set_node_state("n1", state)
    for state in ("enrolled", "powering_on", "provision_failed", "powering_on", "active"):
        store.set_node_state("n2", state)
    monkeypatch.undo()
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_provisioning_seconds_count", outcome="active") == 2.0
    assert value(m, "metalchain_provisioning_seconds_sum", outcome="active") == 90.0
    assert value(m, "metalchain_provisioning_seconds_bucket", outcome="active", le="30.0") == 0
    assert value(m, "metalchain_provisioning_seconds_bucket", outcome="active", le="60.0") == 2
    assert value(m, "metalchain_provisioning_seconds_bucket", outcome="active", le="+Inf") == 2
    assert value(m, "metalchain_provisioning_seconds_count", outcome="provision_failed") == 1
    assert value(m, "metalchain_provisioning_seconds_sum", outcome="provision_failed") == 690
    assert value(m, "metalchain_provisioning_seconds_bucket", outcome="provision_failed",
                 le="600.0") == 0
    assert value(m, "metalchain_provisioning_seconds_bucket", outcome="provision_failed",
                 le="1200.0") == 1


def test_runs_by_kind_and_status_and_the_host_results_they_changed(store):
    a = store.start_run("apply", "site.yml")
    store.end_run(a, "ok", {"counts": {"ok": 3, "changed": 2, "failed": 0, "unreachable": 0,
                                       "skipped": 0, "not_run": 0, "held": 0}})
    b = store.start_run("apply", "site.yml")
    store.end_run(b, "failed", {"counts": {"ok": 1, "changed": 1, "failed": 1}})
    c = store.start_run("drift", "<apply_roles>")
    store.end_run(c, "ok", {"counts": {"ok": 4}})
    store.start_run("remediation", "<power>")           # still running
    store.end_run(store.start_run("exec", "<command>"), "ok")   # no outcome recorded
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_runs_total", kind="apply", status="ok") == 1
    assert value(m, "metalchain_runs_total", kind="apply", status="failed") == 1
    assert value(m, "metalchain_runs_total", kind="drift", status="ok") == 1
    assert value(m, "metalchain_runs_total", kind="exec", status="ok") == 1
    assert value(m, "metalchain_runs_total", kind="remediation", status="running") is None
    assert value(m, "metalchain_runs_running", kind="remediation") == 1
    assert value(m, "metalchain_run_hosts_total", kind="apply", status="changed") == 3
    assert value(m, "metalchain_run_hosts_total", kind="apply", status="ok") == 4
    assert value(m, "metalchain_run_hosts_total", kind="apply", status="failed") == 1
    assert value(m, "metalchain_run_hosts_total", kind="drift", status="ok") == 4
    assert value(m, "metalchain_run_hosts_total", kind="drift", status="changed") is None


def test_drift_resources_per_host_zero_for_clean_hosts(store):
    store.set_node_state("web1", "active")
    store.set_node_state("web2", "active")
    store.save_drift("web1", [
        {"role": "base", "resource": "file /etc/motd", "status": "changed", "changes": ["x"]},
        {"role": "base", "resource": "service ssh", "status": "changed", "changes": ["y"]}])
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_drift_resources", host="web1") == 2
    assert value(m, "metalchain_drift_resources", host="web2") == 0
    store.save_drift("web1", [])
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_drift_resources", host="web1") == 0


def test_bmc_reachability_and_power_from_the_cache_only(store):
    cache = PowerCache()
    now = time.time()
    cache.record(PowerSample("n1", True, "on", now))
    cache.record(PowerSample("n2", True, "off", now))
    cache.record(PowerSample("n3", False, None, now, "no answer"))
    m = scrape(build_registry(store, bmc_status=cache.snapshot)[0])
    assert value(m, "metalchain_bmc_reachable", host="n1") == 1
    assert value(m, "metalchain_bmc_reachable", host="n3") == 0
    assert value(m, "metalchain_node_power_on", host="n1") == 1
    assert value(m, "metalchain_node_power_on", host="n2") == 0
    assert value(m, "metalchain_node_power_on", host="n3") is None   # unknown: no series
    assert value(m, "metalchain_bmc_poll_timestamp_seconds", host="n2") == pytest.approx(now)
    # without a poller there are no BMC series at all
    assert "metalchain_bmc_reachable" not in scrape(build_registry(store)[0])


def test_incidents_by_state(store):
    def alert(fp: str, status: str = "firing") -> IncidentInput:
        return IncidentInput(fingerprint=fp, starts_at="2026-12-01T10:00:00Z", status=status,
                             alertname="HostDown", target="web1")

    store.ingest([alert("a"), alert("b"), alert("c", "resolved")], "alertmanager")
    inc = store.list_incidents(states=["open"])[0]
    store.update_incident(inc.id, event="escalated", state="escalated")
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_incidents", state="open") == 1
    assert value(m, "metalchain_incidents", state="escalated") == 1
    assert value(m, "metalchain_incidents", state="resolved") == 1
    assert value(m, "metalchain_incidents", state="healed") == 0


def test_remediation_actions_and_durations_by_action_and_outcome(store, monkeypatch):
    inc = store.ingest([IncidentInput(fingerprint="f", starts_at="s", status="firing",
                                      alertname="UnitFailed", target="web1")], "event")[0]
    clock = iter([10.0, 11.5, 20.0, 70.0, 80.0, 80.2, 90.0])
    monkeypatch.setattr("inventory.state.incidents.time", FakeTime(clock))
    a1 = store.start_action(inc.incident_id, "web1", "restart_service", 1)
    store.finish_action(a1, "ok")                                   # 1.5 s
    a2 = store.start_action(inc.incident_id, "web1", "apply_role", 2)
    store.finish_action(a2, "failed")                               # 50 s
    a3 = store.start_action(inc.incident_id, "web1", "restart_service", 1)
    store.finish_action(a3, "ok")                                   # 0.2 s
    store.start_action(inc.incident_id, "web1", "power_cycle", 3)   # running
    monkeypatch.undo()
    m = scrape(build_registry(store)[0])
    assert value(m, "metalchain_remediation_actions_total", action="restart_service",
                 outcome="ok") == 2
    assert value(m, "metalchain_remediation_actions_total", action="apply_role",
                 outcome="failed") == 1
    assert value(m, "metalchain_remediation_actions_running", action="power_cycle") == 1
    h = "metalchain_remediation_action_seconds"
    assert value(m, f"{h}_count", action="restart_service", outcome="ok") == 2
    assert value(m, f"{h}_sum", action="restart_service", outcome="ok") == pytest.approx(1.7)
    assert value(m, f"{h}_bucket", action="restart_service", outcome="ok", le="0.5") == 1
    assert value(m, f"{h}_bucket", action="restart_service", outcome="ok", le="2.0") == 2
    assert value(m, f"{h}_bucket", action="apply_role", outcome="failed", le="30.0") == 0
    assert value(m, f"{h}_bucket", action="apply_role", outcome="failed", le="60.0") == 1
    assert value(m, f"{h}_bucket", action="apply_role", outcome="failed", le="+Inf") == 1
    assert len([k for k in m[f"{h}_bucket"] if dict(k)["action"] == "apply_role"]) == \
        len(ACTION_BUCKETS) + 1


def test_guard_decisions_and_ingest_latency_are_instruments_of_this_registry(store):
    registry, instruments = build_registry(store)
    instruments.guard_decisions.labels(guard="cooldown", verdict="suppressed").inc()
    instruments.guard_decisions.labels(guard="cooldown", verdict="suppressed").inc()
    instruments.guard_decisions.labels(guard="none", verdict="act").inc()
    instruments.ingest_seconds.labels(route="/v1/alerts", status="200").observe(0.003)
    instruments.observe_ingest("/v1/events", 0.0002, 401)      # the receiver's observer form
    m = scrape(registry)
    assert value(m, "metalchain_guard_decisions_total", guard="cooldown",
                 verdict="suppressed") == 2
    assert value(m, "metalchain_guard_decisions_total", guard="none", verdict="act") == 1
    assert value(m, "metalchain_ingest_seconds_count", route="/v1/alerts", status="200") == 1
    assert value(m, "metalchain_ingest_seconds_bucket", route="/v1/alerts", status="200",
                 le="0.0025") == 0
    assert value(m, "metalchain_ingest_seconds_bucket", route="/v1/alerts", status="200",
                 le="0.005") == 1
    assert value(m, "metalchain_ingest_seconds_count", route="/v1/events", status="401") == 1


def test_two_registries_are_independent_and_the_global_one_is_untouched(store):
    before = {m.name for m in prometheus_client.REGISTRY.collect()}
    r1, i1 = build_registry(store)
    r2, _ = build_registry(store)     # no "Duplicated timeseries" error
    i1.guard_decisions.labels(guard="kill_switch", verdict="suppressed").inc()
    assert value(scrape(r1), "metalchain_guard_decisions_total", guard="kill_switch",
                 verdict="suppressed") == 1
    assert value(scrape(r2), "metalchain_guard_decisions_total", guard="kill_switch",
                 verdict="suppressed") is None
    after = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert before == after and not any(n.startswith("metalchain") for n in after)


def test_a_failing_query_drops_that_collector_only_and_counts_the_error(store, monkeypatch):
    store.set_node_state("n1", "active")
    registry, _ = build_registry(store)

    def broken(*_a, **_k):
        raise StateError("state store sqlite:///x: OperationalError: disk I/O error")

    monkeypatch.setattr(store, "incident_counts", broken)
    m = scrape(registry)
    assert "metalchain_incidents" not in m
    assert value(m, "metalchain_node_state", host="n1", state="active") == 1
    assert value(m, "metalchain_collector_errors_total", collector="incidents") == 1


def test_host_reachability_from_the_prober_cache():
    from monitor.reach import ReachCache, ReachSample, ssh_banner_ok

    cache = ReachCache()
    cache.record(ReachSample("web1", True, 1.0))
    cache.record(ReachSample("web2", False, 1.0, "no route to host"))
    cache.forget(["gone"])
    m = scrape(build_registry_no_store(cache))
    assert value(m, "metalchain_host_reachable", host="web1", kind="", hypervisor="") == 1
    assert value(m, "metalchain_host_reachable", host="web2", kind="", hypervisor="") == 0
    assert ssh_banner_ok(b"SSH-2.0-OpenSSH_9.2p1\r\n") and not ssh_banner_ok(b"HTTP/1.1 400")


def build_registry_no_store(cache):
    from prometheus_client import CollectorRegistry

    from monitor.metrics import ReachCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReachCollector(cache.snapshot))
    return registry

"""The BMC poller: samples -> cache and incidents (pure tracker), and one poll over fake BMC
drivers into a real state store (SQLite on tmp_path); no processes, no sockets."""

from __future__ import annotations

import pytest

from inventory.errors import BmcError, InventoryError
from inventory.model import Bmc, Host, Inventory
from inventory.secrets import Secret
from inventory.state import StateStore
from inventory.state.leases import Owner
from monitor.power import (
    BMC_UNREACHABLE,
    POWERED_OFF,
    PowerCache,
    PowerSample,
    PowerTracker,
    iso_utc,
    power_fingerprint,
)
from monitor.settings import parse_settings
from orchestrate.power_watch import PowerWatch

pytestmark = pytest.mark.unit


def host(name: str) -> Host:
    return Host(name=name, address="10.0.0.1", groups=(),
                bmc=Bmc(address="127.0.0.1", port=6230, username="a", password=Secret("x")))


class FakeBmc:
    """A BMC driver whose answer the test sets; counts sessions opened and closed."""

    def __init__(self, answers: dict[str, str | None], name: str, log: list[str]) -> None:
        self.answers, self.name, self.log = answers, name, log
        log.append(f"open {name}")

    def power_status(self, timeout: float | None = None) -> str:
        answer = self.answers[self.name]
        if answer is None:
            raise BmcError(f"{self.name} (BMC 127.0.0.1:6230): no answer within {timeout} s")
        return answer

    def close(self) -> None:
        self.log.append(f"close {self.name}")


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "state.db")
    yield s
    s.close()


def on_at(t: float, power: str | None = "on", name: str = "n1") -> PowerSample:
    return PowerSample(name, power is not None, power, t, "" if power else "no answer")


# -- the tracker (pure) ----------------------------------------------------------------------

def test_an_active_node_seen_off_fires_once_and_resolves_under_the_same_key():
    t = PowerTracker()
    assert t.observe(on_at(100.0), active=True) == []
    fired = t.observe(on_at(101.25, "off"), active=True)
    assert len(fired) == 1
    inc = fired[0]
    assert (inc.alertname, inc.status, inc.target) == (POWERED_OFF, "firing", "n1")
    assert inc.fingerprint == power_fingerprint(POWERED_OFF, "n1") != \
        power_fingerprint(POWERED_OFF, "n2")
    assert inc.starts_at == iso_utc(101.25) and inc.starts_at.endswith(".250Z")
    assert dict(inc.labels) == {"alertname": "NodePoweredOff", "host": "n1", "source": "bmc"}
    assert t.observe(on_at(102.0, "off"), active=True) == []       # still off: nothing new
    back = t.observe(on_at(103.0), active=True)
    assert [(i.status, i.fingerprint, i.starts_at) for i in back] == \
        [("resolved", inc.fingerprint, inc.starts_at)]
    # a later outage is a new incident (a new startsAt)
    again = t.observe(on_at(200.0, "off"), active=True)
    assert again[0].starts_at == iso_utc(200.0) != inc.starts_at


def test_a_node_that_is_not_active_is_not_an_incident_when_off():
    t = PowerTracker()
    assert t.observe(on_at(1.0, "off"), active=False) == []
    fired = t.observe(on_at(2.0, "off"), active=True)
    assert fired[0].status == "firing"
    # put into maintenance (or reprovisioned) while off: resolved
    assert [i.status for i in t.observe(on_at(3.0, "off"), active=False)] == ["resolved"]


def test_a_silent_bmc_fires_bmc_unreachable_after_n_polls_and_keeps_the_power_incident():
    t = PowerTracker(unreachable_after=2)
    t.observe(on_at(1.0, "off"), active=True)
    assert t.observe(on_at(2.0, None), active=True) == []          # one miss: not yet
    fired = t.observe(on_at(3.0, None), active=True)
    assert [(i.alertname, i.status) for i in fired] == [(BMC_UNREACHABLE, "firing")]
    assert fired[0].fingerprint == power_fingerprint(BMC_UNREACHABLE, "n1")
    assert t.firing() == {"n1": {POWERED_OFF: iso_utc(1.0), BMC_UNREACHABLE: iso_utc(3.0)}}
    out = t.observe(on_at(4.0), active=True)
    assert sorted((i.alertname, i.status) for i in out) == [
        (BMC_UNREACHABLE, "resolved"), (POWERED_OFF, "resolved")]


def test_seeded_from_the_store_a_restarted_poller_resolves_the_old_incident():
    t = PowerTracker()
    t.seed("n1", POWERED_OFF, "2026-12-01T10:00:00.000Z")
    assert t.observe(on_at(5.0, "off"), active=True) == []         # same incident, not a 2nd
    out = t.observe(on_at(6.0), active=True)
    assert [(i.status, i.starts_at) for i in out] == [("resolved", "2026-12-01T10:00:00.000Z")]


def test_the_cache_keeps_the_latest_sample_per_host():
    cache = PowerCache()
    cache.record(on_at(1.0, "off"))
    cache.record(on_at(2.0))
    cache.record(on_at(2.0, name="n2"))
    cache.forget(["n2"])
    assert cache.snapshot() == {"n1": on_at(2.0)}


# -- one poll, real store --------------------------------------------------------------------

def make_watch(store, hosts, answers, log, busy=frozenset(), clock=None):
    inv = Inventory(hosts={h.name: h for h in hosts}, groups={}, all_vars={}, sources=[])
    got: list[list] = []
    watch = PowerWatch(lambda: inv, store, interval=1.0, timeout=0.5,
                       bmc_for=lambda h, timeout: FakeBmc(answers, h.name, log),
                       busy=lambda: busy, on_ingested=got.append,
                       clock=clock or (lambda: 1_000.0))
    return watch, got


def test_a_poll_ingests_a_powered_off_active_node_and_notifies_the_listeners(store):
    store.set_node_state("n1", "active")
    store.set_node_state("n2", "active")
    store.set_node_state("n3", "enrolled")
    answers = {"n1": "on", "n2": "on", "n3": "off"}
    log: list[str] = []
    watch, got = make_watch(store, [host("n1"), host("n2"), host("n3")], answers, log)
    try:
        assert watch.poll_once() == []
        assert store.list_incidents() == []
        answers["n2"] = "off"
        fired = watch.poll_once()
        assert [(i.alertname, i.target, i.status) for i in fired] == \
            [(POWERED_OFF, "n2", "firing")]
        [inc] = store.list_incidents()
        assert (inc.alertname, inc.target, inc.source, inc.state, inc.alert_status) == \
            (POWERED_OFF, "n2", "event", "open", "firing")
        assert inc.labels == {"alertname": "NodePoweredOff", "host": "n2", "source": "bmc"}
        assert len(got) == 1 and got[0][0].incident_id == inc.id and got[0][0].new
        assert watch.poll_once() == [] and len(got) == 1            # still off: no repeat
        snap = watch.cache.snapshot()
        assert snap["n2"].power == "off" and snap["n3"].power == "off" and snap["n1"].reachable
        answers["n2"] = "on"
        resolved = watch.poll_once()
        assert [i.status for i in resolved] == ["resolved"]
        inc = store.incident(inc.id)
        assert inc is not None and inc.alert_status == "resolved" and inc.state == "resolved"
        assert got[-1][0].resolved
        # one session per node, kept across polls
        assert sorted(log) == ["open n1", "open n2", "open n3"]
    finally:
        watch.stop()
    assert sorted(log)[:3] == ["close n1", "close n2", "close n3"]


def test_busy_leased_and_in_progress_nodes_are_not_polled_and_their_sessions_closed(store):
    for n in ("n1", "n2", "n3", "n4"):
        store.set_node_state(n, "active")
    answers = {"n1": "on", "n2": "on", "n3": "on", "n4": "on"}
    log: list[str] = []
    busy: set[str] = set()
    watch, _ = make_watch(store, [host(n) for n in answers], answers, log, busy=busy)
    try:
        watch.poll_once()
        busy.add("n1")                                   # e.g. the WatchSet adopted it
        assert store.acquire_leases(["n2"], Owner.this_process("run1", "metalchain power"))
        store.set_node_state("n4", "powering_on")        # the provisioner's now
        answers.update(n1="off", n2="off", n4="off")
        assert watch.poll_once() == []                   # none of them polled
        assert {"close n1", "close n2", "close n4"} <= set(log) and "close n3" not in log
        assert watch.cache.snapshot()["n1"].power == "on"   # the last answer stays
        assert log.count("open n3") == 1
    finally:
        watch.stop()


def test_a_silent_bmc_is_unreachable_in_the_cache_and_an_incident_after_two_polls(store):
    store.set_node_state("n1", "active")
    answers: dict[str, str | None] = {"n1": None}
    log: list[str] = []
    watch, _ = make_watch(store, [host("n1")], answers, log)
    try:
        assert watch.poll_once() == []
        assert not watch.cache.snapshot()["n1"].reachable
        assert "no answer" in watch.cache.snapshot()["n1"].error
        fired = watch.poll_once()
        assert [(i.alertname, i.status) for i in fired] == [(BMC_UNREACHABLE, "firing")]
        assert [i.alertname for i in store.list_incidents()] == [BMC_UNREACHABLE]
    finally:
        watch.stop()


def test_a_restarted_poller_resolves_the_incident_its_predecessor_fired(store):
    store.set_node_state("n1", "active")
    answers = {"n1": "off"}
    log: list[str] = []
    first, _ = make_watch(store, [host("n1")], answers, log)
    first.poll_once()
    first.stop()
    second, _ = make_watch(store, [host("n1")], answers, log, clock=lambda: 2_000.0)
    try:
        assert second.poll_once() == []                  # the same incident, not a second
        answers["n1"] = "on"
        assert [i.status for i in second.poll_once()] == ["resolved"]
        [inc] = store.list_incidents()
        assert inc.alert_status == "resolved" and inc.deliveries == 2
    finally:
        second.stop()


def test_a_host_leaving_the_inventory_resolves_its_incident_and_leaves_the_cache(store):
    store.set_node_state("n1", "active")
    answers = {"n1": "off"}
    log: list[str] = []
    hosts = {"n1": host("n1")}
    inv = Inventory(hosts=hosts, groups={}, all_vars={}, sources=[])
    watch = PowerWatch(lambda: inv, store, timeout=0.5,
                       bmc_for=lambda h, timeout: FakeBmc(answers, h.name, log))
    try:
        watch.poll_once()
        hosts.clear()
        assert [i.status for i in watch.poll_once()] == ["resolved"]
        assert watch.cache.snapshot() == {} and "close n1" in log
    finally:
        watch.stop()


def test_poll_settings_parse_with_defaults_and_bounds(tmp_path):
    s = parse_settings({}, tmp_path)
    assert (s.bmc_poll_interval, s.bmc_poll_timeout) == (5.0, 2.0)
    s = parse_settings({"bmc_poll_interval": 1, "bmc_poll_timeout": 0.5}, tmp_path)
    assert (s.bmc_poll_interval, s.bmc_poll_timeout) == (1.0, 0.5)
    with pytest.raises(InventoryError, match=r"monitor\.bmc_poll_interval"):
        parse_settings({"bmc_poll_interval": 0}, tmp_path)

"""Node watchers: when they wake (callbacks, deadlines, the slow backstop), with fake clocks,
fake BMCs and fake SSH probes; the state store is a real SQLite file."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

import pytest

from inventory.model import Bmc, Host, Inventory, Provisioning
from inventory.secrets import Secret
from inventory.state import StateStore
from provision import lifecycle as lc
from provision.watch import (
    POWER_SYNC_INTERVAL,
    REMOTE_STORE_POLL,
    SSH_PROBE_INTERVAL,
    NodeChanges,
    NodeWatcher,
    Schedule,
    Step,
    WatchSet,
    next_step,
)

pytestmark = pytest.mark.unit

NODE = Host(name="n1", address="10.0.0.11", groups=(),
            bmc=Bmc(address="127.0.0.1", username="a", password=Secret("x")),
            provision=Provisioning(mac="52:54:00:00:00:01", ip="10.0.0.11"))
T = {**lc.DEFAULT_TIMEOUTS, lc.INSTALLING: 600.0, lc.REBOOTING: 180.0, lc.INSTALLED: 30.0}


# -- next_step: the pure decision -----------------------------------------------------------------

@pytest.mark.parametrize("state,since,now,sched,deadline,expected", [
    # installing, nothing due: sleep until the power sync (the earliest wake-up)
    (lc.INSTALLING, 0, 10, Schedule(power_due=30), None, Step("wait", 30)),
    # the state's timeout comes before the power sync: wake at the timeout
    (lc.INSTALLING, 0, 590, Schedule(power_due=620), None, Step("wait", 600)),
    (lc.INSTALLING, 0, 600, Schedule(power_due=620), None, Step("timeout", 600)),
    # the run's deadline is a wake-up too, and fires after the state timeout is checked
    (lc.INSTALLING, 0, 10, Schedule(power_due=30), 20, Step("wait", 20)),
    (lc.INSTALLING, 0, 20, Schedule(power_due=30), 20, Step("deadline", 20)),
    (lc.INSTALLING, 0, 700, Schedule(power_due=30), 20, Step("timeout", 700)),
    (lc.INSTALLING, 0, 30, Schedule(power_due=30), None, Step("power", 30)),
    # a store re-read only when one is scheduled (remote boot server / backstop)
    (lc.INSTALLING, 0, 10, Schedule(power_due=30, store_due=12), None, Step("wait", 12)),
    (lc.INSTALLING, 0, 12, Schedule(power_due=30, store_due=12), None, Step("reread", 12)),
    # rebooting: SSH probes at their interval; no power sync while rebooting
    (lc.REBOOTING, 0, 5, Schedule(ssh_due=6, power_due=1), None, Step("wait", 6)),
    (lc.REBOOTING, 0, 6, Schedule(ssh_due=6, power_due=1), None, Step("ssh", 6)),
    # installed and nobody moved it on within the grace: reboot; before that, probe SSH
    (lc.INSTALLED, 0, 2, Schedule(ssh_due=3), None, Step("wait", 3)),
    (lc.INSTALLED, 0, 5, Schedule(ssh_due=9), None, Step("reboot", 5)),
    # no recorded entry time: no timeout, the power sync is the only wake-up
    (lc.POWERING_ON, None, 5, Schedule(power_due=30), None, Step("wait", 30)),
])
def test_next_step(state, since, now, sched, deadline, expected):
    assert next_step(state, since, now, T, sched, deadline) == expected


# -- NodeWatcher with a fake clock ---------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = time.time()
        self.start = self.t

    def __call__(self) -> float:
        return self.t

    @property
    def elapsed(self) -> float:
        return self.t - self.start


class ScriptedChanges(NodeChanges):
    """Waiting advances the fake clock; events (at elapsed seconds) happen on the way."""

    def __init__(self, clock: Clock, events: dict[float, Callable[[], None]] | None = None):
        super().__init__()
        self.clock = clock
        self.events = dict(sorted((events or {}).items()))
        self.waits: list[float] = []

    def wait(self, node: str, seen: int, timeout: float) -> bool:
        self.waits.append(timeout)
        until = self.clock.t + max(0.0, timeout)
        for at in list(self.events):
            if self.clock.start + at <= until:
                self.clock.t = max(self.clock.t, self.clock.start + at)
                self.events.pop(at)()
                if self.version(node) != seen:
                    return True
        self.clock.t = until
        return self.version(node) != seen


class FakeBmc:
    def __init__(self, power: str = "on") -> None:
        self.power = power
        self.status_calls = 0
        self.closed = False

    def power_status(self, timeout: float | None = None) -> str:
        self.status_calls += 1
        return self.power

    def close(self) -> None:
        self.closed = True


def counting_store(tmp_path) -> tuple[StateStore, dict[str, int]]:
    store = StateStore.open_file(tmp_path / "s.db")
    reads = {"node": 0}
    original = store.node

    def node(name: str):
        reads["node"] += 1
        return original(name)

    store.node = node  # type: ignore[method-assign]
    return store, reads


def put(store: StateStore, *states: str) -> None:
    for to in states:
        store.set_node_state("n1", to, "test")


def test_timeout_fires_on_time_with_only_the_slow_backstop_in_between(tmp_path):
    clock, bmc = Clock(), FakeBmc()
    store, reads = counting_store(tmp_path)
    put(store, lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING)
    changes = ScriptedChanges(clock)
    final = NodeWatcher(NODE, store, timeouts=T, changes=changes, bmc=bmc, clock=clock).run()
    assert final == lc.FAILED
    assert "timed out after 600s in installing" in store.node("n1").reason
    assert 600 <= clock.elapsed < 600.5          # on time, not a poll interval late
    # 600 s of watching: one power check and one store re-read per 30 s, nothing else.
    assert bmc.status_calls == 600 // POWER_SYNC_INTERVAL   # at 30, 60, ... 600 s
    assert reads["node"] <= 2 * (600 // POWER_SYNC_INTERVAL) + 3
    assert all(w <= POWER_SYNC_INTERVAL for w in changes.waits)


def test_a_callback_wakes_the_watcher_and_ssh_probes_run_at_their_interval(tmp_path):
    store, reads = counting_store(tmp_path)
    put(store, lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING)
    clock, bmc = Clock(), FakeBmc()
    probes: list[float] = []

    def done() -> None:   # what DeployService.on_done does, then its notification
        put(store, lc.INSTALLED, lc.REBOOTING)
        changes.notify("n1")

    def probe(host: Host, pinned: str | None) -> bool:
        probes.append(clock.elapsed)
        return len(probes) == 4

    changes = ScriptedChanges(clock, {12.0: done})
    seen: list[str] = []
    final = NodeWatcher(NODE, store, timeouts=T, changes=changes, bmc=bmc, clock=clock,
                        ssh_probe=probe, on_change=lambda n, s, r: seen.append(s)).run()
    assert final == lc.ACTIVE
    assert seen == [lc.INSTALLING, lc.REBOOTING, lc.ACTIVE]
    assert probes[0] == pytest.approx(12.0)   # woken by the callback, not at the next sync
    assert [round(b - a, 3) for a, b in itertools.pairwise(probes)] == \
        [SSH_PROBE_INTERVAL] * 3
    assert bmc.status_calls == 0          # nothing was due before the callback
    # start, after the callback, the compare-and-set of the move to active, after it
    assert reads["node"] == 4


def test_power_off_seen_by_the_sync_fails_the_node(tmp_path):
    store, _ = counting_store(tmp_path)
    put(store, lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING)
    clock, bmc = Clock(), FakeBmc(power="off")
    final = NodeWatcher(NODE, store, timeouts=T, changes=ScriptedChanges(clock), bmc=bmc,
                        clock=clock, power_first=0.0).run()
    assert final == lc.FAILED and bmc.status_calls == 1 and clock.elapsed == 0
    assert store.node("n1").reason == "powered off while pxe_booting"


def test_without_notifications_the_store_is_re_read_at_the_remote_poll(tmp_path):
    """The boot server runs in another process: a bounded poll is the only way to learn."""
    store, reads = counting_store(tmp_path)
    put(store, lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING)
    clock = Clock()
    # Another process finishes the install at 9 s; nobody notifies this one.
    changes = ScriptedChanges(clock, {9.0: lambda: put(store, lc.INSTALLED, lc.REBOOTING,
                                                       lc.ACTIVE)})
    final = NodeWatcher(NODE, store, timeouts=T, changes=changes, clock=clock,
                        store_poll=REMOTE_STORE_POLL).run()
    assert final == lc.ACTIVE
    assert 9 <= clock.elapsed <= 9 + REMOTE_STORE_POLL
    assert reads["node"] == 1 + int(clock.elapsed // REMOTE_STORE_POLL)


def test_run_deadline_fails_the_node(tmp_path):
    store, _ = counting_store(tmp_path)
    put(store, lc.ENROLLED, lc.POWERING_ON)
    clock = Clock()
    final = NodeWatcher(NODE, store, timeouts=T, changes=ScriptedChanges(clock), clock=clock,
                        deadline=clock.t + 7).run()
    assert final == lc.FAILED and clock.elapsed == pytest.approx(7)
    assert store.node("n1").reason == "provision run deadline passed while powering_on"


# -- WatchSet: serve's watchers ---------------------------------------------------------------

def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_watch_set_adopts_on_callback_keeps_one_bmc_session_and_stops(tmp_path):
    store = StateStore.open_file(tmp_path / "s.db")
    put(store, lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING)
    inventory = Inventory(hosts={"n1": NODE}, groups={}, all_vars={}, sources=[])
    sessions: list[FakeBmc] = []
    lock = threading.Lock()

    def bmc_for(host: Host, timeout: float) -> FakeBmc:
        with lock:
            sessions.append(FakeBmc())
            return sessions[-1]

    changes = NodeChanges()
    actions: list[tuple[str, str]] = []
    watchers = WatchSet(lambda: inventory, store, timeouts=T, changes=changes,
                        bmc_for=bmc_for, on_action=lambda n, w: actions.append((n, w)))
    changes.subscribe(watchers.adopt)
    try:
        changes.notify("n1")                     # e.g. the installer's progress callback
        wait_until(lambda: bool(sessions) and sessions[0].status_calls == 1)
        for _ in range(5):                       # more callbacks: same watcher, same session
            changes.notify("n1")
        watchers.sync()
        assert watchers.watching() == {"n1"} and len(sessions) == 1
        assert not changes.wait("ghost", 0, 0) and not watchers.adopt("ghost")
        store.set_node_state("n1", lc.FAILED, "operator")
        changes.notify("n1")
        wait_until(lambda: watchers.watching() == set())
        assert len(sessions) == 1 and sessions[0].closed
        assert sessions[0].status_calls == 1     # power synced once, at adoption
        assert actions == []                     # the operator failed it, not the watcher
    finally:
        watchers.stop(timeout=5)


def test_watch_set_stop_wakes_waiting_watchers(tmp_path):
    store = StateStore.open_file(tmp_path / "s.db")
    put(store, lc.ENROLLED, lc.POWERING_ON)
    inventory = Inventory(hosts={"n1": NODE}, groups={}, all_vars={}, sources=[])
    watchers = WatchSet(lambda: inventory, store, timeouts=T, changes=NodeChanges(),
                        bmc_for=None)
    watchers.sync()
    assert watchers.watching() == {"n1"}
    started = time.monotonic()
    watchers.stop(timeout=5)
    wait_until(lambda: watchers.watching() == set())
    assert time.monotonic() - started < 2
    assert store.node("n1").state == lc.POWERING_ON   # stopping judges nothing

"""Host leases: the decision (may I take this host?), the store's acquire / heartbeat /
release / take-over / break, the command a lease shows, and the context manager's release."""

from __future__ import annotations

import pytest

from inventory.state import StateStore
from inventory.state.leases import (
    EXPIRED,
    FREE,
    HELD,
    MINE,
    OWNER_GONE,
    Lease,
    Owner,
    lease_claim,
)
from orchestrate.leases import describe_command, host_leases

pytestmark = pytest.mark.unit

ME = Owner("run-me", "metalchain apply --role base all", "ctl1", 100, "5000")
NOW = 1_000_000.0


def lease(holder: str = "run-other", owner_host: str = "ctl1", pid: int = 200,
          expires_at: float = NOW + 30) -> Lease:
    return Lease("h1", holder, owner_host, pid, "7000", "metalchain drift --fix all",
                 NOW - 30, NOW - 5, expires_at)


def alive(pid: int, start: str | None) -> bool:
    return pid == 200 and start == "7000"


def dead(pid: int, start: str | None) -> bool:
    return False


@pytest.mark.parametrize("current,liveness,verdict", [
    (None, alive, FREE),
    (lease(holder="run-me"), alive, MINE),                     # a resumed run: its own lease
    (lease(), alive, HELD),                                    # live owner, unexpired
    (lease(expires_at=NOW), alive, EXPIRED),                   # heartbeat stopped
    (lease(), dead, OWNER_GONE),                               # kill -9 on this machine
    (lease(owner_host="ctl2"), dead, HELD),                    # another machine: wait expiry
    (lease(owner_host="ctl2", expires_at=NOW - 1), dead, EXPIRED),
], ids=["none", "mine", "held", "expired", "owner-gone", "other-machine", "other-expired"])
def test_lease_claim(current, liveness, verdict):
    assert lease_claim(current, ME, NOW, liveness) == verdict


def test_a_recycled_pid_is_not_the_owner():
    # Same pid, another start time: the owner is gone even though "pid 200" lives.
    assert lease_claim(lease(), ME, NOW, lambda pid, start: start == "9999") == OWNER_GONE


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "state" / "m.db")
    yield s
    s.close()


A = Owner("run-a", "metalchain apply --role base fleet", "ctl1", 11, "1")
B = Owner("run-b", "metalchain drift --fix fleet", "ctl1", 22, "2")


def test_acquire_takes_free_hosts_and_names_the_holder_of_the_others(store):
    got = store.acquire_leases(["h1", "h2"], A, now=NOW, alive=lambda p, s: True)
    assert got.acquired == ["h1", "h2"] and not got.held
    got = store.acquire_leases(["h2", "h3"], B, now=NOW + 1, alive=lambda p, s: True)
    assert got.acquired == ["h3"] and list(got.held) == ["h2"]
    assert got.held["h2"].describe() == (
        "held by run run-a (pid 11 on ctl1, `metalchain apply --role base fleet`) since "
        "1970-01-12T13:46:40Z")
    assert {x.host: x.holder for x in store.list_leases()} == {
        "h1": "run-a", "h2": "run-a", "h3": "run-b"}


def test_all_or_none_takes_nothing_when_one_host_is_held(store):
    store.acquire_leases(["h2"], A, now=NOW, alive=lambda p, s: True)
    got = store.acquire_leases(["h1", "h2"], B, now=NOW, alive=lambda p, s: True,
                               all_or_none=True)
    assert got.acquired == [] and list(got.held) == ["h2"]
    assert [x.host for x in store.list_leases()] == ["h2"]


def test_heartbeat_extends_and_release_gives_back(store):
    store.acquire_leases(["h1", "h2"], A, ttl=60, now=NOW)
    assert store.heartbeat_leases("run-a", ttl=60, now=NOW + 50) == 2
    assert {x.expires_at for x in store.list_leases()} == {NOW + 110}
    # B at NOW + 100 finds them alive thanks to the heartbeat.
    got = store.acquire_leases(["h1"], B, now=NOW + 100, alive=lambda p, s: True)
    assert got.acquired == [] and "h1" in got.held
    assert store.release_leases("run-a", ["h1"]) == 1
    assert [x.host for x in store.list_leases()] == ["h2"]
    assert store.release_leases("run-a") == 1 and store.list_leases() == []


def test_an_expired_or_dead_owners_lease_is_taken_over_and_audited(store):
    store.acquire_leases(["h1"], A, ttl=60, now=NOW)
    got = store.acquire_leases(["h1"], B, now=NOW + 61, alive=lambda p, s: True)
    assert got.acquired == ["h1"]
    reason, old = got.taken_over["h1"]
    assert reason == EXPIRED and old.holder == "run-a"
    got = store.acquire_leases(["h1"], A, now=NOW + 62, alive=lambda p, s: False)
    assert got.taken_over["h1"][0] == OWNER_GONE
    assert [e["action"] for e in store.audit_log("h1")][:2] == ["lease_take_over"] * 2
    # A heartbeat of the holder that lost it keeps nothing.
    assert store.heartbeat_leases("run-b", now=NOW + 63) == 0


def test_the_same_holder_reacquires_its_own_lease_keeping_since(store):
    store.acquire_leases(["h1"], A, now=NOW)
    got = store.acquire_leases(["h1"], A, now=NOW + 5)
    assert got.acquired == ["h1"] and not got.taken_over
    assert store.list_leases()[0].acquired_at == NOW


def test_break_lease_removes_whoever_holds_it(store):
    store.acquire_leases(["h1"], A, now=NOW)
    gone = store.break_lease("h1")
    assert gone is not None and gone.holder == "run-a" and store.list_leases() == []
    assert store.break_lease("h1") is None
    assert store.audit_log("h1")[0]["action"] == "lease_break"


def test_host_leases_releases_on_keyboard_interrupt(store):
    with pytest.raises(KeyboardInterrupt), host_leases(store, ["h1"], "run-k", "x") as grant:
        assert grant.acquired == ["h1"] and store.list_leases()[0].holder == "run-k"
        raise KeyboardInterrupt
    assert store.list_leases() == []


def test_host_leases_heartbeats_while_the_block_runs(store):
    import threading
    beat = threading.Event()
    real = store.heartbeat_leases

    def counting(holder, **kw):
        n = real(holder, **kw)
        beat.set()
        return n

    store.heartbeat_leases = counting
    with host_leases(store, ["h1"], "run-h", "x", ttl=5, heartbeat=0.01):
        first = store.list_leases()[0].expires_at
        assert beat.wait(5)
        assert store.list_leases()[0].expires_at >= first


@pytest.mark.parametrize("argv,text", [
    (["/v/bin/metalchain", "apply", "--role", "base", "-e", "pw=s3cret", "fleet"],
     "metalchain apply --role base -e pw=... fleet"),
    (["metalchain", "run", "site", "--extra-var=token=abc", "-etoken2=xyz"],
     "metalchain run site --extra-var=token=... -etoken2=..."),
    (["metalchain", "drift", "--fix", "web*"], "metalchain drift --fix 'web*'"),
])
def test_describe_command_leaves_out_extra_var_values(argv, text):
    assert describe_command(argv) == text

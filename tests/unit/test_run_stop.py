"""Stopping a run (Ctrl-C in the CLI, a cancel from serve): the Stop's states, the runner
winding down on it, ``@failed`` with the hosts a run did not reach, and runs whose process is
gone read as interrupted. Fake step kinds and an SQLite state store in tmp_path; no processes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from inventory.state.runowner import RunOwner, seen_status, this_process
from orchestrate.runner import failed_set, last_failed_hosts
from orchestrate.steps import StepOutcome
from orchestrate.stop import ABORTING, RUNNING, STOPPING, Stop
from tests.unit.test_runner import HOSTS, Harness, Kind, inv, ok, playbook, step, store

pytestmark = pytest.mark.unit
__all__ = ["inv", "store"]   # fixtures


def test_stop_goes_forward_and_announces_each_state_once():
    s = Stop()
    assert (s.state, s.stopping, s.aborting, s.news()) == (RUNNING, False, False, None)
    assert s.request("SIGINT") == STOPPING and s.stopping and not s.aborting
    assert s.news() == STOPPING and s.news() is None
    assert s.request() == ABORTING and s.aborting and s.source == "SIGINT"
    assert s.request() == ABORTING and s.news() == ABORTING and s.news() is None
    t = Stop()
    t.abort("serve")
    assert t.aborting and t.news() == ABORTING


@pytest.mark.parametrize(("last", "outcome", "expected"), [
    ({"a": "ok", "b": "failed", "c": "unreachable"}, None, ["b", "c"]),
    ({"a": "ok", "b": "intent"}, {"not_run": ["c", "d"]}, ["b", "c", "d"]),
    ({"a": "changed"}, {"not_run": ["c"], "incomplete": ["a"]}, ["c", "a"]),
    ({"a": "failed"}, {"not_run": ["a"], "incomplete": []}, ["a"]),
    ({}, {}, []),
    # killed: only the plan is known; hosts never journaled were not reached
    ({"a": "intent", "b": "ok"}, {"planned": ["a", "b", "c"]}, ["a", "c"]),
    # ended: its not_run stands, the plan is history
    ({"a": "ok"}, {"planned": ["a", "b", "c"], "not_run": ["c"]}, ["c"]),
])
def test_failed_set_is_failed_in_doubt_and_not_reached(last, outcome, expected):
    assert failed_set(last, outcome) == expected


@pytest.mark.parametrize(("row", "alive", "expected"), [
    ({"status": "ok", "owner_host": "c1", "pid": 7}, False, "ok"),
    ({"status": "running", "owner_host": None, "pid": None}, False, "running"),
    ({"status": "running", "owner_host": "c1", "pid": 7}, True, "running"),
    ({"status": "running", "owner_host": "c1", "pid": 7}, False, "interrupted"),
    ({"status": "running", "owner_host": "c2", "pid": 7, "heartbeat_at": 95.0}, False,
     "running"),
    ({"status": "running", "owner_host": "c2", "pid": 7, "heartbeat_at": 5.0}, True,
     "interrupted"),
    ({"status": "running", "owner_host": "c2", "pid": 7, "heartbeat_at": None}, True,
     "interrupted"),
])
def test_a_run_whose_owner_is_gone_reads_interrupted(row, alive, expected):
    asked: list[tuple[int, str]] = []

    def probe(pid: int, start: str) -> bool:
        asked.append((pid, start))
        return alive

    got = seen_status(row["status"], owner_host=row["owner_host"], pid=row["pid"],
                      pid_start="42", heartbeat_at=row.get("heartbeat_at"), started_at=0.0,
                      here="c1", now=100.0, alive=probe, stale_after=60.0)
    assert got == expected
    # Only the owner's own host asks the pid (and with its start time).
    assert asked == ([(7, "42")] if row["status"] == "running" and row["owner_host"] == "c1"
                     else [])


def test_the_store_records_the_owner_and_reads_liveness(store):
    me = this_process("metalchain run site.yml")
    live = store.start_run("playbook", "site.yml", {}, owner=me)
    dead = store.start_run("playbook", "site.yml", {},
                           owner=RunOwner(me.host, me.pid, str(int(me.pid_start) + 1), "x"))
    old = store.start_run("playbook", "site.yml", {})
    by_uid = {r["uid"]: r for r in store.list_runs()}
    assert by_uid[live]["status"] == "running" and by_uid[live]["owner"]["pid"] == me.pid
    assert by_uid[dead]["status"] == "interrupted"
    assert by_uid[dead]["recorded_status"] == "running"
    assert by_uid[old]["status"] == "running" and by_uid[old]["owner"] is None
    assert store.get_run(dead)["status"] == "interrupted"


def test_failed_hosts_include_the_hosts_a_run_did_not_reach(store):
    uid = store.start_run("playbook", "p.yml", {"limit": None},
                          outcome={"planned": ["h01", "h02", "h03", "h04", "h05"]})
    for host, status in (("h01", "failed"), ("h02", "ok")):
        store.journal_outcome(store.journal_intent(uid, host, 0, "s"), status)
    assert store.get_run(uid)["outcome"] == {"planned": ["h01", "h02", "h03", "h04", "h05"]}
    store.end_run(uid, "failed", {"not_run": ["h03", "h04"], "incomplete": []})
    assert last_failed_hosts(store) == ["h01", "h03", "h04"]
    run = store.get_run(uid)
    assert run["args"] == {"limit": None} and run["outcome"]["not_run"] == ["h03", "h04"]
    assert run["outcome"]["planned"][-1] == "h05"


def _blocking(started: dict[str, threading.Event], release: threading.Event):
    def fn(ctx: Any, args: Any) -> StepOutcome:
        ctx.connection()
        started[ctx.host].set()
        release.wait(20)
        return StepOutcome("changed", "slept")
    return fn


def _run_in_thread(h: Harness, pb: Any, **kw: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        out["report"], out["events"] = h.run(pb, **kw)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def test_a_stop_finishes_the_steps_in_progress_and_starts_nothing_new(inv, store, tmp_path):
    started = {host: threading.Event() for host in HOSTS}
    release = threading.Event()
    h = Harness(inv, store, tmp_path, Kind("slow", _blocking(started, release)),
                Kind("ok", ok), parallelism=2)
    stop = Stop()
    pb = playbook(("h01,h02,h03,h04", (step(0, "slow"), step(1, "ok"))))
    t, out = _run_in_thread(h, pb, stop=stop)
    try:
        assert started["h01"].wait(10) and started["h02"].wait(10)
        stop.request("test")
        deadline = time.monotonic() + 5
        while not any('"run_stopping"' in p.read_text() for p in tmp_path.glob("*.jsonl")):
            assert time.monotonic() < deadline, "no run_stopping event"
            time.sleep(0.01)
    finally:
        release.set()
    t.join(10)
    report, events = out["report"], out["events"]
    assert report.interrupted == "interrupted" and report.exit_code == 130
    assert sorted(report.incomplete) == ["h01", "h02"] and report.not_run == ["h03", "h04"]
    assert all(len(report.hosts[x].steps) == 1 for x in ("h01", "h02"))
    assert not started["h03"].is_set()
    ack = next(e for e in events if e["event"] == "run_stopping")
    assert ack["state"] == "stopping" and ack["hosts"] == ["h01", "h02"]
    assert ack["steps"] == {"h01": "slow-0", "h02": "slow-0"}
    assert events[-1]["event"] == "run_end" and events[-1]["interrupted"] == "interrupted"
    assert events[-1]["not_run"] == ["h03", "h04"]
    assert [(e.host, e.status) for e in store.journal_entries(report.uid)] in (
        [("h01", "changed"), ("h02", "changed")], [("h02", "changed"), ("h01", "changed")])


def test_a_second_request_aborts_the_steps_in_progress(inv, store, tmp_path):
    started = {host: threading.Event() for host in HOSTS}
    release = threading.Event()
    h = Harness(inv, store, tmp_path, Kind("slow", _blocking(started, release)),
                parallelism=2)
    stop = Stop()
    t, out = _run_in_thread(h, playbook(("h01,h02,h03", (step(0, "slow"),))), stop=stop)
    try:
        assert started["h01"].wait(10) and started["h02"].wait(10)
        stop.request()
        stop.request()
        t.join(5)
        assert not t.is_alive(), "the abort did not end the run"
    finally:
        release.set()
    report, events = out["report"], out["events"]
    assert report.interrupted == "aborted" and report.exit_code == 130
    assert report.not_run == ["h03"]
    for host in ("h01", "h02"):
        o = report.hosts[host].steps[0].outcome
        assert o.status == "failed" and o.message.startswith("aborted while this step ran")
        assert h.factory.made[host][0].closed.is_set()
    journal = store.journal_entries(report.uid)
    assert {e.status for e in journal} == {"failed"} and len(journal) == 2
    assert all("aborted" in e.detail["message"] for e in journal)
    assert [e["state"] for e in events if e["event"] == "run_stopping"][-1] == "aborting"


def test_a_stop_before_the_run_runs_nothing(inv, store, tmp_path):
    h = Harness(inv, store, tmp_path, Kind("ok", ok))
    stop = Stop()
    stop.request()
    report, events = h.run(playbook(("h01,h02", (step(0, "ok"),)), ("h03", (step(0, "ok"),))),
                           stop=stop)
    assert report.hosts == {} and report.not_run == ["h01", "h02", "h03"]
    assert report.interrupted == "interrupted" and store.journal_entries(report.uid) == []
    assert "batch_start" not in [e["event"] for e in events]


def test_signals_only_request_the_stop_and_are_restored():
    import os
    import signal

    from orchestrate.commands.common import stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.state == STOPPING and stop.source == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.state == ABORTING
        with pytest.raises(KeyboardInterrupt):   # a third: the abort itself hangs
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_heartbeat_beats_while_the_run_runs(store):
    from sqlalchemy import select

    from inventory.state.schema import runs
    from orchestrate.runs import _heartbeat

    uid = store.start_run("playbook", "p.yml", {}, owner=this_process("x"))

    def beat_at() -> float:
        with store._read() as conn:
            return conn.execute(select(runs.c.heartbeat_at).where(runs.c.uid == uid)).scalar()

    first = beat_at()
    with _heartbeat(store, uid, every=0.01):
        deadline = time.monotonic() + 5
        while beat_at() == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.01)
    # stopped (and joined) with the run
    assert not any(t.name == f"heartbeat-{uid}" for t in threading.enumerate())


@pytest.mark.parametrize("source,expected", [
    ("SIGINT", "stopping after the current step on h1, h2; Ctrl-C again to abort"),
    ("SIGTERM", "stopping after the current step on h1, h2; Ctrl-C again to abort"),
    ("a host lease was lost", "stopping after the current step on h1, h2; a host lease was lost"),
])
def test_the_acknowledgement_says_who_stopped_the_run(source, expected):
    from orchestrate.progress import stopping_line

    ev = {"event": "run_stopping", "state": "stopping", "hosts": ["h1", "h2"], "source": source}
    assert stopping_line(ev) == expected

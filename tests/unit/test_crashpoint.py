"""The crash points' switch (runtime/crashpoint.py): parsed, and inert when unset."""

from __future__ import annotations

import pytest

from runtime import crashpoint

pytestmark = pytest.mark.unit


def test_names_and_counts_are_parsed():
    assert crashpoint._wanted("run.step_done") == {"run.step_done": 1}
    assert crashpoint._wanted(" a#3, b ,c#0,d#x,") == {"a": 3, "b": 1, "c": 1, "d": 1}


def test_unset_or_another_name_does_nothing(monkeypatch):
    monkeypatch.delenv(crashpoint.ENV, raising=False)
    crashpoint.crash_point("run.step_done")
    monkeypatch.setenv(crashpoint.ENV, "serve.claimed")
    crashpoint.crash_point("run.step_done")


def test_the_named_hit_sends_sigkill_to_this_process(monkeypatch):
    sent = []
    monkeypatch.setattr(crashpoint.os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(crashpoint, "_hits", {})
    monkeypatch.setenv(crashpoint.ENV, "x.y#2")
    crashpoint.crash_point("x.y")
    assert sent == []
    crashpoint.crash_point("x.y")
    assert sent == [crashpoint.signal.SIGKILL]
    crashpoint.crash_point("x.y")
    assert len(sent) == 1


def test_a_resumed_event_log_starts_after_a_torn_last_line(tmp_path):
    # A run killed inside a large write leaves half a line; the resumed run's first event
    # must not be glued onto it (it would be lost to every reader).
    from orchestrate.events import EventLog, read_events

    path = tmp_path / "r.jsonl"
    path.write_text('{"event":"run_start","run":"r"}\n{"event":"host_st')
    log = EventLog(path, "r")
    log.emit("run_start", resumed=True)
    log.close()
    events = read_events(path)
    assert [e["event"] for e in events] == ["run_start", "run_start"]
    assert events[1]["resumed"] is True
    log = EventLog(path, "r")   # an intact log gets no blank line
    log.close()
    assert path.read_text().count("\n\n") == 0


def test_leases_of_a_dead_owner_of_this_machine_are_released_and_audited(tmp_path):
    from inventory.state import StateStore
    from inventory.state.leases import Owner

    store = StateStore.open_file(tmp_path / "s.db")
    try:
        dead = Owner("run-dead", "metalchain serve", pid=999_999, pid_start="1")
        live = Owner.this_process("run-live", "metalchain apply")
        away = Owner("run-away", "metalchain apply", owner_host="another-controller",
                     pid=999_999, pid_start="1")
        store.acquire_leases(["a"], dead)
        store.acquire_leases(["b"], live)
        store.acquire_leases(["c"], away)
        gone = store.release_orphaned_leases("remediation")
        assert [(g.host, g.holder) for g in gone] == [("a", "run-dead")]
        assert sorted(lease.host for lease in store.list_leases()) == ["b", "c"]
        assert store.release_orphaned_leases("remediation") == []
    finally:
        store.close()


def test_every_point_the_campaign_names_exists_in_the_code():
    # A crash point renamed in the code but not in the campaign would never fire (the trial
    # would then prove nothing): each name is listed, and called somewhere.
    from pathlib import Path

    from tests.lab import crashlab

    repo = Path(__file__).resolve().parents[2]
    sources = "".join(p.read_text(encoding="utf-8") for d in ("orchestrate", "configure",
                                                             "monitor", "inventory")
                      for p in (repo / d).rglob("*.py"))
    for name in {*crashlab.RUN_POINTS, *crashlab.APPLY_POINTS, *crashlab.SERVE_POINTS}:
        assert name in crashpoint.POINTS, name
        assert f'crash_point("{name}")' in sources, name
    assert 'crash_point(f"provision.{to_state.value}")' in sources

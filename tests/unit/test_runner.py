"""The runner with fake step kinds and a fake connection factory: batches, serial,
max_fail_percentage, retries, timeouts, resume, state-store errors, masking, re-entrancy.

In-process only: a StateStore on an SQLite file in tmp_path, threads, no processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inventory.errors import StateError, TransportError
from inventory.loader import load_inventory
from inventory.secrets import Masker, SecretStore
from inventory.state import StateStore
from orchestrate import backend as backend_mod
from orchestrate import hostrun
from orchestrate.backend import LocalBackend
from orchestrate.events import EventLog, read_events
from orchestrate.playbook import Play, Playbook, Step
from orchestrate.reports import RunReport
from orchestrate.runner import Runner, journal_index, resume_state
from orchestrate.steps import StepOutcome, StepRegistry

pytestmark = pytest.mark.unit

HOSTS = [f"h{i:02d}" for i in range(1, 11)]
SECRET = "s3cret-value-42"


class FakeConn:
    def __init__(self, host: str) -> None:
        self.host = host
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


class Factory:
    """host -> FakeConn, remembering every connection made."""

    def __init__(self) -> None:
        self.made: dict[str, list[FakeConn]] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str) -> FakeConn:
        conn = FakeConn(host)
        with self._lock:
            self.made.setdefault(host, []).append(conn)
        return conn


class Kind:
    """A step kind whose behaviour is a function of (ctx, args)."""

    def __init__(self, name: str, fn: Callable[[Any, Any], StepOutcome],
                 recheck: Callable[[Any, Any], bool] | None = None) -> None:
        self.name = name
        self.description = name
        self.fn = fn
        if recheck is not None:
            self.recheck = recheck

    def parse(self, raw: Any) -> Any:
        return raw

    def run(self, ctx: Any, args: Any) -> StepOutcome:
        return self.fn(ctx, args)


@pytest.fixture
def inv(tmp_path: Path):
    text = "vars: {flag: from-all}\nhosts:\n" + "".join(
        f"  {h}: {{address: 127.0.0.{i + 1}, vars: {{flag: from-host}}}}\n"
        for i, h in enumerate(HOSTS))
    path = tmp_path / "inventory.yml"
    path.write_text(text, encoding="utf-8")
    return load_inventory(path, SecretStore({}))


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def step(index: int, kind: str, args: Any = None, *, retries: int = 0, delay: float = 0,
         timeout: float | None = None, name: str | None = None) -> Step:
    return Step(index=index, name=name or f"{kind}-{index}", kind=kind, args=args,
                retries=retries, delay=delay, timeout=timeout, file="<test>", line=index)


def playbook(*plays: tuple[str, tuple[Step, ...]], serial: tuple[int | str, ...] = (),
             mfp: float | None = None) -> Playbook:
    return Playbook(path=Path("<test>"), plays=[
        Play(index=i, name=f"play{i}", hosts=hosts, serial=serial, max_fail_percentage=mfp,
             steps=steps, file="<test>", line=i) for i, (hosts, steps) in enumerate(plays)])


class Harness:
    def __init__(self, inv: Any, store: Any, tmp_path: Path, *kinds: Kind,
                 mask: Masker | None = None, parallelism: int = 100) -> None:
        self.registry = StepRegistry()
        for k in kinds:
            self.registry.register(k)
        self.factory = Factory()
        self.sleeps: list[float] = []
        self.store = store
        self.tmp = tmp_path
        self.mask = mask
        self.backend = LocalBackend(inv, store, self.registry, self.factory,
                                    parallelism=parallelism, mask=mask,
                                    sleep=self.sleeps.append, grace=0.05)
        self.runner = Runner(inv, self.backend)

    def run(self, pb: Playbook, **kw: Any) -> tuple[RunReport, list[dict[str, Any]]]:
        uid = kw.pop("uid", None) or self.store.start_run("test", str(pb.path), {})
        log = self.tmp / f"{uid}.jsonl"
        events = EventLog(log, uid, self.mask)
        try:
            report = self.runner.run(pb, events=events, run_uid=uid, **kw)
        finally:
            events.close()
        return report, read_events(log)


def ok(ctx: Any, args: Any) -> StepOutcome:
    return StepOutcome("ok", f"ok on {ctx.host}")


def test_every_host_runs_every_step_in_order_over_one_connection(inv, store, tmp_path):
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def record(ctx: Any, args: Any) -> StepOutcome:
        ctx.connection()
        with lock:
            seen.append((ctx.host, args))
        return StepOutcome("changed" if args == 1 else "ok")

    h = Harness(inv, store, tmp_path, Kind("rec", record))
    report, events = h.run(playbook(("all", (step(0, "rec", 0), step(1, "rec", 1)))))
    assert report.exit_code == 0 and set(report.hosts) == set(HOSTS)
    assert all(r.status == "changed" and r.changed == 1 for r in report.hosts.values())
    for host in HOSTS:
        assert [a for hh, a in seen if hh == host] == [0, 1]
        assert len(h.factory.made[host]) == 1 and h.factory.made[host][0].closed.is_set()
    assert next(e["event"] for e in events) == "run_start"
    assert events[-1]["event"] == "run_end" and events[-1]["exit_code"] == 0
    journal = store.journal_entries(report.uid)
    assert len(journal) == 20 and {e.status for e in journal} == {"ok", "changed"}


def test_serial_ramp_makes_the_batches(inv, store, tmp_path):
    h = Harness(inv, store, tmp_path, Kind("ok", ok))
    report, events = h.run(playbook(("all", (step(0, "ok"),)), serial=(1, "30%")))
    assert [e["hosts"] for e in events if e["event"] == "batch_start"] == [
        ["h01"], ["h02", "h03", "h04"], ["h05", "h06", "h07"], ["h08", "h09", "h10"]]
    assert report.exit_code == 0 and len(report.hosts) == 10


def test_max_fail_percentage_stops_later_batches_and_excludes_failed_hosts(inv, store,
                                                                          tmp_path):
    def fail_h01(ctx: Any, args: Any) -> StepOutcome:
        return StepOutcome("failed", "boom") if ctx.host == "h01" else StepOutcome("ok")

    h = Harness(inv, store, tmp_path, Kind("f", fail_h01))
    report, _events = h.run(playbook(("all", (step(0, "f"),)), serial=(2,), mfp=10))
    assert report.exit_code == 1
    assert set(report.hosts) == {"h01", "h02"} and report.not_run == HOSTS[2:]
    assert "batch 1 failed on 1 of 2 hosts (50% > max_fail_percentage 10%)" in \
        report.stopped_reason
    # Without a limit every batch runs, and a failed host is left out of later plays.
    report, _ = h.run(playbook(("all", (step(0, "f"),)), ("all", (step(0, "f"),)),
                               serial=(2,)))
    assert report.not_run == [] and len(report.hosts["h01"].steps) == 1
    assert len(report.hosts["h02"].steps) == 2


def test_retries_until_success_with_the_delay(inv, store, tmp_path):
    tries: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(ctx: Any, args: Any) -> StepOutcome:
        with lock:
            tries[ctx.host] = tries.get(ctx.host, 0) + 1
            n = tries[ctx.host]
        return StepOutcome("ok") if n == 3 else StepOutcome("failed", f"try {n}")

    h = Harness(inv, store, tmp_path, Kind("flaky", flaky))
    report, events = h.run(playbook(("h01,h02", (step(0, "flaky", retries=2, delay=1.5),))))
    assert report.exit_code == 0
    assert [s.attempts for s in report.hosts["h01"].steps] == [3]
    assert h.sleeps == [1.5] * 4
    retries = [e for e in events if e["event"] == "host_step_retry" and e["host"] == "h01"]
    assert [e["message"] for e in retries] == ["try 1", "try 2"]


def test_first_failed_step_ends_the_host_and_unreachable_is_kept(inv, store, tmp_path):
    def down(ctx: Any, args: Any) -> StepOutcome:
        raise TransportError(f"host '{ctx.host}': cannot connect")

    h = Harness(inv, store, tmp_path, Kind("down", down), Kind("ok", ok))
    report, _ = h.run(playbook(("h01", (step(0, "down"), step(1, "ok")))))
    r = report.hosts["h01"]
    assert r.status == "unreachable" and len(r.steps) == 1
    assert r.steps[0].outcome.message == "host 'h01': cannot connect"


def test_a_step_kind_bug_fails_its_host_only(inv, store, tmp_path):
    def buggy(ctx: Any, args: Any) -> StepOutcome:
        if ctx.host == "h02":
            raise KeyError("oops")
        return StepOutcome("ok")

    h = Harness(inv, store, tmp_path, Kind("buggy", buggy))
    report, _ = h.run(playbook(("h01,h02,h03", (step(0, "buggy"),))))
    assert {k: v.status for k, v in report.hosts.items()} == {
        "h01": "ok", "h02": "failed", "h03": "ok"}
    assert "internal error in step kind 'buggy': KeyError" in \
        report.hosts["h02"].steps[0].outcome.message


class FailingJournal:
    """The state store, except that journal writes for one host raise StateError."""

    def __init__(self, store: StateStore, host: str, method: str) -> None:
        self._store = store
        self._host = host
        self._method = method
        self._entries: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def journal_intent(self, run_uid: str, host: str, step_index: int, step: str) -> int:
        if self._method == "intent" and host == self._host:
            raise StateError("state store sqlite:///x: OperationalError: database is locked")
        entry = self._store.journal_intent(run_uid, host, step_index, step)
        self._entries[entry] = host
        return entry

    def journal_outcome(self, entry_id: int, status: str, detail: Any = None) -> None:
        if self._method == "outcome" and self._entries.get(entry_id) == self._host:
            raise StateError("state store sqlite:///x: OperationalError: disk I/O error")
        self._store.journal_outcome(entry_id, status, detail)


@pytest.mark.parametrize("method", ["intent", "outcome"])
def test_a_journal_write_that_fails_fails_that_host_only(inv, store, tmp_path, method):
    """Defect 3: a StateError on one host's journal write used to end the whole run."""
    ran: list[str] = []
    h = Harness(inv, FailingJournal(store, "h02", method), tmp_path,
                Kind("rec", lambda ctx, a: (ran.append(ctx.host), StepOutcome("ok"))[1]))
    h.backend.hosts.store = FailingJournal(store, "h02", method)
    report, events = h.run(playbook(("h01,h02,h03", (step(0, "rec"), step(1, "rec")))))
    assert {k: v.status for k, v in report.hosts.items()} == {
        "h01": "ok", "h02": "failed", "h03": "ok"}
    msg = report.hosts["h02"].steps[0].outcome.message
    assert msg.startswith("state store: could not journal the " + method)
    assert "database is locked" in msg or "disk I/O error" in msg
    assert len(report.hosts["h02"].steps) == 1            # its later steps did not run
    assert ("h02" in ran) == (method == "outcome")         # no intent, no action
    assert events[-1]["event"] == "run_end"


def test_a_step_that_honours_its_deadline_fails_timed_out(inv, store, tmp_path):
    """Defect 4: ``timeout:`` is enforced; the kind sees ctx.deadline."""
    deadlines: list[float | None] = []

    def patient(ctx: Any, args: Any) -> StepOutcome:
        deadlines.append(ctx.deadline)
        if ctx.host == "h02":
            return StepOutcome("ok", "quick")
        while time.monotonic() < ctx.deadline:
            time.sleep(0.005)
        return StepOutcome("unreachable", "command timed out after 0.1 s")

    h = Harness(inv, store, tmp_path, Kind("patient", patient))
    start = time.monotonic()
    report, _events = h.run(playbook(("h01,h02", (step(0, "patient", timeout=0.1),))))
    assert time.monotonic() - start < 2
    o = report.hosts["h01"].steps[0].outcome
    assert o.status == "failed" and o.message.startswith("timed out after 0.1 s")
    assert report.hosts["h02"].status == "ok"
    assert all(d is not None for d in deadlines)
    assert [e.status for e in store.journal_entries(report.uid) if e.host == "h01"] == \
        ["failed"]


def test_a_step_that_ignores_its_deadline_is_given_up_on(inv, store, tmp_path):
    """Defect 4: a kind that never looks at ctx.deadline: the runner stops waiting, reports
    the host failed and closes its connection; the other hosts are unaffected."""
    release = threading.Event()
    stuck_thread: list[threading.Thread] = []

    def stuck(ctx: Any, args: Any) -> StepOutcome:
        ctx.connection()
        if ctx.host == "h01":
            stuck_thread.append(threading.current_thread())
            release.wait(30)
            ctx.emit("host_output", stream="stdout", text="too late")
        return StepOutcome("ok", "finished")

    h = Harness(inv, store, tmp_path, Kind("stuck", stuck), Kind("ok", ok))
    try:
        start = time.monotonic()
        report, _events = h.run(playbook(("h01,h02", (step(0, "stuck", timeout=0.1),
                                                      step(1, "ok")))))
        took = time.monotonic() - start
    finally:
        release.set()
    assert took < 2, took
    r = report.hosts["h01"]
    assert r.status == "failed" and len(r.steps) == 1
    assert r.steps[0].outcome.message.startswith("timed out after 0.1 s")
    assert h.factory.made["h01"][0].closed.is_set()
    assert report.hosts["h02"].status == "ok" and len(report.hosts["h02"].steps) == 2
    assert [e.status for e in store.journal_entries(report.uid) if e.host == "h01"] == \
        ["failed"]
    # What the abandoned thread does afterwards is not recorded.
    stuck_thread[0].join(5)
    assert not stuck_thread[0].is_alive()
    log = read_events(tmp_path / f"{report.uid}.jsonl")
    assert not any(e.get("text") == "too late" for e in log)
    assert len([e for e in log if e["event"] == "host_step_end" and e["host"] == "h01"]) == 1


def test_a_host_past_the_batch_bound_did_not_finish(inv, store, tmp_path, monkeypatch):
    """A step without ``timeout:`` is bounded too (DEFAULT_STEP_BOUND)."""
    monkeypatch.setattr(hostrun, "DEFAULT_STEP_BOUND", 0.1)
    monkeypatch.setattr(backend_mod, "DEFAULT_STEP_BOUND", 0.1)
    release = threading.Event()
    h = Harness(inv, store, tmp_path,
                Kind("stuck", lambda ctx, a: (release.wait(30), StepOutcome("ok"))[1]))
    try:
        report, _ = h.run(playbook(("h01", (step(0, "stuck"),))))
    finally:
        release.set()
    o = report.hosts["h01"].steps[0].outcome
    assert o.status == "failed" and o.message.startswith("did not finish in 0.1 s"), o


def test_a_blocked_host_frees_its_worker_for_the_queued_hosts(inv, store, tmp_path):
    release = threading.Event()

    def maybe_stuck(ctx: Any, args: Any) -> StepOutcome:
        if ctx.host == "h01":
            release.wait(30)
        return StepOutcome("ok")

    h = Harness(inv, store, tmp_path, Kind("s", maybe_stuck), parallelism=1)
    try:
        report, _ = h.run(playbook(("h01,h02,h03", (step(0, "s", timeout=0.1),))))
    finally:
        release.set()
    assert {k: v.status for k, v in report.hosts.items()} == {
        "h01": "failed", "h02": "ok", "h03": "ok"}


def test_resume_skips_what_is_done_and_rechecks_what_is_in_doubt(inv, store, tmp_path):
    runs: list[tuple[str, int]] = []
    rechecked: list[str] = []
    lock = threading.Lock()

    def rec(ctx: Any, args: Any) -> StepOutcome:
        with lock:
            runs.append((ctx.host, args))
        return StepOutcome("changed")

    def recheck(ctx: Any, args: Any) -> bool:
        rechecked.append(ctx.host)
        return ctx.host == "h02"

    h = Harness(inv, store, tmp_path, Kind("rec", rec, recheck))
    pb = playbook(("h01,h02,h03", (step(0, "rec", 0), step(1, "rec", 1))))
    uid = store.start_run("test", "<test>", {})
    play = pb.plays[0]
    # A killed run: h01 finished step 0; h02 and h03 were in step 0 (intent, no outcome).
    e = store.journal_intent(uid, "h01", journal_index(play, play.steps[0]), "s0")
    store.journal_outcome(e, "changed", {})
    for host in ("h02", "h03"):
        store.journal_intent(uid, host, journal_index(play, play.steps[0]), "s0")
    done = resume_state(store, uid)
    report, _ = h.run(pb, uid=uid, done=done)
    assert report.exit_code == 0
    assert sorted(rechecked) == ["h02", "h03"]
    assert sorted(runs) == [("h01", 1), ("h02", 1), ("h03", 0), ("h03", 1)]
    s0 = report.hosts["h01"].steps[0]
    assert s0.resumed and s0.outcome.message == "done in the resumed run"
    assert "re-checked: already done" in report.hosts["h02"].steps[0].outcome.message
    # The intents left by the killed run are closed, each pointing at the entry that ran
    # the step again: nothing in the journal still looks in doubt.
    entries = store.journal_entries(uid)
    assert not [e for e in entries if e.status == "intent"], entries
    old = [e for e in entries if e.status == "superseded"]
    assert sorted(e.host for e in old) == ["h02", "h03"]
    by_id = {e.id: e for e in entries}
    for e in old:
        newer = by_id[e.detail["superseded_by"]]
        assert (newer.host, newer.step_index) == (e.host, e.step_index) and newer.id > e.id
        assert newer.status in ("ok", "changed") and e.ended_at is not None
    assert resume_state(store, uid)[("h03", journal_index(play, play.steps[0]))] == "changed"


def test_secrets_are_masked_in_journal_events_and_reports(inv, store, tmp_path):
    """Outcomes and ctx.emit fields carry no secret value past the runner."""

    def leaky(ctx: Any, args: Any) -> StepOutcome:
        ctx.emit("host_output", stream="stdout", text=f"echo {SECRET}")
        return StepOutcome("changed", f"ran echo {SECRET}", changes=[f"ran {SECRET}"],
                           output=f"{SECRET}\n", data={"stdout": SECRET,
                                                       "nested": [{"k": SECRET}]})

    h = Harness(inv, store, tmp_path, Kind("leaky", leaky), mask=Masker([SECRET]))
    report, _ = h.run(playbook(("h01", (step(0, "leaky"),))))
    o = report.hosts["h01"].steps[0].outcome
    assert o.message == "ran echo ***" and o.changes == ["ran ***"]
    assert o.output == "***\n" and o.data == {"stdout": "***", "nested": [{"k": "***"}]}
    text = (tmp_path / f"{report.uid}.jsonl").read_text(encoding="utf-8")
    assert SECRET not in text and "echo ***" in text
    detail = store.journal_entries(report.uid)[0].detail
    assert SECRET not in repr(detail) and detail["message"] == "ran echo ***"


def test_variables_magic_inventory_context_and_extra(inv, store, tmp_path):
    seen: dict[str, Any] = {}

    def look(ctx: Any, args: Any) -> StepOutcome:
        seen[ctx.host] = dict(ctx.vars)
        return StepOutcome("ok")

    h = Harness(inv, store, tmp_path, Kind("look", look))
    h.backend.hosts.options["vars"] = {"metalchain_mirror": {"url": "http://m"}}
    h.run(playbook(("h01,h02", (step(0, "look"),))), extra_vars={"flag": False},
          facts={"h01": {"os": "debian"}})
    v = seen["h01"]
    assert v["flag"] is False                       # -e beats the host's own vars
    assert v["inventory_hostname"] == "h01" and v["address"] == "127.0.0.1"
    assert v["facts"] == {"os": "debian"} and seen["h02"]["facts"] == {}
    assert v["metalchain_mirror"] == {"url": "http://m"}


def test_the_runner_is_reentrant(inv, store, tmp_path):
    """Two runs at once on one runner: each gets its own hosts, facts and extra vars."""
    gate = threading.Barrier(2, timeout=5)

    def look(ctx: Any, args: Any) -> StepOutcome:
        if ctx.host == "h01":
            gate.wait()        # both runs are inside a step at the same time
        return StepOutcome("ok", f"{ctx.vars['who']}:{ctx.vars['facts'].get('n')}")

    h = Harness(inv, store, tmp_path, Kind("look", look))
    results: dict[str, RunReport] = {}

    def go(who: str, hosts: str) -> None:
        results[who], _ = h.run(playbook((hosts, (step(0, "look"),))),
                                extra_vars={"who": who}, facts={"h01": {"n": who}})

    threads = [threading.Thread(target=go, args=("a", "h01,h02")),
               threading.Thread(target=go, args=("b", "h01,h03"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert set(results["a"].hosts) == {"h01", "h02"}
    assert set(results["b"].hosts) == {"h01", "h03"}
    assert results["a"].hosts["h01"].steps[0].outcome.message == "a:a"
    assert results["b"].hosts["h01"].steps[0].outcome.message == "b:b"
    assert set(vars(h.runner)) == {"inventory", "backend"}

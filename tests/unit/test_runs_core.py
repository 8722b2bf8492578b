"""The application core for runs (orchestrate.runs): masking with the site's secrets, host
leases, resume of a run's own arguments — in-process, with a fake step kind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inventory.contracts import StepOutcome
from inventory.errors import InputError
from inventory.site import Site
from inventory.state.leases import Owner
from orchestrate import leases as leases_mod
from orchestrate.events import read_events
from orchestrate.runs import RunOptions, single_step_playbook, start_run
from orchestrate.steps import StepRegistry
from tests.conftest import write_site

pytestmark = pytest.mark.unit

FILE_SECRET = "file-secret-91c2"
ENV_SECRET = "env-secret-77ab"
INVENTORY = """\
vars:
  token: {secret: api}
hosts:
  h1: {address: 10.0.0.1, vars: {env_token: {env: CORE_TEST_TOKEN}}}
  h2: {address: 10.0.0.2}
"""


class Echo:
    name = "echo"
    description = "say the host's variables back"

    def parse(self, raw: Any) -> Any:
        return raw

    def run(self, ctx: Any, args: Any) -> StepOutcome:
        token = ctx.vars["token"].reveal()
        env = ctx.vars.get("env_token")
        said = f"{token} {env.reveal() if env else ''} {ctx.vars.get('mode')}"
        ctx.emit("host_output", stream="stdout", text=said)
        return StepOutcome("changed", said, changes=[said], output=said)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CORE_TEST_TOKEN", ENV_SECRET)
    s = Site.open(write_site(tmp_path / "site", INVENTORY, secrets=f"api: {FILE_SECRET}\n"))
    yield s
    s.close()


def registry() -> StepRegistry:
    r = StepRegistry()
    r.register(Echo())
    return r


def test_file_and_env_secrets_are_masked_everywhere(site):
    pb = single_step_playbook("all", "echo", None, "echo")
    seen: list[dict[str, Any]] = []
    report = start_run(site, pb, RunOptions(kind="exec"), on_event=seen.append,
                       registry=registry(), connect=lambda host: object())
    outcome = report.first_outcome("h1")
    assert outcome is not None and outcome.message == "*** *** None"
    log = (site.runs_dir / f"{report.uid}.jsonl").read_text(encoding="utf-8")
    journal = repr([e.detail for e in site.state.journal_entries(report.uid)])
    for text in (log, journal, repr(seen), repr(report)):
        assert FILE_SECRET not in text and ENV_SECRET not in text
    assert "*** ***" in log


def test_resume_reuses_the_runs_arguments_and_skips_what_is_done(site):
    pb = single_step_playbook("all", "echo", None, "echo")
    first = start_run(site, pb, RunOptions(kind="exec", limit="h1", extra={"mode": "x"}),
                      registry=registry(), connect=lambda host: object())
    again = start_run(site, pb, RunOptions(kind="exec", resume=first.uid),
                      registry=registry(), connect=lambda host: object())
    assert again.uid == first.uid and set(again.hosts) == {"h1"}     # the run's own limit
    assert again.hosts["h1"].steps[0].resumed
    assert site.state.get_run(first.uid)["status"] == "ok"
    events = read_events(site.runs_dir / f"{first.uid}.jsonl")
    assert [e["event"] for e in events].count("run_start") == 2
    with pytest.raises(InputError, match="no run 'nope'"):
        start_run(site, pb, RunOptions(resume="nope"), registry=registry())


class Holds:
    """A step that records the leases each host's run sees while it runs."""

    name = "holds"
    description = "record the lease holder of the host"

    def __init__(self, store: Any) -> None:
        self.store = store
        self.seen: dict[str, str | None] = {}

    def parse(self, raw: Any) -> Any:
        return raw

    def run(self, ctx: Any, args: Any) -> StepOutcome:
        held = {x.host: x.holder for x in self.store.list_leases()}
        self.seen[ctx.host] = held.get(ctx.host)
        return StepOutcome("changed", "did it")


def holds_registry(step: Holds) -> StepRegistry:
    r = StepRegistry()
    r.register(step)
    return r


OTHER = Owner("other0run", "metalchain apply --role base h1", pid_start=None)


def test_a_run_holds_its_hosts_leases_and_releases_them(site):
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    report = start_run(site, pb, RunOptions(kind="apply", command="metalchain apply all"),
                       registry=holds_registry(step), connect=lambda host: object())
    assert report.exit_code == 0 and report.held == {}
    assert step.seen == {"h1": report.uid, "h2": report.uid}
    assert site.state.list_leases() == []


def test_a_host_held_by_another_run_is_skipped_named_and_fails_the_run(site):
    # OTHER's pid is this (live) process: its lease is held, not stale.
    site.state.acquire_leases(["h1"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    report = start_run(site, pb, RunOptions(kind="playbook"), registry=holds_registry(step),
                       connect=lambda host: object())
    assert list(step.seen) == ["h2"]            # h1 was not touched
    assert report.exit_code == 1 and report.counts()["held"] == 1
    assert report.held["h1"].startswith(
        "held by run other0run (pid ") and "`metalchain apply --role base h1`) since " in \
        report.held["h1"]
    assert [x.holder for x in site.state.list_leases()] == ["other0run"]   # left as it was


def test_check_runs_and_exec_take_no_lease_and_are_not_blocked(site):
    site.state.acquire_leases(["h1", "h2"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    for options in (RunOptions(kind="drift", check=True), RunOptions(kind="exec")):
        report = start_run(site, pb, options, registry=holds_registry(step),
                           connect=lambda host: object())
        assert report.exit_code == 0 and set(report.hosts) == {"h1", "h2"}


def test_wait_runs_once_the_other_holder_releases(site, monkeypatch):
    monkeypatch.setattr(leases_mod, "POLL_INTERVAL", 0.02)
    site.state.acquire_leases(["h1"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    waiting = threading.Event()
    monkeypatch.setattr(leases_mod.log, "warning", lambda msg: waiting.set())

    def release_when_waited_for() -> None:
        waiting.wait(10)
        site.state.release_leases("other0run")

    t = threading.Thread(target=release_when_waited_for)
    t.start()
    start = time.monotonic()
    report = start_run(site, pb, RunOptions(kind="apply", wait=10), registry=holds_registry(step),
                       connect=lambda host: object())
    t.join(10)
    assert waiting.is_set() and time.monotonic() - start < 10
    assert report.exit_code == 0 and step.seen == {"h1": report.uid, "h2": report.uid}


def test_wait_gives_up_at_its_timeout_and_skips_what_is_still_held(site, monkeypatch):
    monkeypatch.setattr(leases_mod, "POLL_INTERVAL", 0.02)
    site.state.acquire_leases(["h1"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    report = start_run(site, pb, RunOptions(kind="apply", wait=0.1),
                       registry=holds_registry(step), connect=lambda host: object())
    assert list(step.seen) == ["h2"] and list(report.held) == ["h1"]


def test_a_stop_request_ends_the_wait_for_held_hosts(site, monkeypatch):
    """Ctrl-C while waiting for another run's hosts: the wait ends at once, nothing runs,
    and the run is recorded interrupted (not left waiting out its --wait-timeout)."""
    from orchestrate.stop import Stop

    monkeypatch.setattr(leases_mod, "POLL_INTERVAL", 0.02)
    site.state.acquire_leases(["h1"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    stop = Stop()
    monkeypatch.setattr(leases_mod.log, "warning", lambda msg: stop.request("SIGINT"))
    start = time.monotonic()
    report = start_run(site, pb, RunOptions(kind="apply", wait=30),
                       registry=holds_registry(step), connect=lambda host: object(), stop=stop)
    assert time.monotonic() - start < 5
    assert step.seen == {} and report.interrupted == "interrupted"
    assert report.exit_code == 130
    assert site.state.get_run(report.uid)["status"] == "interrupted"
    assert site.state.list_leases()[0].holder == "other0run"   # its own leases were given back


class LosesItsLease(Holds):
    """On its first host, breaks that host's lease (as `state release` would) and waits for
    the run's heartbeat to notice."""

    def __init__(self, store: Any, stop: Any) -> None:
        super().__init__(store)
        self.stop = stop

    def run(self, ctx: Any, args: Any) -> StepOutcome:
        if not self.seen:
            self.store.break_lease(ctx.host)
            deadline = time.monotonic() + 5
            while not self.stop.stopping and time.monotonic() < deadline:
                time.sleep(0.01)
        return super().run(ctx, args)


def test_a_run_that_loses_a_lease_starts_nothing_more(site, monkeypatch):
    """Its lease broken by hand (or expired and taken over): another actor may be on the
    host, so the run finishes what it is doing and starts nothing new — never two at once."""
    from orchestrate import runs as runs_mod
    from orchestrate.stop import Stop

    monkeypatch.setattr(runs_mod, "LEASE_HEARTBEAT", 0.02)
    stop = Stop()
    step = LosesItsLease(site.state, stop)
    pb = single_step_playbook("all", "holds", None, "holds")
    report = start_run(site, pb, RunOptions(kind="apply", parallel=1),
                       registry=holds_registry(step), connect=lambda host: object(), stop=stop)
    assert stop.source == runs_mod.LEASE_LOST
    assert list(step.seen) == ["h1"] and report.not_run == ["h2"]
    assert report.interrupted == "" and "a host lease was lost" in report.stopped_reason
    assert report.exit_code == 1 and site.state.get_run(report.uid)["status"] == "failed"


def test_a_run_whose_every_host_is_held_runs_none_and_says_so(site):
    site.state.acquire_leases(["h1", "h2"], OTHER)
    step = Holds(site.state)
    pb = single_step_playbook("all", "holds", None, "holds")
    report = start_run(site, pb, RunOptions(kind="apply"), registry=holds_registry(step),
                       connect=lambda host: object())
    assert step.seen == {} and report.hosts == {} and sorted(report.held) == ["h1", "h2"]
    assert report.exit_code == 1 and site.state.get_run(report.uid)["status"] == "failed"


@pytest.mark.parametrize("options,takes", [
    (RunOptions(kind="playbook"), True), (RunOptions(kind="apply"), True),
    (RunOptions(kind="drift"), True), (RunOptions(kind="provision"), True),
    (RunOptions(kind="power"), True), (RunOptions(kind="power", leases=False), False),
    (RunOptions(kind="drift", check=True), False), (RunOptions(kind="apply", check=True), False),
    (RunOptions(kind="exec"), False), (RunOptions(kind="facts"), False),
    (RunOptions(kind="verify"), False),
])
def test_which_runs_take_leases(options, takes):
    assert options.takes_leases is takes

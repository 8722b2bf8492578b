"""The application core for runs (orchestrate.runs): masking with the site's secrets, the
run lock, resume of a run's own arguments — in-process, with a fake step kind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from inventory.contracts import StepOutcome
from inventory.errors import InputError, MetalchainError
from inventory.site import Site
from orchestrate.events import read_events
from orchestrate.runs import RunOptions, run_lock, single_step_playbook, start_run
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


def test_a_locked_playbook_refuses_a_second_run(site):
    pb = single_step_playbook("all", "echo", None, "echo")
    with run_lock(site.runs_dir / ".lock-site"), pytest.raises(
            MetalchainError, match="another run of this playbook is in progress"):
        start_run(site, pb, RunOptions(lock="site"), registry=registry())
    report = start_run(site, pb, RunOptions(lock="site"), registry=registry(),
                       connect=lambda host: object())
    assert report.exit_code == 0


def test_the_run_lock_names_its_holder_and_is_free_again_after(tmp_path: Path):
    lock = tmp_path / "runs" / ".lock-site"
    with run_lock(lock), pytest.raises(MetalchainError, match=(
            rf"another run of this playbook is in progress \(.*{lock}.*pid {os.getpid()}")):
        with run_lock(lock):
            pass
    with run_lock(lock):    # released on exit
        pass

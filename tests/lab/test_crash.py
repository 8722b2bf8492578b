"""Crash anywhere, in CI's size: the campaign of bench/crash.py (tests/lab/crashlab.py) with a
few trials of each scenario — SIGKILL of `metalchain run`, `apply` and `serve` at named crash
points and random delays, then `--resume` / the same apply / serve again — on one lab of two
fleet hosts. Each trial checks the side effects counted on the hosts, the store's integrity,
every JSON/YAML file under the site, runs, incidents, actions and leases."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Iterator

import pytest

from runtime.crashpoint import ENV
from tests.lab import crashlab

pytestmark = pytest.mark.lab

#: Trials per scenario in CI: 20 (bench/crash.py runs 70 each).
PER_SCENARIO = {"run": 7, "apply": 7, "serve": 6}
SEED = 1313


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[crashlab.CrashLab]:
    with crashlab.crash_lab(tmp_path_factory.mktemp("crash") / "site") as lab:
        yield lab


def _show(trials: list[crashlab.Trial]) -> str:
    return json.dumps([t.to_json() for t in trials if not t.passed], default=str)[:6000]


@pytest.mark.parametrize("scenario", crashlab.SCENARIOS)
def test_killed_anywhere_ends_consistent_and_nothing_runs_twice(lab, scenario):
    rng = random.Random(f"{SEED}-{scenario}")
    base = {"run": 100, "apply": 200, "serve": 300}[scenario]
    trials = [crashlab.TRIALS[scenario](lab, base + k, rng) for k in range(PER_SCENARIO[scenario])]
    print(f"\ncrash {scenario}: {json.dumps(crashlab.summary(trials)[scenario])}")
    assert all(t.passed for t in trials), _show(trials)
    # The campaign killed something (a trial whose process finished first proves nothing).
    assert sum(t.killed for t in trials) >= len(trials) // 2, [t.kill for t in trials]


def test_a_crash_point_kills_the_process_where_it_is_named(lab):
    # The hook itself: a run told to die at its first journal intent dies with SIGKILL and
    # leaves exactly that intent; one told nothing runs to the end.
    (lab.root / "playbooks" / "crash-hook.yml").write_text(crashlab.run_playbook(999))
    r = crashlab.metalchain("--site", str(lab.root), "run", "crash-hook", "--json",
                            env={**_env(), ENV: "run.step_intent#1"})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    uid = lab.runs()[0]["uid"]
    assert [st for _h, _s, st in lab.journal(uid)] == ["intent"]
    assert lab.runs()[0]["status"] == "interrupted"
    r = lab.cli("run", "crash-hook", "--resume", uid, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    last = {(h, s): st for h, s, st in lab.journal(uid)}   # the in-doubt row stays, superseded
    assert len(last) == 6 and set(last.values()) <= {"ok", "changed"}, lab.journal(uid)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != ENV}


def test_the_site_is_intact_after_the_campaign(lab):
    assert crashlab.integrity(lab.root) == []
    assert lab.store_query("SELECT count(*) FROM leases") == [(0,)]
    assert not [r for r in lab.runs() if r["status"] == "running"]

"""Hosts lost in the middle of a run (issue 13), CI size: 10 fleet hosts, one killed, one
frozen and one cut off while `run` is inside a command or an apply. The full campaign (50
hosts, several trials per fault kind) is bench/hosts_lost.py; the trial itself is
tests/lab/hosts_lost.py."""

from __future__ import annotations

import pytest

from tests.lab import hosts_lost as hl
from tests.lab.fleetsite import fleet_site

pytestmark = pytest.mark.lab

FLEET = 10
SUBNET = "10.109.0.0/24"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("lost") / "site", FLEET, SUBNET) as root:
        hl.prepare(root)
        yield root


def test_lost_hosts_are_unreachable_in_time_others_unaffected_failed_rerun(site):
    base = hl.baseline(site)
    plan = hl.plan_faults(sorted(hl.records(site)), 1, 0)
    assert sorted(f.kind for f in plan) == ["cut", "freeze", "kill"]
    result = hl.trial(site, "T0001", plan, base)
    doc = result.to_json()
    assert result.lost_set_exact, doc
    assert not result.unaffected_differ and not result.effects_missing, doc
    assert result.unaffected == FLEET - len(plan)
    for f in result.faults:
        assert f.status == "unreachable", doc
        assert f.detect_s is not None and f.detect_s <= f.limit_s, doc
        if f.kind != "kill":
            assert "no answer to SSH keepalives" in f.message, doc
    assert result.rerun_exact and result.rerun_hosts == sorted(f.host for f in plan), doc
    assert all(f.rerun_status in ("ok", "changed") for f in result.faults), doc

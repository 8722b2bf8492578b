"""The lost-hosts campaign's fault plan (tests/lab/hosts_lost.py): pure logic."""

from __future__ import annotations

import pytest

from tests.lab.hosts_lost import CampaignError, plan_faults

pytestmark = pytest.mark.unit


def test_each_kind_and_phase_distinct_hosts_moving_per_trial():
    hosts = [f"fleet{i:02d}" for i in range(1, 51)]
    plans = [plan_faults(hosts, 2, t) for t in range(5)]
    for plan in plans:
        assert len({f.host for f in plan}) == len(plan) == 6
        assert sorted(f.kind for f in plan) == ["cut", "cut", "freeze", "freeze", "kill", "kill"]
        assert {(f.kind, f.phase) for f in plan} == {(k, p) for k in ("kill", "freeze", "cut")
                                                      for p in ("command", "apply")}
    assert len({f.host for plan in plans for f in plan}) == 30


def test_too_few_hosts_is_an_error():
    with pytest.raises(CampaignError, match="at least 6 hosts"):
        plan_faults(["a", "b", "c", "d", "e"], 1, 0)

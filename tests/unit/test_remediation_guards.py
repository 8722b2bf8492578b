"""Remediation's safety guards (monitor/guards.py): each guard on its own, their order, and a
storm of requests decided one after the other as the engine will."""

from __future__ import annotations

import pytest

from monitor.guards import (
    ACT,
    DRY_RUN,
    ESCALATE,
    NEEDS_APPROVAL,
    SUPPRESSED,
    ActionRequest,
    PastAction,
    Policy,
    Situation,
    decide,
)

pytestmark = pytest.mark.unit

NOW = 10_000.0
RESTART = ActionRequest("fleet03", "restart_service", groups=("fleet",))
FLEET = {"fleet": 20}
QUIET = Situation(group_sizes=FLEET)


def verdict(request=RESTART, situation=QUIET, **policy):
    d = decide(request, situation, Policy(**policy), NOW)
    return d.verdict, d.guard


def test_nothing_in_the_way_acts():
    assert verdict() == (ACT, "")


def test_kill_switch_stops_everything_first():
    busy = Situation(incidents={"fleet03": [NOW - 1] * 5}, group_sizes=FLEET)
    assert verdict(situation=busy, kill_switch=True) == (SUPPRESSED, "kill_switch")


def test_a_flapping_target_is_left_to_a_human():
    flapping = Situation(incidents={"fleet03": [NOW - 100, NOW - 50, NOW - 10]},
                         group_sizes=FLEET)
    assert verdict(situation=flapping) == (ESCALATE, "flap")
    old = Situation(incidents={"fleet03": [NOW - 5000, NOW - 4000, NOW - 10]},
                    group_sizes=FLEET)
    assert verdict(situation=old) == (ACT, "")        # outside the window: not flapping


@pytest.mark.parametrize("action", ["power_cycle", "reprovision"])
def test_disruptive_actions_wait_for_approval_unless_allowed(action):
    assert verdict(ActionRequest("node1", action)) == (NEEDS_APPROVAL, "approval")
    assert verdict(ActionRequest("node1", action, approved=True)) == (ACT, "")
    assert verdict(ActionRequest("node1", action), approval_required=frozenset()) == (ACT, "")


def test_cooldown_per_target_and_a_running_action_on_it():
    recent = Situation(actions=[PastAction("fleet03", "restart_service", NOW - 60, NOW - 50)],
                       group_sizes=FLEET)
    assert verdict(situation=recent) == (SUPPRESSED, "cooldown")
    assert verdict(situation=recent, cooldown=30) == (ACT, "")
    running = Situation(actions=[PastAction("fleet03", "apply_role", NOW - 900)],
                        group_sizes=FLEET)
    assert verdict(situation=running, cooldown=0) == (SUPPRESSED, "cooldown")
    other = Situation(actions=[PastAction("fleet04", "restart_service", NOW - 1, NOW)],
                      group_sizes=FLEET)
    assert verdict(situation=other) == (ACT, "")      # another target's cooldown is its own


def test_a_host_another_run_is_changing_is_not_acted_on_other_hosts_are():
    changing = Situation(group_sizes=FLEET, changing={"fleet03": "held by run 1a2b ..."})
    d = decide(RESTART, changing, Policy(), NOW)
    assert (d.verdict, d.guard) == (SUPPRESSED, "lease") and "held by run 1a2b" in d.reason
    assert verdict(ActionRequest("fleet04", "restart_service", groups=("fleet",)),
                   situation=changing) == (ACT, "")
    # after the cooldown in the order: a host acted on a moment ago says so first
    recent = Situation(actions=[PastAction("fleet03", "restart_service", NOW - 5, NOW - 4)],
                       group_sizes=FLEET, changing={"fleet03": "x"})
    assert verdict(situation=recent, cooldown=60) == (SUPPRESSED, "cooldown")


def test_rate_limit_per_kind_of_action():
    done = [PastAction(f"fleet{i:02d}", "restart_service", NOW - 10, NOW - 5)
            for i in range(10, 15)]
    assert verdict(situation=Situation(actions=done, group_sizes=FLEET),
                   rate_count=5) == (SUPPRESSED, "rate_limit")
    assert verdict(ActionRequest("fleet03", "apply_role", groups=("fleet",)),
                   Situation(actions=done, group_sizes=FLEET), rate_count=5) == (ACT, "")


def test_concurrency_cap():
    running = [PastAction(f"node{i}", "apply_role", NOW - 1) for i in range(3)]
    assert verdict(situation=Situation(actions=running, group_sizes=FLEET),
                   max_concurrent=3) == (SUPPRESSED, "concurrency")


def test_fleet_cap_counts_hosts_of_the_group_and_always_allows_one():
    running = [PastAction(f"fleet{i:02d}", "restart_service", NOW - 1, groups=("fleet",))
               for i in range(10, 15)]
    situation = Situation(actions=running, group_sizes=FLEET)
    assert verdict(situation=situation, max_concurrent=100) == (SUPPRESSED, "fleet_cap")
    assert verdict(situation=situation, max_concurrent=100, fleet_cap=0.5) == (ACT, "")
    small = Situation(group_sizes={"pair": 2})
    pair = ActionRequest("a", "restart_service", groups=("pair",))
    assert verdict(pair, small) == (ACT, "")          # 25% of 2 hosts still allows one


def test_dry_run_passes_every_guard_and_does_nothing():
    assert verdict(dry_run=True) == (DRY_RUN, "dry_run")


def test_a_storm_respects_the_concurrency_and_fleet_caps():
    """100 alerts across a 20-host group, decided one after the other with nothing ending:
    at most max(1, 25% of 20) = 5 hosts of the group are acted on, whatever the order."""
    policy = Policy(max_concurrent=8, fleet_cap=0.25, rate_count=1000)
    actions: list[PastAction] = []
    verdicts: dict[str, int] = {}
    for i in range(100):
        request = ActionRequest(f"fleet{i % 20:02d}", "restart_service", groups=("fleet",))
        d = decide(request, Situation(actions=actions, group_sizes=FLEET), policy, NOW)
        verdicts[d.guard or d.verdict] = verdicts.get(d.guard or d.verdict, 0) + 1
        if d.verdict == ACT:
            actions.append(PastAction(request.target, request.action, NOW, groups=("fleet",)))
    assert verdicts[ACT] == 5 and len({a.target for a in actions}) == 5
    assert verdicts["fleet_cap"] + verdicts["cooldown"] == 95


@pytest.mark.parametrize("bad", [{"fleet_cap": 0}, {"fleet_cap": 1.5}, {"max_concurrent": 0},
                                 {"cooldown": -1}, {"flap_count": 0}])
def test_a_policy_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Policy(**bad)

"""Remediation's safety guards, as one pure decision: may this action run on this target now?

The remediation engine (``monitor/engine.py``) gathers a :class:`Situation` from the state
store — actions running and recent, incidents per target, group sizes — and asks
:func:`decide` before every action; the :class:`Decision` (and the guard that made it) goes to
the audit log whatever it is. Nothing here reads a clock, a store or the network, so every
guard is tested in microseconds and the engine stays a thin loop around it::

    decision = decide(ActionRequest("fleet03", "restart_service", groups=("fleet",)),
                      situation, policy, now=time.time())
    if decision.verdict == ACT: ...

Guards, in the order they are asked (the first that objects decides):

1. kill switch — nothing acts (``SUPPRESSED``);
2. flap stop — a target with ``flap_count`` incidents within ``flap_window`` is left to a human
   (``ESCALATE``): acting again on what keeps breaking hides the fault;
3. approval — ``power_cycle`` and ``reprovision`` wait for an operator unless the rule allows
   them (``NEEDS_APPROVAL``);
4. cooldown — one action per target per ``cooldown`` seconds, counted from the last action's
   start (``SUPPRESSED``; the engine verifies, and a target still failing waits for the
   cooldown's end instead of ending);
5. lease — a run that is not remediation's holds the target's lease (an operator's
   ``apply``, a site run, a provisioning): it is changing the host, and what it restarts
   looks like a fault from outside (``SUPPRESSED``; the engine waits for the lease and then
   decides again, and the fault has often resolved by then);
6. rate limit — at most ``rate_count`` actions of one kind per ``rate_window`` seconds;
7. concurrency — at most ``max_concurrent`` actions running at once;
8. fleet cap — never more than ``fleet_cap`` of any group the target is in (at least one host
   of a group may always be acted on);
9. dry run — everything passed, nothing is done (``DRY_RUN``); else ``ACT``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ACT, DRY_RUN, SUPPRESSED, ESCALATE, NEEDS_APPROVAL = (
    "act", "dry_run", "suppressed", "escalate", "needs_approval")
#: Actions that need an operator's approval unless the rule says otherwise.
DISRUPTIVE = frozenset({"power_cycle", "reprovision"})


@dataclass(frozen=True)
class Policy:
    cooldown: float = 300.0
    rate_count: int = 20
    rate_window: float = 60.0
    max_concurrent: int = 5
    fleet_cap: float = 0.25
    flap_count: int = 3
    flap_window: float = 1800.0
    kill_switch: bool = False
    dry_run: bool = False
    approval_required: frozenset[str] = DISRUPTIVE

    def __post_init__(self) -> None:
        if not 0 < self.fleet_cap <= 1:
            raise ValueError(f"fleet_cap must be in (0, 1], got {self.fleet_cap}")
        for name in ("rate_count", "max_concurrent", "flap_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("cooldown", "rate_window", "flap_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class ActionRequest:
    """An action a rule wants to take. ``approved``: the rule (or an operator) allows a
    disruptive action without asking."""

    target: str
    action: str
    groups: tuple[str, ...] = ()
    approved: bool = False


@dataclass(frozen=True)
class PastAction:
    """An action taken (``ended_at`` None: still running)."""

    target: str
    action: str
    started_at: float
    ended_at: float | None = None
    groups: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Situation:
    """What the guards look at: recent and running actions, incident start times per target,
    how many hosts each group has, and the hosts another run is changing (host -> who)."""

    actions: Sequence[PastAction] = ()
    incidents: Mapping[str, Sequence[float]] = field(default_factory=dict)
    group_sizes: Mapping[str, int] = field(default_factory=dict)
    changing: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    verdict: str
    guard: str
    reason: str

    @property
    def acts(self) -> bool:
        return self.verdict == ACT


def decide(request: ActionRequest, situation: Situation, policy: Policy,
           now: float) -> Decision:
    """The verdict on ``request`` at time ``now`` (see the module docstring for the order)."""
    target, action = request.target, request.action
    if policy.kill_switch:
        return Decision(SUPPRESSED, "kill_switch", "remediation is paused (kill switch on)")
    recent = [t for t in situation.incidents.get(target, ()) if now - t <= policy.flap_window]
    if len(recent) >= policy.flap_count:
        return Decision(ESCALATE, "flap", f"{target} had {len(recent)} incidents within "
                        f"{policy.flap_window:g} s: left to a human")
    if action in policy.approval_required and not request.approved:
        return Decision(NEEDS_APPROVAL, "approval", f"{action} on {target} waits for an "
                        "operator's approval (the rule does not allow it by itself)")
    on_target = [a for a in situation.actions if a.target == target]
    if any(a.running for a in on_target):
        return Decision(SUPPRESSED, "cooldown", f"an action on {target} is running")
    last = max((a.started_at for a in on_target), default=None)
    if last is not None and now - last < policy.cooldown:
        return Decision(SUPPRESSED, "cooldown", f"{target} was acted on {now - last:.0f} s "
                        f"ago (cooldown {policy.cooldown:g} s)")
    if target in situation.changing:
        return Decision(SUPPRESSED, "lease", f"{target} is being changed: its lease is "
                        f"{situation.changing[target]}")
    same_kind = [a for a in situation.actions
                 if a.action == action and now - a.started_at < policy.rate_window]
    if len(same_kind) >= policy.rate_count:
        return Decision(SUPPRESSED, "rate_limit", f"{len(same_kind)} {action} actions within "
                        f"{policy.rate_window:g} s (limit {policy.rate_count})")
    running = [a for a in situation.actions if a.running]
    if len(running) >= policy.max_concurrent:
        return Decision(SUPPRESSED, "concurrency", f"{len(running)} actions running (limit "
                        f"{policy.max_concurrent})")
    for group in request.groups:
        size = situation.group_sizes.get(group, 0)
        if size <= 0:
            continue
        allowed = max(1, math.floor(policy.fleet_cap * size))
        busy = {a.target for a in running if group in a.groups}
        if len(busy) >= allowed:
            return Decision(SUPPRESSED, "fleet_cap", f"{len(busy)} of {size} hosts of group "
                            f"{group} are being acted on (cap {policy.fleet_cap:.0%}: "
                            f"{allowed} at once)")
    if policy.dry_run:
        return Decision(DRY_RUN, "dry_run", f"would {action} on {target} (dry run)")
    return Decision(ACT, "", f"{action} on {target}")

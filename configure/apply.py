"""Step kinds that converge roles on a host: ``apply_roles`` (the roles the inventory gives
the host) and ``apply_role`` (named ones). Check mode and drift come from the same code.

Recipes read facts (``when: facts.get('virtualization') ...``), so an apply brings its own:
the stored facts make the plan, and the fact probe rides along in the probe round trip, so a
converged host still costs one round trip. If the fresh facts answer any read differently, the
plan is made again from them and probed again (one more round trip, only when a fact that
matters changed). A host with no stored facts (or stored facts lacking one a recipe reads) has
them gathered first, in one extra round trip. Fresh facts are saved to the state store.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from configure.engine import ConvergeReport, RideAlong, RoleBlock, converge
from configure.facts import (
    GATHER_TIMEOUT_S,
    PROBE,
    GatheredFacts,
    gather_facts,
    has_facts,
    parse_facts,
)
from configure.roles import Role, blocks_for_host, resolve, role_search_path
from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import InputError
from inventory.secrets import secret_values_in


class _RoleCache:
    """Roles are loaded once per run, not once per host."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Role]] = {}

    def get(self, names: list[str], search: list[Path]) -> list[Role]:
        key = (tuple(names), tuple(str(p) for p in search))
        with self._lock:
            if key not in self._roles:
                self._roles[key] = resolve(names, search)
            return self._roles[key]


def outcome_of(report: ConvergeReport, check: bool) -> StepOutcome:
    changes = [f"{r.role}/{r.identity}: {c}" for r in report.results
               if r.status in ("changed", "unknown") for c in (r.changes or [r.identity])]
    data = {"round_trips": report.round_trips,
            "results": [{"role": r.role, "resource": r.identity, "status": r.status,
                         "changes": r.changes, "diff": r.diff, "message": r.message,
                         "handler": r.handler, "source": r.source} for r in report.results],
            "unknown": len(report.unknown)}
    if report.error:
        return StepOutcome("unreachable" if report.unreachable else "failed", report.error,
                           changes=changes, data=data)
    if report.failed:
        first = report.failed[0]
        return StepOutcome("failed", f"{first.role}/{first.identity}: {first.message}",
                           changes=changes, data=data)
    if report.changed or (check and report.unknown):
        verb = "would change" if check else "changed"
        msg = f"{verb} {report.changed}"
        if report.unknown:
            msg += f", {len(report.unknown)} unknown in check mode"
        return StepOutcome("changed", msg, changes=changes, data=data)
    return StepOutcome("ok", "converged", data=data)


class _FactsPlan:
    """The blocks of one host's apply, made from facts that are there and fresh enough."""

    def __init__(self, ctx: HostContext, conn: Any, roles: list[Role]) -> None:
        self.ctx = ctx
        self.conn = conn
        self.roles = roles
        self.round_trips = 0
        self.fresh = False
        self.facts = GatheredFacts(ctx.vars.get("facts") or {}, ctx.host)

    def _gather(self) -> None:
        found = gather_facts(self.conn, timeout=time_left(self.ctx.deadline, GATHER_TIMEOUT_S))
        self.round_trips += 1
        self.fresh = True
        self._save(found)
        self.facts = GatheredFacts(found, self.ctx.host)

    def _save(self, found: dict[str, Any]) -> None:
        if self.ctx.state is not None:
            self.ctx.state.save_facts(self.ctx.host, found)

    def _blocks(self) -> list[RoleBlock]:
        return blocks_for_host(self.roles, {**self.ctx.vars, "facts": self.facts})

    def first_blocks(self) -> list[RoleBlock]:
        if not has_facts(self.ctx.vars.get("facts")):
            self._gather()
        try:
            return self._blocks()
        except InputError:
            if self.fresh or not self.facts.missing:
                raise
        # The stored facts lack one a recipe reads (stored by an older probe): gather again;
        # a fact still missing then is the recipe's error.
        self._gather()
        return self._blocks()

    def ride_along(self) -> RideAlong | None:
        """The fact probe in the probe round trip, unless facts were just gathered."""
        return None if self.fresh else RideAlong(PROBE.script, self._revise)

    def _revise(self, output: str) -> list[RoleBlock] | None:
        found = parse_facts(output)
        if self.facts.changed_from(found):
            self._save(found)   # unchanged facts are not written again: one write less a host
        if self.facts.same_reads(found):
            return None
        self.facts = GatheredFacts(found, self.ctx.host)
        return self._blocks()


class ApplyRolesStep:
    name = "apply_roles"
    description = "converge the roles the inventory assigns to the host"

    def __init__(self) -> None:
        self._cache = _RoleCache()

    def parse(self, raw: Any) -> list[str] | None:
        if raw in (None, {}, True):
            return None
        roles = raw.get("roles") if isinstance(raw, dict) else raw
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str)
                                                                 for r in roles):
            raise ValueError("expected {} (the inventory's roles) or {roles: [name, ...]}")
        return roles

    def roles_to_converge(self, args: list[str] | None, variables: Any) -> list[str]:
        """The roles this step converges on a host with ``variables`` (validation before
        contact checks them: names, recipes, the variables they need)."""
        return list(args) if args is not None else list(variables.get("roles", []))

    def run(self, ctx: HostContext, args: list[str] | None) -> StepOutcome:
        names = self.roles_to_converge(args, ctx.vars)
        if not names:
            return StepOutcome("ok", "no roles assigned", data={"no_roles": True})
        search = role_search_path(ctx.options.get("playbooks_dir"))
        roles = self._cache.get(names, search)
        host = ctx.host
        state = ctx.state
        conn = ctx.connection()
        plan = _FactsPlan(ctx, conn, roles)
        blocks = plan.first_blocks()
        report = converge(
            conn, blocks, check=ctx.check,
            owed=state.owed_handlers(host) if state is not None else set(),
            on_owed=(lambda owed: state.set_owed_handlers(host, owed)) if state else None,
            secret_values=secret_values_in(ctx.vars), deadline=ctx.deadline,
            ride_along=plan.ride_along())
        report.round_trips += plan.round_trips
        if state is not None:
            if not ctx.check:
                state.set_owed_handlers(host, report.owed_after)
            drifted = [{"role": r.role, "resource": r.identity, "status": r.status,
                        "changes": r.changes} for r in report.results
                       if r.handler is None and (
                           r.status in ("changed", "unknown") if ctx.check
                           else r.status == "failed")]
            if report.error:
                pass  # what is known is partial: the stored drift report stays as it was
            elif ctx.check:
                state.save_drift(host, drifted)
            elif not report.failed:
                state.save_drift(host, [])
        return outcome_of(report, ctx.check)


class ApplyRoleStep(ApplyRolesStep):
    name = "apply_role"
    description = "converge the named role(s)"

    def parse(self, raw: Any) -> list[str]:
        roles = super().parse(raw)
        if roles is None:
            raise ValueError("name the role: apply_role: ROLE or {roles: [A, B]}")
        return roles

"""Validation before contact: everything about a run that can be known without a host.

``run``, ``run --plan``, ``apply``, ``drift`` and every other run (through
:func:`orchestrate.runs.start_run`, so ``metalchain serve`` and remediation too) check here
before the first connection, and ``inventory validate`` checks the inventory's roles:

- every step kind exists, every target term (a play's ``hosts:``, ``--limit``, ``@NAME``)
  matches something, with a "did you mean";
- every role a step converges exists (named in ``--role``, in a step, or by the inventory's
  ``roles:``) and loads;
- every variable a step's arguments, a role's recipe, ``when:`` or template reads is defined
  for each host by some layer: role defaults, inventory (all, groups, host), ``-e``, what the
  controller adds, stored facts. A name that could be a fact is left to the run.

All problems are collected, one line each (file:line first), so one edit fixes them all; a
run with any exits 2 and contacts no host.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configure.facts import could_be_fact
from configure.roles import (
    EntryNeeds,
    Role,
    available_roles,
    resolve,
    role_needs,
    role_search_path,
    undefined_for_host,
)
from configure.templating import UndefinedVariable, names_in_value, render_value
from inventory.errors import InputError
from inventory.model import Inventory
from inventory.select import select_hosts, target_problems
from inventory.variables import host_variables
from orchestrate.playbook import Play, Playbook, Step
from orchestrate.steps import StepRegistry

#: hosts named in one line before "and N more"
HOSTS_SHOWN = 5
COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Problem:
    """One thing that would stop the run: where it is written, what, and on which hosts."""

    source: str
    message: str
    hosts: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.source}: {self.message}" if self.source else self.message
        if self.hosts:
            shown = ", ".join(self.hosts[:HOSTS_SHOWN])
            more = len(self.hosts) - HOSTS_SHOWN
            text += f" (host{'s' if len(self.hosts) > 1 else ''} {shown}"
            text += f" and {more} more)" if more > 0 else ")"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "message": self.message, "hosts": list(self.hosts)}


class ValidationError(InputError):
    """A run that would fail before it changed anything: every problem, one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class RunInputs:
    """What a run would see, all known before any host is contacted."""

    inventory: Inventory
    registry: StepRegistry
    playbooks_dir: Path | None = None
    limit: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    named: Mapping[str, Sequence[str]] = field(default_factory=dict)
    facts: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)


def step_source(step: Step) -> str:
    """Where a step is written; a built-in one-step playbook comes from the command line."""
    return COMMAND_LINE if step.file.startswith("<") else f"{step.file}:{step.line}"


def play_source(play: Play) -> str:
    """Where a play's ``hosts:`` is written."""
    if play.file.startswith("<"):
        return COMMAND_LINE
    return f"{play.file}:{play.hosts_line or play.line}"


class _Collector:
    """Problems in the order found, the same (source, message) merged over hosts."""

    def __init__(self) -> None:
        self._order: list[tuple[str, str]] = []
        self._hosts: dict[tuple[str, str], list[str]] = {}

    def add(self, source: str, message: str, host: str | None = None) -> None:
        key = (source, message)
        if key not in self._hosts:
            self._order.append(key)
            self._hosts[key] = []
        if host is not None and host not in self._hosts[key]:
            self._hosts[key].append(host)

    def problems(self) -> list[Problem]:
        return [Problem(s, m, tuple(self._hosts[(s, m)])) for s, m in self._order]


class _Roles:
    """Roles resolved once per validation (names -> roles, or the error)."""

    def __init__(self, search: list[Path]) -> None:
        self.search = search
        self._known: list[str] | None = None
        self._resolved: dict[tuple[str, ...], list[Role] | str] = {}
        self._needs: dict[tuple[str, ...], list[EntryNeeds]] = {}

    def known(self) -> list[str]:
        if self._known is None:
            self._known = available_roles(self.search)
        return self._known

    def unknown(self, name: str) -> str | None:
        """The message for a role name that is not found, else None."""
        if name in self.known():
            return None
        close = difflib.get_close_matches(name, self.known(), n=1)
        if close:
            return f"unknown role '{name}' (did you mean '{close[0]}'?)"
        return f"unknown role '{name}' (roles: {', '.join(self.known()) or 'none'})"

    def resolve(self, names: Sequence[str]) -> list[Role] | str:
        key = tuple(names)
        if key not in self._resolved:
            try:
                self._resolved[key] = resolve(names, self.search)
            except InputError as exc:
                self._resolved[key] = str(exc)
        return self._resolved[key]

    def needs(self, names: Sequence[str], roles: list[Role]) -> list[EntryNeeds]:
        key = tuple(names)
        if key not in self._needs:
            self._needs[key] = role_needs(roles)
        return self._needs[key]


def _role_origin(inv: Inventory, host: str, role: str) -> str:
    """Where the inventory gives ``host`` the role: the host's or a group's ``roles:``."""
    h = inv.hosts[host]
    if role in h.roles:
        return f"{h.file}:{h.line_of('roles')}"
    for g in inv.groups_of(host):
        grp = inv.groups[g]
        if role in grp.roles:
            return f"{grp.file}:{grp.line_of('roles')}"
    return f"{h.file}:{h.line}"


def check_run(playbook: Playbook, inputs: RunInputs) -> list[Problem]:
    """Every problem of running ``playbook`` with ``inputs`` that needs no host."""
    out = _Collector()
    inv = inputs.inventory
    roles = _Roles(role_search_path(inputs.playbooks_dir))
    bad_limit = target_problems(inv, inputs.limit, inputs.named) if inputs.limit else []
    for message in bad_limit:
        out.add("--limit", message)
    host_vars: dict[str, dict[str, Any]] = {}

    def variables(host: str) -> dict[str, Any]:
        if host not in host_vars:
            host_vars[host] = host_variables(inv, host, facts=inputs.facts.get(host),
                                             extra=inputs.extra, context=inputs.context)
        return host_vars[host]

    # A play whose (correctly spelled) target selects no host is skipped, as long as some
    # play of the run selects one: a site without guests runs site.yml's VM plays on nobody.
    empty: list[tuple[str, str]] = []
    selected = False
    for play in playbook.plays:
        hosts = [] if bad_limit else _play_hosts(play, inputs, out, empty)
        selected = selected or bool(hosts)
        for step in play.steps:
            _check_step(step, hosts, variables, inputs, roles, out)
    if not selected:
        for source, message in empty:
            out.add(source, message)
    return out.problems()


def _play_hosts(play: Play, inputs: RunInputs, out: _Collector,
                empty: list[tuple[str, str]]) -> list[str]:
    terms = target_problems(inputs.inventory, play.hosts, inputs.named)
    for message in terms:
        out.add(play_source(play), message)
    if terms:
        return []
    try:
        return select_hosts(inputs.inventory, play.hosts, inputs.limit, inputs.named,
                            inputs.facts)
    except InputError as exc:
        if "selects no hosts" in str(exc):
            empty.append((play_source(play), str(exc)))
        else:
            out.add(play_source(play), str(exc))
        return []


def _check_step(step: Step, hosts: list[str], variables: Any, inputs: RunInputs,
                roles: _Roles, out: _Collector) -> None:
    source = step_source(step)
    if step.kind not in inputs.registry:
        try:
            inputs.registry.get(step.kind)
        except InputError as exc:
            out.add(source, str(exc))
        return
    kind = inputs.registry.get(step.kind)
    # A kind that can tell from the inventory alone that a host cannot run it (provision: a
    # host without a BMC) says so here: host_problem(Host) -> message or None.
    host_problem = getattr(kind, "host_problem", None)
    if host_problem is not None:
        for host in hosts:
            if (message := host_problem(inputs.inventory.hosts[host])) is not None:
                out.add(source, message, host)
    converges = getattr(kind, "roles_to_converge", None)
    if not step.templated:
        if converges is None:
            return
        named = converges(step.args, {})
        if named:   # roles the step itself names: checked once, not per host
            bad = [m for n in named if (m := roles.unknown(n))]
            for m in bad:
                out.add(source, m)
            if bad:
                return
    needs = names_in_value(step.raw) if step.templated else frozenset()
    for host in hosts:
        hv = variables(host)
        args = step.args
        if step.templated:
            lacking = any(n not in hv and not could_be_fact(n) for n in needs)
            if not lacking and converges is None:
                continue    # every name is defined and nothing else depends on the values
            try:
                rendered = render_value(step.raw, hv, source)
            except UndefinedVariable as exc:
                if not could_be_fact(exc.name):
                    out.add(source, f"'{exc.name}' is undefined", host)
                continue
            except InputError:
                continue    # a fact not stored yet, or the like: only the host can tell
            try:
                args = kind.parse(rendered)
            except ValueError as exc:
                out.add(source, f"after rendering templates: {exc}", host)
                continue
        if converges is not None:
            _check_roles(step, host, converges(args, hv), args is not None, hv, inputs,
                         roles, out)


def _check_roles(step: Step, host: str, names: list[str], from_step: bool,
                 hv: Mapping[str, Any], inputs: RunInputs, roles: _Roles,
                 out: _Collector) -> None:
    if not names:
        return
    bad = False
    for n in names:
        message = roles.unknown(n)
        if message is not None:
            bad = True
            where = step_source(step) if from_step else _role_origin(inputs.inventory, host, n)
            out.add(where, message)
    if bad:
        return
    resolved = roles.resolve(names)
    if isinstance(resolved, str):
        out.add(step_source(step), resolved)
        return
    for where, message in undefined_for_host(resolved, hv, roles.needs(names, resolved)):
        out.add(where, message, host)


def check_inventory_roles(inv: Inventory, playbooks_dir: Path | None) -> list[Problem]:
    """Every role the inventory's hosts and groups name that is not found or does not load,
    at the ``roles:`` line that names it."""
    out = _Collector()
    roles = _Roles(role_search_path(playbooks_dir))
    owners = [*inv.groups.values(), *inv.hosts.values()]
    for owner in owners:
        for n in owner.roles:
            where = f"{owner.file}:{owner.line_of('roles')}"
            message = roles.unknown(n)
            if message is not None:
                out.add(where, message)
                continue
            resolved = roles.resolve([n])
            if isinstance(resolved, str):
                out.add(where, f"role '{n}': {resolved}")
    return out.problems()

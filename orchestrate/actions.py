"""Application-core entry points that are one-step runs: exec, facts, power, verify, drift.

Each runs through :func:`orchestrate.runs.start_run` — so it is journaled, bounded, masked
and audited like any run — and returns plain data the CLI prints and ``serve`` (or a
remediation action) can use as is. The ``*_doc`` functions turn a run's report into the
documents of the CLI's ``--json`` output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from configure.verify import DEFAULT_PARALLEL, DEFAULT_TIMEOUT, VerifyReport, report_of
from inventory.errors import InputError
from inventory.variables import host_variables
from orchestrate.playbook import Play, Playbook
from orchestrate.reports import FAILED, RunReport
from orchestrate.runs import (
    Listener,
    RunOptions,
    preflight,
    select,
    single_step_playbook,
    start_run,
)
from orchestrate.stop import Stop
from runtime.text import plural

#: BMCs answer one session at a time and slowly: fewer at once than SSH hosts.
POWER_PARALLEL = 32


def report_doc(report: RunReport) -> dict[str, Any]:
    """The ``run.result`` document (also the base of ``apply.result``)."""
    return {
        "run": report.uid, "exit_code": report.exit_code, "counts": report.counts(),
        "items": report.item_counts().to_json(),
        "stopped": report.stopped_reason or None, "not_run": report.not_run,
        "interrupted": report.interrupted or None, "incomplete": report.incomplete,
        "held": report.held,
        "hosts": {h: {"status": r.status, "changed": r.changed,
                      "steps": [{"play": s.play, "step": s.step, "status": s.outcome.status,
                                 "message": s.outcome.message, "changes": s.outcome.changes,
                                 "attempts": s.attempts, "resumed": s.resumed,
                                 "duration": round(s.duration, 3),
                                 "round_trips": s.outcome.data.get("round_trips")}
                                for s in r.steps]}
                  for h, r in report.hosts.items()},
    }


def exec_command(site: Any, target: str, command: Sequence[str], *, limit: str | None = None,
                 parallel: int = 100, timeout: float = 600.0, become: bool = False,
                 on_event: Listener | None = None, stop: Stop | None = None) -> RunReport:
    """Run ``command`` (an argument list) on every host of ``target`` (``stop``: see
    :func:`orchestrate.runs.start_run`)."""
    from configure.command import CommandArgs

    args = CommandArgs(command=tuple(command), timeout=timeout, become=become)
    pb = single_step_playbook(target, "command", args, " ".join(command)[:60])
    return start_run(site, pb, RunOptions(kind="exec", limit=limit, parallel=parallel),
                     on_event=on_event, stop=stop)


def exec_results(report: RunReport) -> dict[str, dict[str, Any]]:
    """Per host: status, exit code, stdout, stderr, message of an exec run."""
    results = {}
    for h, r in report.hosts.items():
        s = r.steps[0] if r.steps else None
        data = s.outcome.data if s else {}
        results[h] = {"status": r.status, "exit_code": data.get("exit_code"),
                      "stdout": data.get("stdout", s.outcome.output if s else ""),
                      "stderr": data.get("stderr", ""),
                      "message": s.outcome.message if s else ""}
    return results


def gather_facts(site: Any, target: str, *, limit: str | None = None, parallel: int = 100,
                 cached: bool = False, on_event: Listener | None = None
                 ) -> tuple[dict[str, Any], int]:
    """Gather (or with ``cached``, only read) the facts of ``target``'s hosts; returns
    host -> facts (None if never gathered) and the run's exit code."""
    store = site.state
    hosts = select(site, target, limit)
    code = 0
    if not cached:
        pb = single_step_playbook(target, "gather_facts", None, "gather facts")
        report = start_run(site, pb, RunOptions(kind="facts", limit=limit,
                                                parallel=parallel), on_event=on_event)
        for h, r in report.hosts.items():
            if r.steps and "facts" in r.steps[0].outcome.data:
                store.save_facts(h, r.steps[0].outcome.data["facts"])
        code = report.exit_code
    known = store.all_facts()
    return {h: known.get(h) for h in hosts}, code


def drift_doc(report: RunReport) -> dict[str, list[dict[str, Any]]]:
    """Per host, the resources that drifted (or failed) in a drift run."""
    per_host: dict[str, list[dict[str, Any]]] = {}
    for h, r in report.hosts.items():
        rows = []
        for s in r.steps:
            for res in s.outcome.data.get("results", []):
                if res["handler"] is None and res["status"] in ("changed", "unknown",
                                                                "failed"):
                    rows.append({"role": res["role"], "resource": res["resource"],
                                 "status": res["status"], "changes": res["changes"],
                                 "message": res["message"]})
        per_host[h] = rows
    return per_host


#: ``drift``'s exit code when drift was found (also with ``--fix``: found and corrected);
#: 0 is every selected host checked and matching, 1 hosts that could not be checked (this
#: wins over drift), 2 bad input (a target whose hosts have no roles assigned included).
EXIT_DRIFT = 3


@dataclass
class DriftResult:
    """A drift check (or fix) over the selected hosts, and its one verdict.

    ``drifted``: checked, and differing from their roles; ``not_checked``: host -> why
    (failed, unreachable, not run); ``no_roles``: nothing to check them against."""

    report: RunReport
    fixed: bool
    hosts: list[str]
    rows: dict[str, list[dict[str, Any]]]
    drifted: list[str] = field(default_factory=list)
    not_checked: dict[str, str] = field(default_factory=dict)
    no_roles: list[str] = field(default_factory=list)

    @property
    def checked(self) -> list[str]:
        return [h for h in self.hosts if h not in self.not_checked and h not in self.no_roles]

    @property
    def verdict(self) -> str:
        """``not_checked``, ``drift``, ``no_roles`` or ``match`` (the exit code's reason)."""
        if self.not_checked:
            return "not_checked"
        if self.drifted:
            return "drift"
        return "no_roles" if self.no_roles else "match"

    @property
    def exit_code(self) -> int:
        return {"not_checked": 1, "drift": EXIT_DRIFT, "no_roles": 2, "match": 0}[self.verdict]

    def lines(self) -> list[str]:
        """The verdict in words, one line per fact (what the CLI prints last)."""
        n = len(self.hosts)
        out = []
        if self.drifted:
            verb = "drift fixed" if self.fixed else "drift found"
            out.append(f"{verb} on {plural(len(self.drifted), 'host')} of {n}: "
                       f"{', '.join(self.drifted)}")
        if self.not_checked:
            out.append(f"{plural(len(self.not_checked), 'host')} could not be checked: "
                       + ", ".join(f"{h} ({why})" for h, why in self.not_checked.items()))
        if self.no_roles:
            out.append(f"no roles assigned to {plural(len(self.no_roles), 'host')} "
                       f"(not checked): {', '.join(self.no_roles)}")
        if self.verdict == "match":
            out.append(f"no drift: {plural(len(self.checked), 'host')} checked, "
                       "all match their roles")
        elif not self.drifted and self.checked:
            out.append(f"no drift on the {plural(len(self.checked), 'host')} checked")
        return out

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {"run": r.uid, "fixed": self.fixed, "exit_code": self.exit_code,
                "verdict": self.verdict, "summary": self.lines(),
                "checked": self.checked, "drifted": self.drifted,
                "not_checked": self.not_checked, "no_roles": self.no_roles, "held": r.held,
                "hosts": {h: {"status": r.hosts[h].status if h in r.hosts
                              else "held" if h in r.held else "not_run",
                              "drift": self.rows.get(h, [])} for h in self.hosts}}


def drift(site: Any, target: str, roles: Sequence[str] | None = None, *, fix: bool = False,
          diff: bool = False, limit: str | None = None, parallel: int = 100,
          wait: float | None = None, on_event: Listener | None = None,
          stop: Stop | None = None) -> DriftResult:
    """Check ``target``'s hosts against their roles (``roles``: these instead); with
    ``fix``, converge what drifted. Hosts that have no roles assigned are not contacted;
    if no selected host has any, that is an InputError before any connection."""
    pb = single_step_playbook(target, "apply_roles", list(roles) if roles else None,
                              "drift check" if not fix else "drift fix")
    options = RunOptions(kind="drift", limit=limit, check=not fix, diff=diff,
                         parallel=parallel, wait=wait)
    preflight(site, pb, options)
    hosts = select(site, target, limit)
    no_roles = [] if roles else hosts_without_roles(site, hosts)
    if no_roles and len(no_roles) == len(hosts):
        raise InputError(f"no roles assigned to {', '.join(no_roles)}: nothing to check "
                         "(assign roles in the inventory, or name them with --role)")
    report = start_run(site, pb, options, on_event=on_event, stop=stop)
    return drift_result(report, hosts, fixed=fix, no_roles=no_roles)


def drift_result(report: RunReport, hosts: Sequence[str], *, fixed: bool = False,
                 no_roles: Sequence[str] = ()) -> DriftResult:
    """The verdict of a drift run over ``hosts`` (``no_roles``: known not to be checked)."""
    rows = drift_doc(report)
    result = DriftResult(report, fixed, list(hosts), rows, no_roles=list(no_roles))
    for h in hosts:
        if h in no_roles:
            continue
        r = report.hosts.get(h)
        if h in report.held:
            result.not_checked[h] = report.held[h]
        elif r is None or not r.steps:
            result.not_checked[h] = "not run"
        elif r.status in FAILED:
            result.not_checked[h] = f"{r.status}: {r.steps[-1].outcome.message}"[:200]
        elif r.steps[0].outcome.data.get("no_roles"):
            result.no_roles.append(h)
        elif rows.get(h):
            result.drifted.append(h)
    return result


def hosts_without_roles(site: Any, hosts: Sequence[str]) -> list[str]:
    """The hosts to which neither the inventory nor a ``roles`` variable assigns a role."""
    inv = site.inventory
    return [h for h in hosts if not host_variables(inv, h).get("roles")]


@dataclass
class PowerResult:
    """One power action over hosts: per host ``{host, ok, result, error}`` in target order;
    a guest's row also has ``via`` (``libvirt on HYPERVISOR``) and, for ``status``,
    ``state`` (libvirt's word for it: ``running``, ``shut off``, ...)."""

    action: str
    run: str
    hosts: list[dict[str, Any]] = field(default_factory=list)
    #: Hosts left out because they have no BMC (``status`` only; other actions refuse).
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(not h["ok"] for h in self.hosts) else 0


def power(site: Any, target: str, action: str, *, limit: str | None = None,
          device: str | None = None, persistent: bool = True, wait: float | None = None,
          on_event: Listener | None = None) -> PowerResult:
    """A power action (status, on, off, cycle, soft-off, bootdev) on ``target``'s hosts.

    A machine's goes through its BMC (the ``power`` step); a guest's (a host with a ``vm:``
    section) through libvirt on its hypervisor (the ``vm_power`` step, run on the hypervisor
    over SSH: :mod:`configure.virsh_power`) -- one run for both. ``bootdev`` is for machines
    only: a guest boots from its disk image, which the ``vm`` step defines.

    ``status`` is read-only and skips the selected hosts that have neither (they are listed
    in ``PowerResult.skipped``), so ``power status all`` works on a site with SSH-only
    hosts; every other action refuses the whole target if a host in it has no BMC and is
    not a guest, naming it, so nothing is powered on a target the operator did not mean.
    """
    inv = site.inventory
    selected = select(site, target, limit)
    guests = [h for h in selected if inv.hosts[h].vm is not None]
    hosts = [h for h in selected if inv.hosts[h].bmc is not None]
    missing = [h for h in selected if h not in guests and h not in hosts]
    if missing and action != "status":
        raise InputError(f"power {action}: no BMC in the inventory for {', '.join(missing)}"
                         " (narrow the target, e.g. with --limit)")
    if guests and action == "bootdev":
        raise InputError(f"power bootdev: {', '.join(guests)} "
                         f"{'is a guest' if len(guests) == 1 else 'are guests'}: a guest "
                         "boots from its disk image, which the vm step defines (narrow the "
                         "target, e.g. with --limit)")
    if not hosts and not guests:
        raise InputError(f"power {action}: no host in '{target}' has a BMC "
                         f"({', '.join(missing)})")
    plays: list[Play] = []
    if hosts:
        args: dict[str, Any] = {"action": action}
        if action == "bootdev":
            args.update(device=device, persistent=persistent)
        from provision.power_step import parse_power

        plays += single_step_playbook("@power", "power", parse_power(args),
                                      f"power {action}").plays
    hypervisors = list(dict.fromkeys(inv.hosts[g].vm.hypervisor for g in guests))
    if guests:
        from configure.virsh_power import parse_vm_power

        vm_args = parse_vm_power({"action": action, "guests": guests})
        plays += single_step_playbook("@vm_power", "vm_power", vm_args,
                                      f"power {action} (libvirt)").plays
    pb = Playbook(path=Path("<power>"), plays=[replace(p, index=i) for i, p in
                                               enumerate(plays)])
    # status changes nothing: it takes no lease (and answers while another run holds one).
    report = start_run(site, pb, RunOptions(kind="power", parallel=POWER_PARALLEL,
                                            named={"power": hosts, "vm_power": hypervisors},
                                            leases=action != "status", wait=wait),
                       on_event=on_event)
    result = PowerResult(action, report.uid, skipped=missing)
    for h in selected:
        if h in hosts:
            outcome = report.first_outcome(h)
            ok = outcome is not None and outcome.status not in FAILED
            result.hosts.append({
                "host": h, "ok": ok,
                "result": outcome.data.get("result") if ok and outcome else None,
                "error": None if ok else (outcome.message if outcome
                                          else report.held.get(h, "not run"))})
        elif h in guests:
            result.hosts.append(_guest_power(report, h, inv.hosts[h].vm.hypervisor))
    return result


def _guest_power(report: RunReport, guest: str, hypervisor: str) -> dict[str, Any]:
    """A guest's row of a power result, from its hypervisor's ``vm_power`` step."""
    row: dict[str, Any] = {"host": guest, "ok": False, "via": f"libvirt on {hypervisor}",
                           "result": None, "error": None}
    r = report.hosts.get(hypervisor)
    step = next((s for s in (r.steps if r else []) if s.play == "vm_power"), None)
    mine = (step.outcome.data.get("guests") or {}).get(guest) if step else None
    if mine is None:
        row["error"] = (step.outcome.message if step else
                        report.held.get(hypervisor, f"not run on its hypervisor {hypervisor}"))
        return row
    row.update(ok=bool(mine.get("ok")), result=mine.get("result"), error=mine.get("error"))
    if mine.get("state"):
        row["state"] = mine["state"]
    return row


def verify_hosts(site: Any, hosts: Sequence[str], roles: Sequence[str] | None = None, *,
                 parallel: int = DEFAULT_PARALLEL, timeout: float = DEFAULT_TIMEOUT,
                 extra: dict[str, Any] | None = None,
                 on_event: Listener | None = None) -> VerifyReport:
    """Run the roles' testinfra checks on ``hosts``: a run of the ``verify`` step, so the
    checks see exactly the variables ``apply`` gave the roles (same ``-e``)."""
    if not hosts:
        raise InputError("no hosts to verify")
    start = time.monotonic()
    from configure.verify import VerifyArgs

    args = VerifyArgs(tuple(roles) if roles else None, float(timeout))
    pb = single_step_playbook("@verify", "verify", args, "verify")
    report = start_run(site, pb, RunOptions(kind="verify", extra=dict(extra or {}),
                                            parallel=parallel, named={"verify": list(hosts)}),
                       on_event=on_event)
    return report_of({h: report.first_outcome(h) for h in hosts}, time.monotonic() - start)

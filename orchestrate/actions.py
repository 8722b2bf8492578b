"""Application-core entry points that are one-step runs: exec, facts, power, verify, drift.

Each runs through :func:`orchestrate.runs.start_run` — so it is journaled, bounded, masked
and audited like any run — and returns plain data the CLI prints and ``serve`` (or a
remediation action) can use as is. The ``*_doc`` functions turn a run's report into the
documents of the CLI's ``--json`` output.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from configure.verify import DEFAULT_PARALLEL, DEFAULT_TIMEOUT, VerifyReport, report_of
from inventory.errors import InputError
from orchestrate.reports import FAILED, RunReport
from orchestrate.runs import Listener, RunOptions, select, single_step_playbook, start_run

#: BMCs answer one session at a time and slowly: fewer at once than SSH hosts.
POWER_PARALLEL = 32


def report_doc(report: RunReport) -> dict[str, Any]:
    """The ``run.result`` document (also the base of ``apply.result``)."""
    return {
        "run": report.uid, "exit_code": report.exit_code, "counts": report.counts(),
        "stopped": report.stopped_reason or None, "not_run": report.not_run,
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
                 on_event: Listener | None = None) -> RunReport:
    """Run ``command`` (an argument list) on every host of ``target``."""
    from configure.command import CommandArgs

    args = CommandArgs(command=tuple(command), timeout=timeout, become=become)
    pb = single_step_playbook(target, "command", args, " ".join(command)[:60])
    return start_run(site, pb, RunOptions(kind="exec", limit=limit, parallel=parallel),
                     on_event=on_event)


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


@dataclass
class PowerResult:
    """One power action over hosts: per host ``{host, ok, result, error}`` in target order."""

    action: str
    run: str
    hosts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(not h["ok"] for h in self.hosts) else 0


def power(site: Any, target: str, action: str, *, limit: str | None = None,
          device: str | None = None, persistent: bool = True, wait: float | None = None,
          on_event: Listener | None = None) -> PowerResult:
    """A BMC action (status, on, off, cycle, soft-off, bootdev) on ``target``'s hosts."""
    inv = site.inventory
    hosts = select(site, target, limit)
    missing = [h for h in hosts if inv.hosts[h].bmc is None]
    if missing:
        raise InputError(f"no bmc in the inventory for: {', '.join(missing)}")
    args: dict[str, Any] = {"action": action}
    if action == "bootdev":
        args.update(device=device, persistent=persistent)
    from provision.power_step import parse_power

    pb = single_step_playbook("@power", "power", parse_power(args), f"power {action}")
    # status changes nothing: it takes no lease (and answers while another run holds one).
    report = start_run(site, pb, RunOptions(kind="power", parallel=POWER_PARALLEL,
                                            named={"power": hosts}, leases=action != "status",
                                            wait=wait), on_event=on_event)
    result = PowerResult(action, report.uid)
    for h in hosts:
        outcome = report.first_outcome(h)
        ok = outcome is not None and outcome.status not in FAILED
        result.hosts.append({"host": h, "ok": ok,
                             "result": outcome.data.get("result") if ok and outcome else None,
                             "error": None if ok else (outcome.message if outcome
                                                       else report.held.get(h, "not run"))})
    return result


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

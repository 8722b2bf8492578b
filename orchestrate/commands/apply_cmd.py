"""`metalchain apply` and `metalchain drift`: converge roles, or report where hosts drifted."""

from __future__ import annotations

from typing import Any

import click

from inventory.errors import InputError
from orchestrate import output
from orchestrate.actions import drift_doc, report_doc, verify_hosts
from orchestrate.backend import DEFAULT_PARALLELISM
from orchestrate.commands.common import json_option, parse_extra, wait_options, wait_seconds
from orchestrate.runs import RunOptions, load, single_step_playbook, start_run


@click.command()
@click.argument("playbook_or_target")
@click.option("--role", "roles", multiple=True, help="Apply this role (repeatable); the "
              "argument is then a TARGET.")
@click.option("--check", is_flag=True, help="Predict changes; change nothing.")
@click.option("--diff", is_flag=True, help="Show what changes (or would), file by file.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Afterwards run the roles' testinfra checks on the hosts that converged.")
@click.option("--limit", help="Narrow the hosts.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True)
@wait_options
@json_option
@click.pass_obj
def apply(obj: Any, playbook_or_target: str, roles: tuple[str, ...], check: bool, diff: bool,
          then_verify: bool, limit: str | None, extra: tuple[str, ...], parallel: int,
          wait: bool, wait_timeout: float | None, as_json: bool) -> None:
    """Converge roles: `apply PLAYBOOK`, or `apply --role ROLE TARGET`."""
    site = obj.site
    if roles:
        pb = single_step_playbook(playbook_or_target, "apply_role", list(roles),
                                  f"apply {', '.join(roles)}")
    else:
        pb = load(site, playbook_or_target)
    extra_vars = parse_extra(extra)
    options = RunOptions(kind="apply", limit=limit, extra=extra_vars, check=check, diff=diff,
                         parallel=parallel, wait=wait_seconds(wait, wait_timeout))
    report = output.with_progress(lambda on_event: start_run(site, pb, options, on_event=on_event))
    verified = None
    if then_verify and not check:
        converged = [h for h, r in report.hosts.items() if r.status in ("ok", "changed")]
        if converged:
            verified = verify_hosts(site, converged, list(roles) or None, parallel=parallel,
                                    timeout=600, extra=extra_vars)
    code = max(report.exit_code, verified.exit_code if verified else 0)
    if as_json:
        output.emit_json("apply.result", {**report_doc(report), "check": check,
                                          "exit_code": code,
                                          "verify": verified.to_json() if verified else None})
    else:
        if diff or check:
            output.print_diffs(report)
        output.print_summary(report)
        if verified is not None:
            output.print_verify(verified)
    raise click.exceptions.Exit(code)


@click.command()
@click.argument("target")
@click.option("--role", "roles", multiple=True,
              help="Check this role (repeatable) instead of the inventory's roles.")
@click.option("--fix", is_flag=True, help="Converge what drifted.")
@click.option("--diff", is_flag=True, help="Show the differences.")
@click.option("--limit", help="Narrow the hosts.")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True)
@wait_options
@json_option
@click.pass_obj
def drift(obj: Any, target: str, roles: tuple[str, ...], fix: bool, diff: bool,
          limit: str | None, parallel: int, wait: bool, wait_timeout: float | None,
          as_json: bool) -> None:
    """Check TARGET's hosts against their roles; with --fix, converge them.

    A check takes no host lease (it changes nothing, and may see a host mid-change by
    another run); --fix takes the lease of every host, like apply."""
    site = obj.site
    pb = single_step_playbook(target, "apply_roles", list(roles) or None,
                              "drift check" if not fix else "drift fix")
    options = RunOptions(kind="drift", limit=limit, check=not fix, diff=diff,
                         parallel=parallel, wait=wait_seconds(wait, wait_timeout))
    report = output.with_progress(lambda on_event: start_run(site, pb, options, on_event=on_event))
    per_host = drift_doc(report)
    if as_json:
        output.emit_json("drift.result", {"run": report.uid, "fixed": fix,
                                          "exit_code": report.exit_code,
                                          "held": report.held,
                                          "hosts": {h: {"status": report.hosts[h].status,
                                                        "drift": rows}
                                                    for h, rows in per_host.items()}})
    else:
        if diff:
            output.print_diffs(report)
        output.table("drift" + (" (fixed)" if fix else ""), ["host", "role", "resource",
                                                             "status", "changes"],
                     [[h, r["role"], r["resource"], r["status"], r["changes"]]
                      for h, rows in per_host.items() for r in rows]
                     or [["-", "-", "-", "no drift", "-"]])
        output.print_summary(report)
    if not report.hosts and not report.held:
        raise InputError(f"target '{target}' selected no hosts")
    raise click.exceptions.Exit(report.exit_code)

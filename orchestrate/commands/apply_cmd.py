"""`metalchain apply` and `metalchain drift`: converge roles, or report where hosts drifted."""

from __future__ import annotations

from typing import Any

import click

from orchestrate import output
from orchestrate.actions import drift as drift_check
from orchestrate.actions import report_doc, verify_hosts
from orchestrate.backend import DEFAULT_PARALLELISM
from orchestrate.commands.common import (
    json_option,
    parse_extra,
    stop_on_signals,
    wait_options,
    wait_seconds,
)
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
    """Converge roles: `apply PLAYBOOK`, or `apply --role ROLE TARGET`.

    \b
    Examples:
      metalchain apply site                        # the playbook playbooks/site.yml
      metalchain apply --role base all --check --diff
      metalchain apply --role base web -v --verify
    """
    site = obj.site
    if roles:
        pb = single_step_playbook(playbook_or_target, "apply_role", list(roles),
                                  f"apply {', '.join(roles)}")
    else:
        pb = load(site, playbook_or_target)
    extra_vars = parse_extra(extra)
    options = RunOptions(kind="apply", limit=limit, extra=extra_vars, check=check, diff=diff,
                         parallel=parallel, wait=wait_seconds(wait, wait_timeout))
    with stop_on_signals() as stop:
        report = output.with_progress(lambda on_event: start_run(
            site, pb, options, on_event=on_event, stop=stop))
    verified = None
    if then_verify and not check and not report.interrupted:
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


@click.command(epilog="Exit codes: 0 every selected host was checked and matches its roles; "
                      "1 some hosts could not be checked (failed, unreachable; this wins over "
                      "drift); 2 bad input, or hosts with no roles assigned (not checked); "
                      "3 drift was found (with --fix: found and corrected).")
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
    another run); --fix takes the lease of every host, like apply.

    \b
    Examples:
      metalchain drift all --diff
      metalchain drift nodes --role base --fix
    """
    with stop_on_signals() as stop:
        result = output.with_progress(lambda on_event: drift_check(
            obj.site, target, list(roles) or None, fix=fix, diff=diff, limit=limit,
            parallel=parallel, wait=wait_seconds(wait, wait_timeout), on_event=on_event,
            stop=stop))
    report = result.report
    if as_json:
        output.emit_json("drift.result", result.to_json())
    else:
        if diff:
            output.print_diffs(report)
        rows = [[h, r["role"], r["resource"], r["status"], r["changes"]]
                for h, host_rows in result.rows.items() for r in host_rows]
        if rows:
            output.table("drift" + (" (fixed)" if fix else ""),
                         ["host", "role", "resource", "status", "changes"], rows)
        output.print_summary(report)
        for text in result.lines():
            output.line(text)
    raise click.exceptions.Exit(result.exit_code)

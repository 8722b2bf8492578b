"""`metalchain verify TARGET [--role R] [--json]`: run the roles' testinfra checks on hosts.

Exit codes: 0 every check passed, 1 a check failed or a host could not be verified, 2 bad
input (unknown target or role).
"""

from __future__ import annotations

from typing import Any

import click

from configure.verify import DEFAULT_PARALLEL, DEFAULT_TIMEOUT, VerifyReport, verify_hosts
from inventory.select import select_hosts
from orchestrate import output
from orchestrate.commands.common import json_option, parse_extra
from orchestrate.commands.run_cmd import mirror_var
from orchestrate.runner import last_failed_hosts


def print_report(report: VerifyReport) -> None:
    """Human output: one line per host, then each failed check with its message."""
    for host, r in report.hosts.items():
        output.line(f"{host}: {r.status} ({r.message}) in {r.duration:.1f} s")
        for t in r.tests:
            if t.outcome in ("failed", "error"):
                output.line(f"  {t.outcome.upper()} {t.id}")
                for line in t.message.splitlines()[-8:]:
                    output.line(f"    {line}")
    c = {"passed": 0, "failed": 0, "error": 0, "no_tests": 0}
    for r in report.hosts.values():
        c[r.status] = c.get(r.status, 0) + 1
    output.line("verify: " + ", ".join(f"{k}={v}" for k, v in c.items())
                + f" ({report.duration:.1f} s)")


def run_verify(site: Any, hosts: list[str], roles: list[str] | None, *, parallel: int,
               timeout: float, extra: dict[str, Any] | None = None) -> VerifyReport:
    """What `verify` and `apply --verify` run: the checks see the variables the roles saw."""
    return verify_hosts(site, hosts, roles, parallel=parallel, timeout=timeout,
                        extra_vars={"metalchain_mirror": mirror_var(site), **(extra or {})})


@click.command("verify")
@click.argument("target")
@click.option("--role", "roles", multiple=True,
              help="Verify this role (repeatable) instead of the inventory's roles.")
@click.option("--limit", help="Narrow the hosts.")
@click.option("--parallel", type=click.IntRange(1, 1000), default=DEFAULT_PARALLEL,
              show_default=True, help="Hosts at once.")
@click.option("--timeout", type=click.FloatRange(1, 86400), default=DEFAULT_TIMEOUT,
              show_default=True, help="Seconds per host.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="A variable as given to apply (highest precedence).")
@json_option
@click.pass_obj
def verify(obj: Any, target: str, roles: tuple[str, ...], limit: str | None, parallel: int,
           timeout: float, extra: tuple[str, ...], as_json: bool) -> None:
    """Run the testinfra checks (roles' verify/test_*.py) on TARGET's hosts over SSH."""
    site = obj.site
    hosts = select_hosts(site.inventory, target, limit,
                         {"failed": last_failed_hosts(site.state)}, site.state.all_facts())
    report = run_verify(site, hosts, list(roles) or None, parallel=parallel, timeout=timeout,
                        extra=parse_extra(extra))
    if as_json:
        output.emit_json("verify.result", report.to_json())
    else:
        print_report(report)
    raise click.exceptions.Exit(report.exit_code)

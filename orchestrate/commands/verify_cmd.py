"""`metalchain verify TARGET [--role R] [--json]`: run the roles' testinfra checks on hosts.

Exit codes: 0 every check passed, 1 a check failed or a host could not be verified, 2 bad
input (unknown target or role).
"""

from __future__ import annotations

from typing import Any

import click

from configure.verify import DEFAULT_PARALLEL, DEFAULT_TIMEOUT
from orchestrate import output
from orchestrate.actions import verify_hosts
from orchestrate.commands.common import json_option, parse_extra
from orchestrate.runs import select


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
    """Run the testinfra checks (roles' verify/test_*.py) on TARGET's hosts over SSH.

    \b
    Examples:
      metalchain verify all
      metalchain verify node1 --role node_exporter
    """
    site = obj.site
    report = verify_hosts(site, select(site, target, limit), list(roles) or None,
                          parallel=parallel, timeout=timeout, extra=parse_extra(extra))
    if as_json:
        output.emit_json("verify.result", report.to_json())
    else:
        output.print_verify(report)
    raise click.exceptions.Exit(report.exit_code)

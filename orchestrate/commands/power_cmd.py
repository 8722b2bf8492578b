"""`metalchain power status|on|off|cycle|soft-off|bootdev TARGET`: BMC control, in parallel.

Each command is a run of the ``power`` step (see :func:`orchestrate.actions.power`).
"""

from __future__ import annotations

from typing import Any

import click

from orchestrate import output
from orchestrate.actions import power as power_action
from orchestrate.commands.common import json_option, wait_options, wait_seconds

limit_option = click.option("--limit", help="Narrow the target.")


def _each(obj: Any, target: str, limit: str | None, action: str, as_json: bool,
          **kwargs: Any) -> None:
    result = power_action(obj.site, target, action, limit=limit, **kwargs)
    if as_json:
        output.emit_json(f"power.{action}", {"hosts": result.hosts,
                                             "skipped": result.skipped})
    else:
        output.table(f"power {action}", ["host", "result", "error", "via"],
                     [[r["host"], r["result"], r["error"], r.get("via", "bmc")]
                      for r in result.hosts])
        if result.skipped:
            n = len(result.skipped)
            output.line(f"skipped {output.plural(n, 'host')} without a BMC: "
                        f"{', '.join(result.skipped)}")
    raise click.exceptions.Exit(result.exit_code)


@click.group()
def power() -> None:
    """Power and boot device through each host's BMC (a guest's power: through libvirt
    on its hypervisor).

    \b
    Examples:
      metalchain power status all
      metalchain power cycle node1
    """


def _simple(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text,
                   epilog=f"\b\nExamples:\n  metalchain power {action} node1 --json")
    @click.argument("target")
    @limit_option
    @json_option
    @click.pass_obj
    def command(obj: Any, target: str, limit: str | None, as_json: bool,
                wait: bool = False, wait_timeout: float | None = None) -> None:
        _each(obj, target, limit, action, as_json, wait=wait_seconds(wait, wait_timeout))

    # status changes nothing: it takes no lease, so it never waits for one.
    return command if action == "status" else wait_options(command)


power.add_command(_simple("status", "Show the power state of TARGET's hosts. Hosts without "
                                   "a BMC are skipped and named (the other actions refuse "
                                   "a target with such a host)."))
power.add_command(_simple("on", "Power on."))
power.add_command(_simple("off", "Hard power off."))
power.add_command(_simple("cycle", "Power cycle (just on when off)."))
power.add_command(_simple("soft-off", "ACPI shutdown request."))


@power.command()
@click.argument("target")
@click.argument("device", type=click.Choice(["network", "disk"]))
@click.option("--once", is_flag=True, help="Only for the next boot (default: persistent).")
@limit_option
@wait_options
@json_option
@click.pass_obj
def bootdev(obj: Any, target: str, device: str, once: bool, limit: str | None,
            wait: bool, wait_timeout: float | None, as_json: bool) -> None:
    """Set the boot device; the BMC's answer is read back and checked.

    \b
    Examples:
      metalchain power bootdev node1 network --once
    """
    _each(obj, target, limit, "bootdev", as_json, device=device, persistent=not once,
          wait=wait_seconds(wait, wait_timeout))

"""`metalchain power status|on|off|cycle|soft-off|bootdev TARGET`: BMC control, in parallel."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click

from inventory.errors import BmcError, InputError
from inventory.select import select_hosts
from orchestrate import output
from orchestrate.commands.common import json_option

limit_option = click.option("--limit", help="Narrow the target.")
MAX_PARALLEL = 32


def _each(obj: Any, target: str, limit: str | None, action: str,
          fn: Callable[[Any], str], as_json: bool) -> None:
    from provision.drivers import driver_for

    inv = obj.site.inventory
    hosts = [inv.hosts[h] for h in select_hosts(inv, target, limit)]
    missing = [h.name for h in hosts if h.bmc is None]
    if missing:
        raise InputError(f"no bmc in the inventory for: {', '.join(missing)}")

    def one(host: Any) -> dict[str, Any]:
        try:
            with driver_for(host) as bmc:
                return {"host": host.name, "ok": True, "result": fn(bmc), "error": None}
        except BmcError as exc:
            return {"host": host.name, "ok": False, "result": None, "error": str(exc)}

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
        results = list(pool.map(one, hosts))
    failed = [r for r in results if not r["ok"]]
    if as_json:
        output.emit_json(f"power.{action}", {"hosts": results})
    else:
        output.table(f"power {action}", ["host", "result", "error"],
                     [[r["host"], r["result"], r["error"]] for r in results])
    raise click.exceptions.Exit(1 if failed else 0)


@click.group()
def power() -> None:
    """Power and boot device through each host's BMC."""


def _simple(action: str, call: Callable[[Any], str], help_text: str) -> click.Command:
    @click.command(action, help=help_text)
    @click.argument("target")
    @limit_option
    @json_option
    @click.pass_obj
    def command(obj: Any, target: str, limit: str | None, as_json: bool) -> None:
        _each(obj, target, limit, action, call, as_json)

    return command


def _status(bmc: Any) -> str:
    return bmc.power_status()


def _then(method: str, done: str) -> Callable[[Any], str]:
    def call(bmc: Any) -> str:
        getattr(bmc, method)()
        return done
    return call


power.add_command(_simple("status", _status, "Show the power state of TARGET's hosts."))
power.add_command(_simple("on", _then("power_on", "powered on"), "Power on."))
power.add_command(_simple("off", _then("power_off", "powered off"), "Hard power off."))
power.add_command(_simple("cycle", _then("power_cycle", "cycled"),
                          "Power cycle (just on when off)."))
power.add_command(_simple("soft-off", _then("soft_off", "soft off requested"),
                          "ACPI shutdown request."))


@power.command()
@click.argument("target")
@click.argument("device", type=click.Choice(["network", "disk"]))
@click.option("--once", is_flag=True, help="Only for the next boot (default: persistent).")
@limit_option
@json_option
@click.pass_obj
def bootdev(obj: Any, target: str, device: str, once: bool, limit: str | None,
            as_json: bool) -> None:
    """Set the boot device; the BMC's answer is read back and checked."""

    def call(bmc: Any) -> str:
        setting = bmc.set_bootdev(device, persistent=not once)
        return f"{setting.device} ({'persistent' if setting.persistent else 'next boot'})"

    _each(obj, target, limit, "bootdev", call, as_json)

"""`metalchain runs leases` (who holds which host) and `metalchain state release HOST`
(break a stale lease by hand). The leases themselves: :mod:`orchestrate.leases`."""

from __future__ import annotations

import time
from typing import Any

import click

from inventory.errors import InputError
from orchestrate import output
from orchestrate.commands.common import json_option


@click.command("leases")
@json_option
@click.pass_obj
def leases_list(obj: Any, as_json: bool) -> None:
    """The hosts a run holds right now, by whom, and until when.

    \b
    Examples:
      metalchain runs leases
      metalchain runs leases --json
    """
    now = time.time()
    items = obj.site.state.list_leases()
    if as_json:
        output.emit_json("runs.leases", {"leases": [
            {**lease.to_json(), "expired": lease.expires_at <= now} for lease in items]})
        return
    ts = output.timestamp
    output.table("leases", ["host", "run", "pid", "on", "command", "since", "expires"],
                 [[x.host, x.holder, x.pid, x.owner_host, x.command, ts(x.acquired_at),
                   ts(x.expires_at) + (" (expired)" if x.expires_at <= now else "")]
                  for x in items])


@click.command("release")
@click.argument("host")
@json_option
@click.pass_obj
def release(obj: Any, host: str, as_json: bool) -> None:
    """Break HOST's lease, whoever holds it (a stale lease: its run is gone).

    A lease whose owner died expires by itself (and one of this machine is taken over at
    once); this is for the rest. The run that held it, if it still runs, is not stopped.

    \b
    Examples:
      metalchain state release node1
    """
    gone = obj.site.state.break_lease(host)
    if gone is None:
        raise InputError(f"'{host}' has no lease (see: metalchain runs leases)")
    if as_json:
        output.emit_json("state.release", {"released": gone.to_json()})
        return
    output.line(f"{host}: released the lease {gone.describe()}")

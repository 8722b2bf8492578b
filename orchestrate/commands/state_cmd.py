"""`metalchain state show [HOST]`, `metalchain state forget HOST`."""

from __future__ import annotations

from typing import Any

import click

from inventory.errors import InputError
from orchestrate import output
from orchestrate.commands.common import json_option

_ts = output.timestamp


@click.group()
def state() -> None:
    """Inspect the state store (node lifecycle, host keys, journal); forget departed hosts.

    \b
    Examples:
      metalchain state show
      metalchain state show node1
      metalchain state forget web7
    """


@state.command()
@click.argument("host", required=False)
@json_option
@click.pass_obj
def show(obj: Any, host: str | None, as_json: bool) -> None:
    """Lifecycle state of every node, or the full record of HOST.

    \b
    Examples:
      metalchain state show
      metalchain state show node1 --json
    """
    site = obj.site
    store = site.state
    if host is None:
        inv = site.inventory
        records = {n.name: n for n in store.list_nodes()}  # forgotten ones left out
        rows = []
        for name in [*inv.hosts, *sorted(set(records) - set(inv.hosts))]:
            rec = records.get(name)
            rows.append({
                "host": name,
                "in_inventory": name in inv.hosts,
                "state": rec.state if rec else None,
                "since": _ts(rec.state_since) if rec else None,
                "reason": rec.reason if rec else "",
                "host_keys": len(store.host_keys_of(name)) if rec else 0,
            })
        if as_json:
            output.emit_json("state.nodes", {"schema_version": store.schema_version(),
                                             "nodes": rows})
            return
        output.table("state", ["host", "state", "since", "reason", "keys"],
                     [[r["host"] + ("" if r["in_inventory"] else " (not in inventory)"),
                       r["state"] or "-", r["since"], r["reason"] or "-", r["host_keys"]]
                      for r in rows])
        return
    rec = store.node(host)
    if rec is None and host not in site.inventory.hosts:
        raise InputError(f"no host named '{host}' in the inventory or the state store")
    doc = {
        "host": host,
        "state": rec.state if rec else None,
        "since": _ts(rec.state_since) if rec else None,
        "reason": rec.reason if rec else "",
        "transitions": [{"from": t.from_state, "to": t.to_state, "reason": t.reason,
                         "at": _ts(t.at)} for t in store.transitions(host)],
        "host_keys": store.host_keys_of(host),
        "journal": [{"run": e.run_uid, "step": e.step, "status": e.status,
                     "started_at": _ts(e.started_at), "ended_at": _ts(e.ended_at)}
                    for e in store.journal_entries(host=host)[-20:]],
    }
    if as_json:
        output.emit_json("state.node", {"node": doc})
        return
    output.line(f"{host}: {doc['state'] or 'no lifecycle state'}"
                + (f" since {doc['since']}" if doc["since"] else "")
                + (f" ({doc['reason']})" if doc["reason"] else ""))
    output.table("transitions", ["at", "from", "to", "reason"],
                 [[t["at"], t["from"], t["to"], t["reason"]] for t in doc["transitions"]])
    output.table("pinned host keys", ["key"], [[k[:60] + "..."] for k in doc["host_keys"]])
    output.table("journal (last 20)", ["run", "step", "status", "started", "ended"],
                 [[j["run"], j["step"], j["status"], j["started_at"], j["ended_at"]]
                  for j in doc["journal"]])


@state.command(epilog="""\b
Examples:
  metalchain state forget web7            # web7 was removed from the inventory
  metalchain state forget node1 --force   # still listed, but reinstalled: drop old keys""")
@click.argument("host")
@click.option("--force", is_flag=True,
              help="Forget HOST even though it is still in the inventory.")
@json_option
@click.pass_obj
def forget(obj: Any, host: str, force: bool, as_json: bool) -> None:
    """Remove HOST from the state store: its pinned host keys, facts, drift, owed handlers
    and deploy tokens. Its journal and lifecycle history stay readable under
    HOST~forgotten-ID, and an audit row records it. Refused (exit 2) while HOST is in the
    inventory, unless --force; refused (exit 1) while a lease on HOST is held."""
    from orchestrate.forget import forget_host

    done = forget_host(obj.site, host, force=force)
    if as_json:
        output.emit_json("state.forget", {"host": done.name, "kept_as": done.kept_as,
                                          "deleted": done.deleted,
                                          "journal_rows": done.journal_rows,
                                          "transitions": done.transitions})
        return
    removed = ", ".join(f"{n} {kind if n != 1 else kind.rstrip('s')}"
                        for kind, n in done.deleted.items() if n) or "nothing else"
    output.line(f"forgot {done.name}: removed {removed}; {done.journal_rows} journal "
                f"{'row' if done.journal_rows == 1 else 'rows'} and {done.transitions} "
                f"{'transition' if done.transitions == 1 else 'transitions'} kept as "
                f"{done.kept_as}")

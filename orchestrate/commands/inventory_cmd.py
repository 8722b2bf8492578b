"""`metalchain inventory validate|list|show|vars|graph`."""

from __future__ import annotations

from typing import Any

import click

from inventory.model import ALL_GROUP, Host, Inventory
from inventory.select import select_hosts
from inventory.variables import LAYERS
from orchestrate import output
from orchestrate.commands.common import json_option, parse_extra
from orchestrate.hostvars import explain_host_vars
from orchestrate.validation import ValidationError, check_inventory_roles


def host_doc(h: Host) -> dict[str, Any]:
    return {
        "name": h.name,
        "address": h.address,
        "groups": list(h.groups),
        "roles": list(h.roles),
        "labels": h.labels,
        "vars": h.vars,
        "bmc": None if h.bmc is None else {
            "address": h.bmc.address, "port": h.bmc.port, "username": h.bmc.username,
            "password": h.bmc.password, "driver": h.bmc.driver},
        "provision": None if h.provision is None else {
            "mac": h.provision.mac, "ip": h.provision.ip, "image": h.provision.image},
        "ssh": {"user": h.ssh.user, "port": h.ssh.port, "host_key": h.ssh.host_key,
                "proxy_command": h.ssh.proxy_command},
        "source": f"{h.file}:{h.line}",
    }




@click.group()
def inventory() -> None:
    """Inspect and validate the site's inventory.

    \b
    Examples:
      metalchain inventory validate
      metalchain --site mysite inventory list 'rack=r1'
    """


@inventory.command()
@json_option
@click.pass_obj
def validate(obj: Any, as_json: bool) -> None:
    """Load and check the inventory (and that every role it names exists and loads); exit 2
    with file:line, one line per problem.

    \b
    Examples:
      metalchain inventory validate --json
    """
    inv: Inventory = obj.site.inventory
    problems = check_inventory_roles(inv, obj.site.playbooks_dir)
    if problems:
        if as_json:
            output.emit_json("inventory.validate", {
                "valid": False, "problems": [p.to_json() for p in problems]})
            raise click.exceptions.Exit(2)
        raise ValidationError(problems)
    if as_json:
        output.emit_json("inventory.validate", {"valid": True, "hosts": len(inv.hosts),
                                                "groups": len(inv.groups),
                                                "files": inv.sources})
        return
    output.line(f"ok: {output.plural(len(inv.hosts), 'host')}, "
                f"{output.plural(len(inv.groups), 'group')} "
                f"({', '.join(inv.sources)})")


@inventory.command("list")
@click.argument("target", required=False, default=ALL_GROUP)
@click.option("--limit", help="Narrow the target further (same syntax).")
@json_option
@click.pass_obj
def list_(obj: Any, target: str, limit: str | None, as_json: bool) -> None:
    """List the hosts of TARGET (default: all).

    \b
    Examples:
      metalchain inventory list
      metalchain inventory list 'node*' --limit 'rack=r1'
    """
    inv: Inventory = obj.site.inventory
    names = select_hosts(inv, target, limit)
    hosts = [inv.hosts[n] for n in names]
    if as_json:
        output.emit_json("inventory.list", {"hosts": [host_doc(h) for h in hosts]})
        return
    output.table("hosts", ["host", "address", "groups", "roles", "labels", "bmc", "mac"], [
        [h.name, h.address, inv.groups_of(h.name), inv.roles_of(h.name), h.labels,
         h.bmc.describe() if h.bmc else None, h.provision.mac if h.provision else None]
        for h in hosts])


@inventory.command()
@click.argument("host")
@json_option
@click.pass_obj
def show(obj: Any, host: str, as_json: bool) -> None:
    """Everything the inventory says about HOST (secrets masked).

    \b
    Examples:
      metalchain inventory show node1
    """
    inv: Inventory = obj.site.inventory
    doc = host_doc(inv.host(host))
    doc["all_groups"] = inv.groups_of(host)
    doc["all_roles"] = inv.roles_of(host)
    if as_json:
        output.emit_json("inventory.host", {"host": doc})
        return
    output.table(f"host {host}", ["key", "value"], _flatten(doc))


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for k, v in doc.items():
        if isinstance(v, dict) and v and k != "vars" and k != "labels":
            rows.extend(_flatten(v, f"{prefix}{k}."))
        else:
            rows.append([f"{prefix}{k}", v])
    return rows


@inventory.command("vars")
@click.argument("host")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="An extra variable (highest precedence).")
@json_option
@click.pass_obj
def vars_(obj: Any, host: str, extra: tuple[str, ...], as_json: bool) -> None:
    """The variables of HOST and where each value came from, lowest layer first: the
    defaults of HOST's roles, then all, groups, the host itself and -e.

    \b
    Examples:
      metalchain inventory vars node1 -e timezone=UTC
    """
    origins = explain_host_vars(obj.site, host, extra=parse_extra(extra))
    if as_json:
        output.emit_json("inventory.vars", {
            "host": host, "layers": list(LAYERS),
            "vars": {k: {"value": o.value, "source": o.source,
                         "overridden": [{"source": s, "value": v} for s, v in o.overridden]}
                     for k, o in origins.items()}})
        return
    output.table(f"variables of {host} (precedence: {' < '.join(LAYERS)})",
                 ["variable", "value", "from", "overrides"],
                 [[o.name, o.value, o.source, [s for s, _ in o.overridden]]
                  for o in origins.values()])


@inventory.command()
@json_option
@click.pass_obj
def graph(obj: Any, as_json: bool) -> None:
    """The group tree with its hosts.

    \b
    Examples:
      metalchain inventory graph
    """
    inv: Inventory = obj.site.inventory
    children_of_something = {c for g in inv.groups.values() for c in g.children}
    tops = [g for g in inv.groups if g not in children_of_something]

    def direct_hosts(group: str) -> list[str]:
        return [h.name for h in inv.hosts.values()
                if group in h.groups or h.name in inv.groups[group].hosts]

    def node(group: str) -> dict[str, Any]:
        return {"group": group, "hosts": direct_hosts(group),
                "children": [node(c) for c in inv.groups[group].children]}

    ungrouped = [h for h in inv.hosts if not inv.groups_of(h)]
    tree = {"group": ALL_GROUP, "hosts": ungrouped, "children": [node(g) for g in tops]}
    if as_json:
        output.emit_json("inventory.graph", {"graph": tree})
        return

    def render(n: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        output.line(f"{pad}@{n['group']}:")
        for c in n["children"]:
            render(c, depth + 1)
        for h in n["hosts"]:
            output.line(f"{pad}  |-- {h}")

    render(tree, 0)

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
                "proxy_command": h.ssh.proxy_command,
                "keepalive_interval": h.ssh.keepalive_interval,
                "keepalive_timeout": h.ssh.keepalive_timeout},
        "vm": vm_doc(h),
        "source": f"{h.file}:{h.line}",
    }


def vm_doc(h: Host) -> dict[str, Any] | None:
    """A guest's ``vm:`` section as the inventory gives it (no secret lives there: the
    controller's host key for the guest is in the state store, its private half never shown)."""
    vm = h.vm
    if vm is None:
        return None
    return {"hypervisor": vm.hypervisor, "image": vm.image, "mac": vm.mac,
            "network": {"address": vm.network.address, "gateway": vm.network.gateway,
                        "nameservers": list(vm.network.nameservers)},
            "vcpus": vm.vcpus, "memory_mib": vm.memory_mib, "disk_mib": vm.disk_mib,
            "hostname": vm.hostname or h.name, "state": vm.state, "autostart": vm.autostart,
            "domain_type": vm.domain_type, "console_log": vm.console_log,
            "ssh_authorized_keys": list(vm.ssh_authorized_keys)}


def placement(inv: Inventory, h: Host) -> dict[str, Any]:
    """Where a host sits among hypervisors and guests: ``hypervisor`` (the host holding this
    guest, else None) and ``guests`` (the guests this host holds, in inventory order)."""
    return {"hypervisor": h.vm.hypervisor if h.vm else None,
            "guests": [g.name for g in inv.guests_of(h.name)]}


def _placement_text(inv: Inventory, h: Host) -> str:
    if h.vm:
        return f"guest on {h.vm.hypervisor}"
    guests = [g.name for g in inv.guests_of(h.name)]
    return f"holds {', '.join(guests)}" if guests else ""




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
        output.emit_json("inventory.list", {"hosts": [{**host_doc(h), **placement(inv, h)}
                                                       for h in hosts]})
        return
    output.table("hosts", ["host", "address", "groups", "roles", "labels", "bmc", "mac",
                           "vm"], [
        [h.name, h.address, inv.groups_of(h.name), inv.roles_of(h.name), h.labels,
         h.bmc.describe() if h.bmc else None,
         h.provision.mac if h.provision else h.vm.mac if h.vm else None,
         _placement_text(inv, h) or None]
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
    h = inv.host(host)
    doc = {**host_doc(h), **placement(inv, h)}
    doc["all_groups"] = inv.groups_of(host)
    doc["all_roles"] = inv.roles_of(host)
    if as_json:
        output.emit_json("inventory.host", {"host": doc})
        return
    output.table(f"host {host}", ["key", "value"], _flatten(doc))


def _flatten(doc: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    rows: list[list[Any]] = []
    for k, v in doc.items():
        if isinstance(v, dict) and v and k not in ("vars", "labels"):
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
    """The group tree with its hosts, and each hypervisor's guests.

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
    guests = {h.name: [g.name for g in inv.guests_of(h.name)] for h in inv.hosts.values()
              if inv.guests_of(h.name)}
    if as_json:
        output.emit_json("inventory.graph", {"graph": tree, "guests": guests})
        return

    def render(n: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        output.line(f"{pad}@{n['group']}:")
        for c in n["children"]:
            render(c, depth + 1)
        for h in n["hosts"]:
            where = _placement_text(inv, inv.hosts[h])
            output.line(f"{pad}  |-- {h}" + (f" ({where})" if where else ""))

    render(tree, 0)
    if guests:
        output.line("hypervisors:")
        for hv, names in guests.items():
            output.line(f"  {hv}")
            for g in names:
                output.line(f"    |-- {g} (vm)")

"""`metalchain lab up|status|console|down`: the virtual datacenter for demos, tests and
rehearsals. It creates an ordinary site (inventory, secrets, keys, state) in --dir."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from inventory.errors import BmcError, InputError, LabError
from inventory.site import Site, find_site_dir
from orchestrate import output
from orchestrate.commands.common import json_option
from runtime.text import terminal_safe

dir_option = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                          help="The lab's site directory (default: --site, $METALCHAIN_SITE, "
                               "or the current directory).")


def _root(obj: Any, directory: Path | None) -> Path:
    return (directory or find_site_dir(obj.site_option)).resolve()


def _lab(obj: Any, directory: Path | None):
    from lab.lab import Lab

    return Lab(_root(obj, directory))


@click.group()
def lab() -> None:
    """The built-in virtual datacenter (QEMU nodes with IPMI BMCs, an SSH fleet).

    \b
    Examples:
      metalchain lab up --dir lab1 --nodes 2 --fleet 3
      metalchain lab down --dir lab1 --purge
    """


@lab.command()
@click.option("--nodes", type=click.IntRange(0, 80), default=2, show_default=True,
              help="Bare-metal QEMU nodes, each with its own BMC.")
@click.option("--fleet", type=click.IntRange(0, 150), default=0, show_default=True,
              help="Lightweight SSH hosts (systemd containers).")
@click.option("--subnet", help="Provisioning network /24 (default 10.77.0.0/24).")
@click.option("--name", help="Lab name (network namespace mclab-NAME); default from the dir.")
@click.option("--memory", "memory_mib", type=click.IntRange(128, 65536), default=1024,
              show_default=True, help="MiB of RAM per node.")
@click.option("--cpus", type=click.IntRange(1, 64), default=1, show_default=True,
              help="vCPUs per node.")
@click.option("--disk", "disk_gib", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="GiB of (sparse) disk per node.")
@click.option("--chain", is_flag=True,
              help="Write the whole chain's inventory (playbooks/site.yml): roles per group, "
                   "the first fleet host as image store with the lab's guest image, guests.")
@click.option("--vms", type=click.IntRange(0, 50), default=None,
              help="Guests (VMs) on the nodes, with --chain.  [default: 1 with --chain]")
@click.option("--fleet-package", "fleet_packages", multiple=True, metavar="NAME",
              help="A Debian package the fleet's image has too (repeatable; e.g. python3 for "
                   "a peer tool's benchmark): an image variant, built once and cached.")
@dir_option
@json_option
@click.pass_obj
def up(obj: Any, nodes: int, fleet: int, subnet: str | None, name: str | None,
       memory_mib: int, cpus: int, disk_gib: int, chain: bool, vms: int | None,
       fleet_packages: tuple[str, ...], directory: Path | None, as_json: bool) -> None:
    """Bring the lab up (idempotent; re-run to resize).

    With --chain the inventory also carries what playbooks/site.yml needs: roles for every
    group, an image store (the first fleet host) serving the lab's guest image, which is
    built (cached by content hash) and published next to the package mirror, and guests.

    \b
    Examples:
      metalchain lab up --dir lab1 --nodes 2 --fleet 3 --subnet 10.77.0.0/24
      metalchain lab up --dir demo --nodes 2 --fleet 3 --chain --vms 1
    """
    lb = _lab(obj, directory)
    started = time.monotonic()
    if vms is None:
        vms = 1 if chain else 0
    config = lb.plan(nodes, fleet, ipv4=subnet, name=name, memory_mib=memory_mib, cpus=cpus,
                     disk_gib=disk_gib, chain=chain, vms=vms, fleet_packages=fleet_packages)
    result = lb.up(config)
    if chain and vms:
        from orchestrate.guest_image import publish_guest_image

        guest_site = Site.open(lb.root)
        try:
            published = publish_guest_image(guest_site)
        finally:
            guest_site.close()
        lb.set_images([published.store_entry()])
        result["guests"] = [f"vm{i}" for i in range(1, vms + 1)]
        result["guest_image"] = published.store_entry()
    took = time.monotonic() - started
    if as_json:
        output.emit_json("lab.up", {"site": str(lb.root), "netns": config.netns,
                                    "subnet": config.ipv4, "seconds": round(took, 1),
                                    **result})
        return
    output.line(f"lab up in {took:.1f}s: {output.plural(len(result['nodes']), 'node')}, "
                f"{output.plural(len(result['fleet']), 'fleet host')}"
                + (f", {output.plural(len(result['guests']), 'guest')}"
                   if result.get("guests") else "") + f"; site {lb.root} "
                f"(network {config.ipv4}, namespace {config.netns})")


def _power(host: Any) -> tuple[str, str]:
    from provision.drivers import driver_for

    try:
        with driver_for(host, timeout=3.0) as bmc:
            return bmc.power_status(), ""
    except BmcError as exc:
        return "unknown", str(exc)


@lab.command()
@dir_option
@json_option
@click.pass_obj
def status(obj: Any, directory: Path | None, as_json: bool) -> None:
    """Every node with its BMC power state, every fleet host with SSH reachability; an
    unhealthy node says why (a dead BMC or QEMU process, what the BMC client saw). Exit 1
    when anything is unhealthy.

    \b
    Examples:
      metalchain lab status --dir lab1
    """
    from lab.fleet import fleet_status
    from lab.lab import node_problem

    lb = _lab(obj, directory)
    config = lb.load()
    if config is None:
        raise InputError(f"no lab in {lb.root} (create one with: metalchain lab up --dir DIR)")
    site = Site.open(lb.root)
    inv = site.inventory
    procs = lb.node_processes()
    node_hosts = [inv.hosts[n.name] for n in config.nodes if n.name in inv.hosts]
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(node_hosts)))) as pool:
        powers = list(pool.map(_power, node_hosts))
    nodes = []
    for h, (p, err) in zip(node_hosts, powers, strict=True):
        qemu_pid, bmc_pid = (procs.get(h.name, {}).get(k) for k in ("qemu", "bmc"))
        nodes.append({"name": h.name, "power": p,
                      "error": node_problem(p, err or None, qemu_pid, bmc_pid),
                      "bmc": h.bmc.describe() if h.bmc else None,
                      "mac": h.provision.mac if h.provision else None,
                      "ip": h.provision.ip if h.provision else None,
                      "qemu_pid": qemu_pid, "bmc_pid": bmc_pid})
    fleet = [{"name": s.name, "address": s.address, "running": s.init_alive,
              "ssh": s.ssh_ok, "error": s.detail or None}
             for s in sorted(fleet_status(lb.dir), key=lambda s: s.name)]
    healthy = all(n["error"] is None for n in nodes) and all(
        f["running"] and f["ssh"] for f in fleet)
    if as_json:
        output.emit_json("lab.status", {"site": str(lb.root), "netns": config.netns,
                                        "subnet": config.ipv4, "healthy": healthy,
                                        "nodes": nodes, "fleet": fleet})
    else:
        output.table("nodes", ["node", "power", "bmc", "mac", "ip", "problem"],
                     [[n["name"], n["power"], n["bmc"], n["mac"], n["ip"], n["error"]]
                      for n in nodes])
        output.table("fleet", ["host", "address", "running", "ssh"],
                     [[f["name"], f["address"], f["running"],
                       "ok" if f["ssh"] else (f["error"] or "no")] for f in fleet])
    site.close()
    raise click.exceptions.Exit(0 if healthy else 1)


def _console_text(data: bytes) -> str:
    """A node's serial output as data: its escape sequences (a console's colours, or a hostile
    node's window title) shown, not acted on; CR LF line ends read as newlines."""
    return terminal_safe(data.decode("utf-8", "replace").replace("\r\n", "\n"))


@lab.command()
@click.argument("node")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output (Ctrl-C stops).")
@click.option("--lines", "-n", type=click.IntRange(1, 100_000), default=50, show_default=True)
@dir_option
@click.pass_obj
def console(obj: Any, node: str, follow: bool, lines: int, directory: Path | None) -> None:
    """Show NODE's serial console log.

    \b
    Examples:
      metalchain lab console node1 -f
    """
    lb = _lab(obj, directory)
    config = lb.load()
    if config is None or node not in {n.name for n in config.nodes}:
        raise InputError(f"no lab node named '{node}' in {lb.root}")
    log = lb.dir / "nodes" / node / "serial.log"
    if not log.exists():
        raise LabError(f"{node} has no console log yet ({log})")
    data = log.read_bytes()
    tail = b"\n".join(data.split(b"\n")[-lines:])
    sys.stdout.write(_console_text(tail))
    sys.stdout.flush()
    pos = len(data)
    while follow:
        time.sleep(0.5)
        size = log.stat().st_size
        if size > pos:
            with open(log, "rb") as fh:
                fh.seek(pos)
                sys.stdout.write(_console_text(fh.read(size - pos)))
                sys.stdout.flush()
            pos = size


@lab.command()
@click.option("--purge", is_flag=True, help="Also delete the nodes' disks and lab records.")
@dir_option
@click.pass_obj
def down(obj: Any, purge: bool, directory: Path | None) -> None:
    """Stop every lab process and remove its network (idempotent).

    \b
    Examples:
      metalchain lab down --dir lab1 --purge
    """
    lb = _lab(obj, directory)
    lb.down(purge=purge)
    output.line(f"lab down: {lb.root}" + (" (purged)" if purge else ""))

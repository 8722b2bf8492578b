"""The guests' bridge takes over a provisioned node's NIC (hypervisor_bridge_uplink: auto):
the NIC becomes a port of br-guests, the node's inventory address and MAC move to the bridge,
over the very SSH connection of the apply; the second apply changes nothing; the node still
reaches the controller; after a reboot it comes back the same (our networkd files sort before
the installer's 10-metalchain.network, which matches the NIC's MAC, now the bridge's too); and
``hypervisor_bridge_uplink: ""`` gives the NIC its address back.

The shipped hypervisor role installs QEMU and libvirt (minutes under TCG), so this module
applies a site role made of the shipped role's bridge entries only (its recipe entries that
mention the bridge, its templates, files and handlers, unchanged): one PXE install, four
small applies and one reboot. The packages are the integrator's e2e test's business."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from configure.roles import SHIPPED_ROLES
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.101.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
NODE = "node1"
HTTP_PORT = 20111
BRIDGE = "br-guests"
ROLE = "guest_bridge"
TCG = ("-e", "hypervisor_require_kvm=false")


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def bridge_role(dest: Path) -> None:
    """The shipped hypervisor role's bridge entries as a role of their own."""
    shipped = SHIPPED_ROLES / "hypervisor"
    recipe = yaml.safe_load((shipped / "recipe.yml").read_text())
    keep = [e for e in recipe if ("bridge" in json.dumps(e) or "networkd" in json.dumps(e))
            and "hypervisor-ready" not in json.dumps(e)]     # that one wants QEMU
    assert any("bridge-uplink" in json.dumps(e) for e in keep)
    dest.mkdir(parents=True)
    (dest / "recipe.yml").write_text(yaml.safe_dump(keep, sort_keys=False))
    # container_virtualization, which the entries read, is a default of base.
    (dest / "defaults.yml").write_text((SHIPPED_ROLES / "base" / "defaults.yml").read_text()
                                       + "\n" + (shipped / "defaults.yml").read_text())
    (dest / "handlers.yml").write_text((shipped / "handlers.yml").read_text())
    for sub in ("templates", "files"):
        (dest / sub).symlink_to(shipped / sub)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("uplink") / "site"
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        path = root / "metalchain.yml"
        header, body = path.read_text().split("\n", 1)
        doc = yaml.safe_load(body)
        doc["boot"]["http_port"] = HTTP_PORT
        path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False))
        r = mc("--site", str(root), "provision", NODE, "--json", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        bridge_role(root / "playbooks" / "roles" / ROLE)
        r = mc("--site", str(root), "facts", NODE)
        assert r.returncode == 0, r.stdout + r.stderr
        yield root
    finally:
        mc("lab", "down", "--purge", "--dir", str(root))


def apply(root: Path, *extra: str) -> dict:
    r = mc("--site", str(root), "apply", "--role", ROLE, NODE, "--json", *TCG, *extra)
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)
    doc["rc"] = r.returncode
    return doc


def on_node(root: Path, script: str) -> str:
    r = mc("--site", str(root), "exec", NODE, "--json", "--", "sh", "-c", script, timeout=120)
    host = json.loads(r.stdout)["hosts"][NODE]
    assert host["exit_code"] == 0, host
    return host["stdout"]


def changes(doc: dict) -> list[str]:
    return [c for h in doc["hosts"].values() for step in h.get("steps", [])
            for c in step.get("changes", [])]


def address(root: Path) -> str:
    r = mc("--site", str(root), "inventory", "show", NODE, "--json")
    return json.loads(r.stdout)["host"]["address"]


LINKS = ("for l in /sys/class/net/*; do n=${l##*/}; printf '%s %s %s %s\\n' \"$n\" "
         "\"$(cat $l/address)\" \"$(basename \"$(readlink $l/master)\" 2>/dev/null)\" "
         "\"$(ip -o -4 addr show dev $n scope global | awk '{print $4}' | tr '\\n' ,)\"; done")


def links(root: Path) -> dict[str, tuple[str, str, str]]:
    """{name: (mac, master, ipv4 addresses)} of the node's links."""
    out = {}
    for line in on_node(root, LINKS).splitlines():
        name, mac, master, addrs = [*line.split(" "), "", "", ""][:4]
        out[name] = (mac, master if master != "." else "", addrs.strip(","))
    return out


def enslaved(root: Path) -> str:
    """The NIC that is the bridge's uplink, after checking what must hold of it."""
    state = links(root)
    nics = [n for n, (_, master, _) in state.items() if master == BRIDGE]
    assert len(nics) == 1, state
    nic = nics[0]
    assert state[BRIDGE][0] == state[nic][0], state            # the NIC's MAC
    assert state[BRIDGE][2].startswith(address(root) + "/"), state
    assert state[nic][2] == "", state
    return nic


def test_the_uplink_moves_the_address_to_the_bridge_over_the_apply_connection(site):
    before = links(site)
    nic = next(n for n, (_, _, addrs) in before.items() if addrs.startswith(address(site) + "/"))
    first = apply(site)
    assert first["rc"] == 0, first
    assert any(f"command:uplink of {BRIDGE}" in c for c in changes(first)), changes(first)
    assert enslaved(site) == nic
    assert before[nic][0] == links(site)[BRIDGE][0]
    # The node still reaches the controller, now through the bridge.
    assert "1 received" in on_node(site, f"ping -c 1 -W 5 {CONTROLLER}")
    second = apply(site)
    assert second["rc"] == 0 and second["hosts"][NODE]["status"] == "ok", second


def test_after_a_reboot_it_comes_back_the_same(site):
    nic = enslaved(site)
    r = mc("--site", str(site), "power", "cycle", NODE)
    assert r.returncode == 0, r.stderr
    # Poll until SSH (pinned key) answers again, then everything must be as before the reboot.
    wait_for(lambda: mc("--site", str(site), "exec", NODE, "--", "true",
                        timeout=60).returncode == 0, 240, f"{NODE} to answer SSH after reboot")
    assert enslaved(site) == nic
    again = apply(site)
    assert again["rc"] == 0 and again["hosts"][NODE]["status"] == "ok", again


def test_no_uplink_gives_the_nic_its_address_back(site):
    nic = enslaved(site)
    released = apply(site, "-e", "hypervisor_bridge_uplink=")
    assert released["rc"] == 0, released
    state = links(site)
    assert state[nic][1] == "" and state[nic][2].startswith(address(site) + "/"), state
    assert state[BRIDGE][2] == "" and state[BRIDGE][0] != state[nic][0], state
    assert on_node(site, "ls /etc/systemd/network").split() == [
        "10-metalchain.network", f"60-{BRIDGE}.netdev", f"60-{BRIDGE}.network"]
    assert apply(site, "-e", "hypervisor_bridge_uplink=")["hosts"][NODE]["status"] == "ok"

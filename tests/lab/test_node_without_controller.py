"""A provisioned node on its own: it keeps its identity and its address when the controller is
gone, and a dead BMC does not demote it.

One lab, one node, provisioned once for the module (PXE under TCG takes minutes):

- the installer wrote /etc/hostname (and the rest of the node's identity) with mode 0644, so
  the base role has nothing to correct;
- with no controller running (no `serve`, no dnsmasq), the node power-cycled through
  ipmitool against its lab BMC answers SSH with its pinned key within its boot time, with the
  static address the inventory gives it (no DHCP lease);
- powered off, it is reported as unreachable ("no route to host"), never "connection
  refused";
- with its BMC process killed, `provision --force` fails fast naming the BMC, and the node
  stays `active` (`exec` still works, its pinned key unchanged).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from tests.lab.ipmi import ipmitool
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.91.0.0/24"
NODE = "node1"
NODE_IP = "10.91.0.11"
# Power-on to SSH of the installed system under TCG: ~17-20 s measured (docs/provision.md),
# 30-40 s on a loaded machine; the limit leaves room for CI load, not for a DHCP retry cycle.
BOOT_LIMIT_S = 120.0


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def pinned_key(site: Path) -> str:
    s = Site.open(site)
    try:
        return s.state.host_keys_of(NODE)[0]
    finally:
        s.close()


def state_of(site: Path) -> str | None:
    s = Site.open(site)
    try:
        rec = s.state.node(NODE)
        return str(rec.state) if rec and rec.state else None
    finally:
        s.close()


def ssh(site: Path, command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """OpenSSH with strict host key checking against the key pinned in the state store."""
    known = site / "known_hosts_test"
    known.write_text(f"{NODE_IP} {pinned_key(site)}\n")
    argv = ["ssh", "-F", "/dev/null", "-i", str(site / "keys" / "id_ed25519"),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            f"root@{NODE_IP}", command]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", "timeout")


def boot_id(site: Path) -> str | None:
    r = ssh(site, "cat /proc/sys/kernel/random/boot_id")
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def netns(site: Path) -> str:
    return json.loads((site / "lab" / "lab.json").read_text())["netns"]


def dhcp_listeners(site: Path) -> str:
    """UDP sockets on the DHCP server port inside the lab's namespace (none: no dnsmasq)."""
    r = subprocess.run(["ip", "netns", "exec", netns(site), "ss", "-Hlun", "sport", "=", ":67"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    site = tmp_path_factory.mktemp("alone") / "site"
    try:
        r = mc("lab", "up", "--dir", str(site), "--nodes", "1", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        r = mc("--site", str(site), "provision", NODE, "--json", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["nodes"][NODE]["state"] == "active"
        yield site
    finally:
        mc("lab", "down", "--purge", "--dir", str(site))


def test_installer_writes_the_node_identity_with_the_modes_the_base_role_wants(lab):
    r = ssh(lab, "stat -c '%a %n' /etc/hostname /etc/hosts /etc/resolv.conf "
                 "/etc/systemd/network/10-metalchain.network")
    assert r.returncode == 0, r.stderr
    modes = dict(reversed(line.split(" ", 1)) for line in r.stdout.splitlines())
    assert modes == {"/etc/hostname": "644", "/etc/hosts": "644", "/etc/resolv.conf": "644",
                     "/etc/systemd/network/10-metalchain.network": "644"}, modes
    assert ssh(lab, "cat /etc/hostname").stdout == f"{NODE}\n"


def test_power_cycled_without_a_controller_the_node_answers_with_its_static_address(lab):
    # No controller: provision ran its own boot server and stopped it; nothing serves DHCP.
    assert not (lab / "boot" / "serve.json").exists()
    assert dhcp_listeners(lab) == ""
    before = boot_id(lab)
    assert before
    start = time.monotonic()
    ipmitool(lab, NODE, "chassis", "power", "cycle")
    after = wait_for(lambda: (b := boot_id(lab)) and b != before and b, BOOT_LIMIT_S,
                     f"{NODE} to answer SSH with its pinned key after a power cycle",
                     interval=0.5)
    seconds = time.monotonic() - start
    print(f"power cycle -> SSH with the pinned key: {seconds:.1f} s (boot {after})")
    assert "Chassis Power is on" in ipmitool(lab, NODE, "chassis", "power", "status")
    # The address came from the static config the installer wrote, not from a DHCP lease.
    network = ssh(lab, "cat /etc/systemd/network/10-metalchain.network").stdout
    assert f"Address={NODE_IP}/24" in network and "DHCP=no" in network, network
    addr = ssh(lab, "ip -4 -o addr show").stdout
    line = next((ln for ln in addr.splitlines() if f" {NODE_IP}/24 " in ln), "")
    assert line and "dynamic" not in line and "valid_lft forever" in line, addr
    leases = ssh(lab, "ls /run/systemd/netif/leases/ 2>/dev/null | wc -l").stdout.strip()
    assert leases == "0", leases
    # metalchain itself reaches it (paramiko, the key pinned in the state store).
    r = mc("--site", str(lab), "exec", NODE, "--", "hostname", timeout=120)
    assert r.returncode == 0 and NODE in r.stdout, r.stdout + r.stderr


def test_a_node_that_is_off_is_unreachable_not_refused(lab):
    ipmitool(lab, NODE, "chassis", "power", "off")
    try:
        wait_for(lambda: "Chassis Power is off" in ipmitool(lab, NODE, "chassis", "power",
                                                            "status"),
                 30, f"{NODE} to power off", interval=0.5)
        r = mc("--site", str(lab), "exec", NODE, "--", "true", timeout=120)
        text = r.stdout + r.stderr
        assert r.returncode != 0, text
        assert "refused" not in text, text
        assert "no route to host" in text or "no answer within" in text, text
    finally:
        ipmitool(lab, NODE, "chassis", "power", "on")
    wait_for(lambda: boot_id(lab), BOOT_LIMIT_S, f"{NODE} to come back after power on",
             interval=0.5)


def test_a_dead_bmc_fails_provision_fast_and_leaves_the_node_active(lab):
    key = pinned_key(lab)
    bmc_pid = int((lab / "lab" / "nodes" / NODE / "bmc.pid").read_text())
    os.kill(bmc_pid, signal.SIGKILL)
    try:
        start = time.monotonic()
        r = mc("--site", str(lab), "provision", "--force", NODE, "--json", timeout=300)
        wall = time.monotonic() - start
        print(f"provision --force with a dead BMC: rc {r.returncode} after {wall:.1f} s")
        assert r.returncode == 1, r.stdout + r.stderr
        node = json.loads(r.stdout)["nodes"][NODE]
        assert node["state"] == "active", node
        assert node["seconds"] < 5, node
        assert "BMC preflight failed" in node["error"], node
        bmc = yaml.safe_load((lab / "inventory.yml").read_text())["hosts"][NODE]["bmc"]
        assert f"{NODE} (BMC 127.0.0.1:{bmc['port']})" in node["error"], node
        assert wall < 60
        assert state_of(lab) == "active"
        assert pinned_key(lab) == key
        r = mc("--site", str(lab), "exec", NODE, "--", "hostname", timeout=120)
        assert r.returncode == 0 and NODE in r.stdout, r.stdout + r.stderr
        # The human table says why too.
        r = mc("--site", str(lab), "provision", "--force", NODE, timeout=300)
        assert r.returncode == 1 and "BMC preflight failed" in r.stdout, r.stdout + r.stderr
    finally:
        assert mc("lab", "up", "--dir", str(lab), "--nodes", "1").returncode == 0

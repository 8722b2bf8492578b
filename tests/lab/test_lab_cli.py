"""`metalchain lab up|status|console|down` as an operator runs it, and nothing left behind."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.lab.sshd import METALCHAIN

pytestmark = pytest.mark.lab

SUBNET = "10.78.0.0/24"


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def leftovers(site: Path, netns: str) -> list[str]:
    found = []
    if netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                               timeout=10).stdout.split():
        found.append(f"netns {netns}")
    if Path("/sys/class/net", netns).exists():
        found.append(f"link {netns}")
    with open("/proc/mounts", encoding="utf-8") as fh:
        found += [f"mount {ln.split()[1]}" for ln in fh if str(site) in ln.split()[1]]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
        if str(site).encode() in cmdline and not zombie:
            found.append(f"process {proc.name}: {cmdline[:80]!r}")
    return found


@pytest.fixture
def lab_dir(tmp_path):
    site = tmp_path / "lab"
    yield site
    mc("lab", "down", "--purge", "--dir", str(site), timeout=180)


CANARY = "CANARY-bmc-1b7e-xq"  # IPMI passwords are at most 20 bytes


def test_lab_up_status_console_down(lab_dir):
    # The lab keeps existing secrets: node1's BMC password is a canary that must never show.
    lab_dir.mkdir()
    (lab_dir / "secrets.yml").write_text(f"bmc-node1: {CANARY}\n")
    (lab_dir / "secrets.yml").chmod(0o600)
    outputs: list[str] = []

    def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([METALCHAIN, "--debug", *args], capture_output=True, text=True,
                           timeout=timeout)
        outputs.append(r.stdout + r.stderr)
        return r

    r = mc("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--fleet", "10", "--subnet",
           SUBNET, "--memory", "256", "--json")
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert up["nodes"] == ["node1", "node2"] and len(up["fleet"]) == 10
    netns = up["netns"]

    r = mc("--site", str(lab_dir), "lab", "status", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    st = json.loads(r.stdout[r.stdout.index("{"):])
    assert [(n["name"], n["power"]) for n in st["nodes"]] == [("node1", "off"),
                                                             ("node2", "off")]
    assert len(st["fleet"]) == 10 and all(f["running"] and f["ssh"] for f in st["fleet"])

    # The lab wrote an ordinary site: it validates and the fleet answers SSH through it.
    r = mc("--site", str(lab_dir), "inventory", "validate", "--json")
    assert json.loads(r.stdout)["hosts"] == 12
    r = mc("--site", str(lab_dir), "exec", "fleet", "--json", "--", "hostname")
    assert r.returncode == 0, r.stderr
    assert {h: v["stdout"].strip() for h, v in json.loads(r.stdout)["hosts"].items()} == {
        f"fleet{i:02d}": f"fleet{i:02d}" for i in range(1, 11)}

    # Re-running up is harmless and keeps addresses, MACs and BMC ports.
    inventory_before = (lab_dir / "inventory.yml").read_text()
    r = mc("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--fleet", "10")
    assert r.returncode == 0, r.stderr
    assert (lab_dir / "inventory.yml").read_text() == inventory_before

    _power_cli(mc, lab_dir)

    r = mc("--site", str(lab_dir), "lab", "console", "node1")
    assert r.returncode == 0
    r = mc("--site", str(lab_dir), "lab", "console", "node9")
    assert r.returncode == 2 and "no lab node named 'node9'" in r.stderr

    r = mc("lab", "down", "--dir", str(lab_dir))
    assert r.returncode == 0, r.stderr
    assert leftovers(lab_dir, netns) == []
    # And again: idempotent.
    assert mc("lab", "down", "--dir", str(lab_dir)).returncode == 0
    assert all(CANARY not in out for out in outputs)
    assert "bmc-node1: " + CANARY in (lab_dir / "secrets.yml").read_text()  # kept, not replaced


def test_status_without_lab_is_input_error(tmp_path):
    r = mc("lab", "status", "--dir", str(tmp_path))
    assert r.returncode == 2 and "no lab in" in r.stderr


def test_exec_on_50_fleet_hosts(tmp_path):
    site = tmp_path / "fleet50"
    try:
        r = mc("lab", "up", "--dir", str(site), "--nodes", "0", "--fleet", "50", "--subnet",
               "10.80.0.0/24", "--json")
        assert r.returncode == 0, r.stderr
        r = mc("--site", str(site), "exec", "fleet", "--json", "--", "hostname")
        assert r.returncode == 0, r.stderr
        answers = {h: v["stdout"].strip() for h, v in json.loads(r.stdout)["hosts"].items()}
        assert answers == {f"fleet{i:02d}": f"fleet{i:02d}" for i in range(1, 51)}
    finally:
        mc("lab", "down", "--purge", "--dir", str(site), timeout=300)


def _ipmitool(lab_dir: Path, node: str, port: int, *args: str) -> str:
    import yaml

    password = yaml.safe_load((lab_dir / "secrets.yml").read_text())[f"bmc-{node}"]
    r = subprocess.run(["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(port),
                        "-U", "admin", "-E", *args], capture_output=True, text=True,
                       timeout=30, env={"IPMI_PASSWORD": password, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return r.stdout


def _power_cli(mc, lab_dir: Path) -> None:
    """metalchain power, cross-checked with ipmitool; a dead BMC fails fast and clearly."""
    import time

    inv = json.loads(mc("--site", str(lab_dir), "inventory", "list", "nodes", "--json")
                     .stdout)["hosts"]
    port = {h["name"]: h["bmc"]["port"] for h in inv}
    r = mc("--site", str(lab_dir), "power", "bootdev", "node1", "network", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Boot Device Selector : Force PXE" in _ipmitool(
        lab_dir, "node1", port["node1"], "chassis", "bootparam", "get", "5")
    r = mc("--site", str(lab_dir), "power", "on", "node1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Chassis Power is on" in _ipmitool(lab_dir, "node1", port["node1"], "chassis",
                                              "power", "status")
    r = mc("--site", str(lab_dir), "power", "status", "nodes", "--json")
    states = {h["host"]: h["result"] for h in json.loads(r.stdout)["hosts"]}
    assert states == {"node1": "on", "node2": "off"}
    # `all` includes the fleet (no BMC): status skips those hosts and names them ...
    r = mc("--site", str(lab_dir), "power", "status", "all", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert {h["host"]: h["result"] for h in doc["hosts"]} == {"node1": "on", "node2": "off"}
    assert doc["skipped"] == [f"fleet{i:02d}" for i in range(1, 11)]
    r = mc("--site", str(lab_dir), "power", "status", "all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped 10 hosts without a BMC: fleet01, fleet02" in r.stdout
    # ... while an action that changes power refuses a host without a BMC, naming it.
    r = mc("--site", str(lab_dir), "power", "off", "fleet03")
    assert r.returncode == 2 and "power off: no BMC in the inventory for fleet03" in r.stderr
    # Power actions take the node's lease: one another actor holds is not touched.
    from inventory.site import Site
    from inventory.state.leases import Owner

    site = Site.open(lab_dir)
    try:
        site.state.acquire_leases(["node1"], Owner("other0run", "metalchain provision node1",
                                                   owner_host="ctl-elsewhere", pid=1), ttl=300)
    finally:
        site.close()
    r = mc("--site", str(lab_dir), "power", "off", "node1", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "held by run other0run" in json.loads(r.stdout)["hosts"][0]["error"]
    assert "Chassis Power is on" in _ipmitool(lab_dir, "node1", port["node1"], "chassis",
                                              "power", "status")
    assert mc("--site", str(lab_dir), "state", "release", "node1").returncode == 0
    assert mc("--site", str(lab_dir), "power", "off", "node1").returncode == 0
    assert "Chassis Power is off" in _ipmitool(lab_dir, "node1", port["node1"], "chassis",
                                               "power", "status")
    # node2's BMC dies: its call fails within 10 s naming host and BMC; node1 still answers.
    pid = int((lab_dir / "lab" / "nodes" / "node2" / "bmc.pid").read_text())
    import os
    import signal
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    r = mc("--site", str(lab_dir), "power", "status", "nodes", "--json")
    took = time.monotonic() - start
    assert r.returncode == 1
    hosts = {h["host"]: h for h in json.loads(r.stdout)["hosts"]}
    assert hosts["node1"]["result"] == "off"
    assert not hosts["node2"]["ok"] and "node2 (BMC 127.0.0.1:" in hosts["node2"]["error"]
    assert took < 10, took
    # lab status says why node2 is unhealthy, in text as in JSON: its BMC process is gone.
    r = mc("--site", str(lab_dir), "lab", "status")
    assert r.returncode == 1, r.stdout + r.stderr
    row = {ln.split("\t")[0]: ln for ln in r.stdout.splitlines()}
    assert "BMC process not running" in row["node2"] and "node2 (BMC 127.0.0.1:" in row["node2"]
    assert row["node1"].endswith("\t-"), row["node1"]
    r = mc("--site", str(lab_dir), "lab", "status", "--json")
    st = json.loads(r.stdout[r.stdout.index("{"):])
    problems = {n["name"]: n["error"] for n in st["nodes"]}
    assert problems["node1"] is None and problems["node2"].startswith("BMC process not running")
    # lab up brings the dead BMC back (idempotent repair).
    assert mc("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--fleet", "10"
              ).returncode == 0
    r = mc("--site", str(lab_dir), "power", "status", "node2", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["hosts"][0]["result"] == "off"


def test_lab_up_refuses_a_site_it_did_not_write_before_starting_anything(tmp_path):
    site = tmp_path / "mine"
    site.mkdir()
    (site / "inventory.yml").write_text("hosts:\n  web1: {}\n")
    r = mc("lab", "up", "--dir", str(site), "--nodes", "1", "--subnet", "10.94.0.0/24")
    assert r.returncode == 2 and "was not written by lab up" in r.stderr
    assert not (site / "lab").exists()
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, timeout=10).stdout
    assert "10.94.0.0/24" not in routes

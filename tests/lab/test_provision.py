"""Provisioning on the lab: blank QEMU nodes to active over IPMI, PXE, the image installer and
the pinned host key — plus the ways it fails: a dead BMC, a node that never calls back, a
controller killed mid-install."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from runtime.process import stop_child
from tests.lab.ipmi import ipmitool
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.87.0.0/24"


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def set_timeouts(site: Path, **timeouts: float) -> None:
    path = site / "metalchain.yml"
    text = path.read_text()
    header, body = text.split("\n", 1)
    doc = yaml.safe_load(body)
    doc["boot"]["timeouts"] = timeouts
    path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False))


def state_of(site: Path, node: str) -> str | None:
    s = Site.open(site)
    try:
        rec = s.state.node(node)
        return rec.state if rec else None
    finally:
        s.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    site = tmp_path_factory.mktemp("prov") / "site"
    try:
        r = mc("lab", "up", "--dir", str(site), "--nodes", "2", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        yield site
    finally:
        mc("lab", "down", "--purge", "--dir", str(site))


def test_two_nodes_in_parallel_one_with_a_dead_bmc(lab):
    """node2's BMC is dead: node2 is not started within seconds, naming its BMC, and keeps
    its state (a failed preflight changes nothing); node1 becomes active."""
    before = state_of(lab, "node2")   # lab up enrolls its nodes
    bmc_pid = int((lab / "lab" / "nodes" / "node2" / "bmc.pid").read_text())
    os.kill(bmc_pid, signal.SIGKILL)
    proc = subprocess.Popen([METALCHAIN, "--site", str(lab), "provision", "nodes", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        # lab up repairs node2's BMC for the next tests, also when this one fails.
        assert mc("lab", "up", "--dir", str(lab), "--nodes", "2").returncode == 0
    assert proc.returncode == 1, err
    doc = json.loads(out)["nodes"]
    assert doc["node1"]["state"] == "active", doc["node1"]
    assert doc["node2"]["state"] == before and state_of(lab, "node2") == before
    assert doc["node2"]["seconds"] < 10
    assert "BMC preflight failed" in doc["node2"]["error"]
    assert "node2 (BMC 127.0.0.1:" in doc["node2"]["error"]
    timings = doc["node1"]["timings"]
    assert list(timings) == ["powering_on", "pxe_booting", "installing", "installed",
                             "rebooting", "active"]
    # SSH with strict host key checking against the key pinned in the state store.
    site = Site.open(lab)
    pinned = site.state.host_keys_of("node1")[0]
    site.close()
    known = lab / "known_hosts_test"
    known.write_text(f"10.87.0.11 {pinned}\n")
    r = subprocess.run(["ssh", "-i", str(lab / "keys" / "id_ed25519"), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                        "-o", "ConnectTimeout=10", "root@10.87.0.11", "hostname"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "node1", r.stderr
    # ipmitool, an independent client, sees the node on and booting from disk.
    assert "Chassis Power is on" in ipmitool(lab, "node1", "chassis", "power", "status")
    assert "Force Boot from default Hard-Drive" in ipmitool(
        lab, "node1", "chassis", "bootparam", "get", "5")
    # Reinstalling an active node needs --force.
    r = mc("--site", str(lab), "provision", "node1")
    assert r.returncode == 2 and "needs --force" in r.stderr


def test_node_that_never_calls_back_fails_at_its_timeout_then_retry(lab):
    """node2 cannot reach DHCP: it times out in powering_on with its console in the reason;
    with the network back, --retry installs it."""
    set_timeouts(lab, powering_on=25)
    subprocess.run(["ip", "-n", _netns(lab), "link", "set", "tap2", "nomaster"], check=True,
                   timeout=10)
    try:
        r = mc("--site", str(lab), "provision", "node2", "--retry", "--json", timeout=300)
    finally:
        subprocess.run(["ip", "-n", _netns(lab), "link", "set", "tap2", "master", "br0"],
                       check=True, timeout=10)
    assert r.returncode == 1
    node = json.loads(r.stdout)["nodes"]["node2"]
    assert node["state"] == "provision_failed"
    assert "timed out after 25s in powering_on" in node["reason"]
    assert "console:" in node["reason"] and "iPXE" in node["reason"]
    r = mc("--site", str(lab), "provision", "node2", "--retry", "--json", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["nodes"]["node2"]["state"] == "active"


def test_controller_killed_mid_install_never_leaves_a_node_in_progress(lab):
    set_timeouts(lab)
    proc = subprocess.Popen([METALCHAIN, "--site", str(lab), "provision", "node1", "--force"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: state_of(lab, "node1") == "installing", 180, "node1 installing",
                 interval=0.2)
    finally:
        stop_child(proc, sig=signal.SIGKILL, timeout=10)
    serve = subprocess.Popen([METALCHAIN, "--site", str(lab), "serve", "--no-images"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        final = wait_for(lambda: state_of(lab, "node1") in ("active", "provision_failed")
                         and state_of(lab, "node1"), 400, "node1 to leave in-progress",
                         interval=0.2)
    finally:
        stop_child(serve, timeout=30)
    site = Site.open(lab)
    rec = site.state.node("node1")
    site.close()
    assert final in ("active", "provision_failed")
    if final == "provision_failed":
        assert rec.reason  # failed with a reason, never stuck


def test_ctrl_c_twice_fails_the_node_cut_short_with_the_reason(lab):
    """The first Ctrl-C is acknowledged naming the node (and finishes it); the second gives
    up on it: this command's boot server stops with it, so the node is failed with the
    reason, never left in progress (before, no stop was acknowledged at all)."""
    set_timeouts(lab)
    proc = subprocess.Popen([METALCHAIN, "--site", str(lab), "provision", "node1", "--force",
                             "--retry"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_for(lambda: state_of(lab, "node1") in ("pxe_booting", "installing"), 180,
                 "node1 booting its installer", interval=0.2)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: _run_event(lab, "provision", "run_stopping"), 30,
                 "the provision run to acknowledge the stop")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_child(proc, sig=signal.SIGKILL, timeout=10)
    assert proc.returncode == 130, out
    assert "stopping after the current step on node1; Ctrl-C again to abort" in out
    assert "provision aborted: no further node was started" in out
    site = Site.open(lab)
    try:
        rec = site.state.node("node1")
    finally:
        site.close()
    assert rec.state == "provision_failed", (rec.state, rec.reason)
    assert rec.reason.startswith("aborted by a stop request while "), rec.reason


def _run_event(site: Path, kind: str, event: str) -> bool:
    """Whether the newest run of ``kind`` has logged ``event`` in its JSON event log."""
    s = Site.open(site)
    try:
        runs = [r for r in s.state.list_runs(limit=5) if r["kind"] == kind]
    finally:
        s.close()
    log = site / "runs" / f"{runs[0]['uid']}.jsonl" if runs else None
    if log is None or not log.exists():
        return False
    return any(json.loads(line).get("event") == event
               for line in log.read_text().splitlines() if line.strip())


def _netns(site: Path) -> str:
    return json.loads((site / "lab" / "lab.json").read_text())["netns"]

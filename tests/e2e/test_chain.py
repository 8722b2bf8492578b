"""The whole chain on the lab: a blank QEMU node is provisioned over IPMI/PXE, then it and
two fleet hosts get base + node_exporter + hypervisor from the site's own package mirror
(twice: the second run changes nothing), testinfra verifies them, and node_exporter answers
the controller."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SUBNET = "10.92.0.0/24"
PACKAGES = ("sudo,systemd-timesyncd,prometheus-node-exporter,qemu-system-x86,qemu-utils,"
            "libvirt-daemon-system")
ROLES = ("--role", "base", "--role", "node_exporter", "--role", "hypervisor")
# The lab's nodes are emulated (TCG): no hardware virtualization to demand.
TCG = ("-e", "hypervisor_require_kvm=false")


def mc(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain") / "site"
    serve = None
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--fleet", "2", "--subnet",
               SUBNET, "--memory", "768")
        assert r.returncode == 0, r.stderr
        r = mc("--site", str(root), "mirror", "build", "--packages", PACKAGES, "--sign")
        assert r.returncode == 0, r.stderr
        serve = subprocess.Popen([METALCHAIN, "--site", str(root), "serve"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(serve.stdout), daemon=True)
        reader.start()      # serve's output is read all along: a full pipe would block it
        wait_for(lambda: any("serving" in ln for ln in lines) or serve.poll() is not None,
                 120, "metalchain serve to start")
        line = next((ln for ln in lines if "serving" in ln), "".join(lines))
        assert "serving" in line and "package mirror at" in line, line
        yield root
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait(10)
        mc("lab", "down", "--purge", "--dir", str(root), timeout=300)


def test_provision_uses_the_running_serve(site: Path):
    r = mc("--site", str(site), "provision", "nodes", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "using the running metalchain serve" in r.stderr
    assert json.loads(r.stdout)["nodes"]["node1"]["state"] == "active"


def test_roles_on_node_and_fleet_twice_then_verify(site: Path):
    r = mc("--site", str(site), "facts", "all", "--json")
    assert r.returncode == 0, r.stderr
    first = mc("--site", str(site), "apply", *ROLES, "all", *TCG, "--json")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    doc = json.loads(first.stdout)
    assert {h: v["status"] for h, v in doc["hosts"].items()} == {
        "node1": "changed", "fleet01": "changed", "fleet02": "changed"}
    second = json.loads(mc("--site", str(site), "apply", *ROLES, "all", *TCG, "--verify",
                           "--json").stdout)
    assert second["counts"]["changed"] == 0 and second["counts"]["ok"] == 3
    assert all(v["steps"][0]["round_trips"] == 1 for v in second["hosts"].values())
    assert second["verify"]["exit_code"] == 0 and second["exit_code"] == 0
    assert set(second["verify"]["hosts"]) == {"node1", "fleet01", "fleet02"}
    r = mc("--site", str(site), "verify", "all", *ROLES, *TCG, "--json")
    report = json.loads(r.stdout)
    bad = {h: [(t["id"], t["message"][-500:]) for t in v["tests"]
               if t["outcome"] in ("failed", "error")] or v.get("message")
           for h, v in report["hosts"].items() if v["status"] != "passed"}
    assert r.returncode == 0 and not bad, bad


def test_node_exporter_answers_on_the_provisioned_node(site: Path):
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen("http://10.92.0.11:9100/metrics", timeout=5) as resp:
                body = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert "node_exporter_build_info" in body

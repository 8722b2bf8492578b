"""The shipped playbooks/site.yml on a lab with one blank QEMU node and one fleet host:
``metalchain run`` provisions the node (a boot server started for the run and stopped with
it), applies the roles (a site role on the fleet host that serves a tiny metrics endpoint:
no packages), and brings the monitoring stack up with the fleet host's target up. A second
run changes nothing and is quick: the active node is ``ok`` without its BMC (killed before
the run, so any BMC call would fail it), the stack is only re-checked.

One lab, one PXE install under TCG; the first and second run times are printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from lab.lab import INVENTORY_HEADER
from tests.lab.sshd import METALCHAIN

pytestmark = pytest.mark.lab

SUBNET = "10.99.0.0/24"
CONTROLLER = "10.99.0.1"
SITE_YML = Path(__file__).resolve().parents[2] / "playbooks" / "site.yml"
HTTP_PORT = 20001
PROM, AM1, AM2, GOSSIP1, GOSSIP2, RECEIVER = 20010, 20011, 20012, 20013, 20014, 20015
PROBE_PORT = 20020

PROBE = """#!/bin/sh
# A minimal metrics endpoint (socket-activated): read the request's head, answer one metric.
sed -u '/^\\r*$/q' >/dev/null
printf 'HTTP/1.0 200 OK\\r\\nContent-Type: text/plain; version=0.0.4\\r\\n\\r\\nprobe_up 1\\n'
"""
SOCKET = f"""[Socket]
ListenStream={PROBE_PORT}
Accept=yes

[Install]
WantedBy=sockets.target
"""
SERVICE = """[Service]
ExecStart=/usr/local/bin/probe-exporter
StandardInput=socket
StandardOutput=socket
"""
RECIPE = """\
- file: {path: /usr/local/bin/probe-exporter, source: probe-exporter, mode: '0755',
         owner: root, group: root}
- file: {path: /etc/systemd/system/probe-exporter.socket, source: probe-exporter.socket,
         mode: '0644', owner: root, group: root}
- file: {path: /etc/systemd/system/probe-exporter@.service, source: probe-exporter@.service,
         mode: '0644', owner: root, group: root}
- command:
    argv: [systemctl, daemon-reload]
    unless: [systemctl, is-active, --quiet, probe-exporter.socket]
- service: {name: probe-exporter.socket, enabled: true, state: started}
"""


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def configure(root: Path) -> None:
    """Our ports, 1 s monitoring, the webhook token, and the probe role on the fleet."""
    path = root / "metalchain.yml"
    header, body = path.read_text().split("\n", 1)
    doc = yaml.safe_load(body)
    doc["boot"]["http_port"] = HTTP_PORT
    doc["monitor"] = {"prometheus_port": PROM, "alertmanager_ports": [AM1, AM2],
                      "cluster_ports": [GOSSIP1, GOSSIP2], "scrape_interval": 1,
                      "evaluation_interval": 1, "receiver_address": CONTROLLER,
                      "receiver_port": RECEIVER}
    path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False))
    with open(root / "secrets.yml", "a", encoding="utf-8") as fh:
        fh.write(f"monitor_webhook_token: token-{os.urandom(12).hex()}\n")
    role = root / "playbooks" / "roles" / "probe_exporter"
    (role / "files").mkdir(parents=True)
    (role / "meta.yml").write_text("description: a tiny metrics endpoint for tests\n"
                                   f"scrape_targets:\n  - {{port: {PROBE_PORT}, job: probe}}\n")
    (role / "recipe.yml").write_text(RECIPE)
    for name, text in (("probe-exporter", PROBE), ("probe-exporter.socket", SOCKET),
                       ("probe-exporter@.service", SERVICE)):
        (role / "files" / name).write_text(text)
    inv = root / "inventory.yml"
    doc = yaml.safe_load(inv.read_text())
    doc["groups"]["fleet"]["roles"] = ["probe_exporter"]
    inv.write_text(INVENTORY_HEADER + yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain") / "site"
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--fleet", "1",
               "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        configure(root)
        yield root
    finally:
        mc("--site", str(root), "monitor", "down", timeout=120)
        mc("lab", "down", "--purge", "--dir", str(root))


def run_site(root: Path, timeout: float) -> tuple[dict, float]:
    t0 = time.monotonic()
    r = mc("--site", str(root), "run", str(SITE_YML), "--json", timeout=timeout)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return json.loads(r.stdout), took


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def test_site_yml_provisions_configures_and_monitors_then_a_second_run_changes_nothing(lab):
    first, first_s = run_site(lab, 600)
    steps = {h: [(s["play"], s["status"]) for s in r["steps"]]
             for h, r in first["hosts"].items()}
    assert steps["node1"] == [("provision the bare-metal nodes", "changed"),
                              ("configure the hosts with their roles", "ok"),
                              ("monitor every host", "skipped")]
    assert steps["fleet01"] == [("configure the hosts with their roles", "changed"),
                                ("monitor every host", "changed")]
    chain = first["chain"]
    assert chain["nodes_active"] == chain["nodes"] == 1
    assert chain["roles_applied"] == {"probe_exporter": 1}
    assert chain["targets_up"] == chain["targets"] == 1
    assert [s["play"] for s in first["stages"]] == [
        "provision the bare-metal nodes", "configure the hosts with their roles",
        "monitor every host"]
    site = Site.open(lab)
    try:
        assert site.state.node("node1").state == "active"
    finally:
        site.close()
    # The boot server was the run's: it stopped with it.
    assert not listening(CONTROLLER, HTTP_PORT)

    # The second run: the node's BMC is dead, so touching it would fail the node.
    bmc_pid = int((lab / "lab" / "nodes" / "node1" / "bmc.pid").read_text())
    os.kill(bmc_pid, signal.SIGKILL)
    second, second_s = run_site(lab, 300)
    statuses = {s["status"] for r in second["hosts"].values() for s in r["steps"]}
    assert statuses <= {"ok", "skipped"}, second["hosts"]
    assert second["counts"]["changed"] == 0
    assert second["chain"]["nodes_active"] == 1 and second["chain"]["targets_up"] == 1
    print(f"\nsite.yml on 1 node + 1 fleet host: first run {first_s:.1f} s "
          f"(stages: {[s['seconds'] for s in first['stages']]}), second run {second_s:.1f} s "
          f"(stages: {[s['seconds'] for s in second['stages']]})")
    assert second_s < first_s / 3
    # The human summary: a row per stage and the chain line.
    r = mc("--site", str(lab), "run", str(SITE_YML), timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    print(r.stdout)
    assert "1 of 1 node active" in r.stdout
    assert "chain: 1 of 1 node active; 1 host configured (roles applied: probe_exporter 1); " \
        "1 of 1 target up in " in r.stdout

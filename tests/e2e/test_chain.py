"""The whole chain on a fresh lab, from one inventory and one playbook: a blank QEMU node is
provisioned over IPMI/PXE, configured as a KVM hypervisor (libvirt from the site's mirror, its
NIC on the guests' bridge), a fleet host becomes the image store, a VM boots on the
hypervisor from the store's image, everything is monitored — then two faults are injected
and remediation heals both. Each result is checked from a source of its own: ipmitool,
SSH with the pinned keys, testinfra, virsh and qemu-img on the hypervisor, Prometheus's HTTP
API, the incident timeline and the audit log.

`metalchain run playbooks/site.yml` runs twice: the second run changes nothing, in a fraction
of the first run's time. Stage times are printed (pytest -s) for docs/demo.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml

from inventory.site import Site
from lab.bmc import start_bmc
from lab.lab import Lab
from tests.lab.ipmi import ipmitool
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

# The first run installs a node and its hypervisor packages under emulation (~9 min here):
# more than the suite's 600 s per test.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

SUBNET = "10.92.0.0/24"
PACKAGES = ("sudo,systemd-timesyncd,prometheus-node-exporter,qemu-system-x86,qemu-utils,"
            "libvirt-daemon-system,nginx,wget")
PROM, AM1, AM2, GOSSIP1, GOSSIP2, RECEIVER = 20390, 20391, 20392, 20393, 20394, 20395
SITE_YML = str(Path(__file__).resolve().parents[2] / "playbooks" / "site.yml")
FIGURES: dict[str, Any] = {}


def mc(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def must(r: subprocess.CompletedProcess[str], what: str) -> str:
    assert r.returncode == 0, f"{what} failed ({r.returncode}):\n{r.stdout[-4000:]}\n" \
                              f"{r.stderr[-4000:]}"
    return r.stdout


def _configure(root: Path) -> None:
    """The e2e's own ports, and the shipped alerts with `for: 15s` (as the demo has them)."""
    settings_file = root / "metalchain.yml"
    settings = yaml.safe_load(settings_file.read_text())
    settings["monitor"].update({"prometheus_port": PROM, "alertmanager_ports": [AM1, AM2],
                                "cluster_ports": [GOSSIP1, GOSSIP2], "receiver_port": RECEIVER})
    settings_file.write_text(yaml.safe_dump(settings))
    shipped = (Path(SITE_YML).parent / "alerts.yml").read_text(encoding="utf-8")
    assert "  for: 1m " in shipped
    (root / "playbooks").mkdir(exist_ok=True)
    (root / "playbooks" / "alerts.yml").write_text(shipped.replace("  for: 1m ", "  for: 15s ",
                                                                   1), encoding="utf-8")


class Serve:
    def __init__(self, root: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen([METALCHAIN, "--site", str(root), "serve"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        # serve's output is read all along: a full pipe would block it
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True
                         ).start()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain") / "site"
    serve = None
    try:
        t0 = time.monotonic()
        # Two vCPUs: node1 (itself emulated) runs vm1 (KVM on the SVM its emulated CPU
        # offers); with one, the guest and node1's own services (sshd, the exporter) shared it
        # and node1's sshd sent no banner for minutes while vm1 ran (the hypervisor role also
        # gives guests a lower CPU weight).
        must(mc("lab", "up", "--dir", str(root), "--nodes", "1", "--fleet", "2", "--chain",
                "--vms", "1", "--subnet", SUBNET, "--memory", "1536", "--cpus", "2"),
             "lab up")
        _configure(root)
        must(mc("--site", str(root), "mirror", "build", "--packages", PACKAGES, "--sign"),
             "mirror build")
        # On the site's own mirror port: lab up published the guest image's URL with it.
        must(mc("--site", str(root), "mirror", "serve", "--daemon"), "mirror serve")
        FIGURES["lab_and_mirror_s"] = round(time.monotonic() - t0, 1)
        serve = Serve(root)
        wait_for(lambda: any("serving" in ln for ln in serve.lines)
                 or serve.proc.poll() is not None, 120, "metalchain serve to start")
        assert any("serving" in ln for ln in serve.lines), "".join(serve.lines)
        yield root
    finally:
        if serve is not None:
            serve.stop()
        print("\nfigures:", json.dumps(FIGURES, indent=1))
        mc("--site", str(root), "monitor", "down", timeout=120)
        mc("--site", str(root), "mirror", "stop", timeout=60)
        mc("lab", "down", "--purge", "--dir", str(root), timeout=300)


def run_site(root: Path) -> dict[str, Any]:
    r = mc("--site", str(root), "run", SITE_YML, "--json")
    assert r.stdout.strip(), r.stderr[-3000:]
    result = json.loads(r.stdout)
    assert r.returncode == 0 and result["kind"] == "run.result", (
        json.dumps(result)[-6000:], r.stderr[-3000:])
    return result


def exec_(root: Path, host: str, script: str, timeout: float = 180) -> str:
    r = mc("--site", str(root), "exec", host, "--json", "--", "sh", "-c", script,
           timeout=timeout)
    doc = json.loads(r.stdout)["hosts"][host]
    assert doc["exit_code"] == 0, doc
    return str(doc["stdout"] or "").strip()


def inventory(root: Path) -> Any:
    s = Site.open(root)
    try:
        return s.inventory
    finally:
        s.close()


def pinned(root: Path, host: str) -> list[str]:
    s = Site.open(root)
    try:
        return s.state.host_keys_of(host)
    finally:
        s.close()


def ssh_hostname(root: Path, host: str) -> str:
    """``hostname`` over SSH with only the host's pinned key known (strict checking)."""
    address = inventory(root).hosts[host].address
    [line] = pinned(root, host)
    key_type, b64 = line.split()
    client = paramiko.SSHClient()
    client.get_host_keys().add(address, key_type, paramiko.PKey.from_type_string(
        key_type, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(address, username="root", key_filename=str(root / "keys" /
                                                                  "id_ed25519"),
                       timeout=30, banner_timeout=30, auth_timeout=30, look_for_keys=False,
                       allow_agent=False)
        _, out, _ = client.exec_command("hostname", timeout=20)
        return out.read().decode().strip()
    finally:
        client.close()


def prometheus(path: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{PROM}{path}", timeout=10) as resp:
        return json.loads(resp.read())["data"]


def node_targets() -> dict[str, dict[str, Any]]:
    return {t["labels"]["instance"]: t for t in prometheus("/api/v1/targets?state=active")
            ["activeTargets"] if t["labels"].get("job") == "node"}


def test_site_yml_runs_the_whole_chain(site: Path):
    t0 = time.monotonic()
    result = run_site(site)
    FIGURES["first_run_s"] = round(time.monotonic() - t0, 1)
    FIGURES["stages_s"] = {s["play"]: s["seconds"] for s in result["stages"]}
    chain = result["chain"]
    assert (chain["nodes_active"], chain["nodes"]) == (1, 1), chain
    assert (chain["vms_running"], chain["vms"]) == (1, 1), chain
    assert set(chain["roles_applied"]) >= {"base", "node_exporter", "hypervisor",
                                           "image_store", "lab_guest"}, chain
    assert chain["targets"] >= 4 and chain["targets_up"] == chain["targets"], chain


def test_each_stage_checked_independently(site: Path):
    inv = inventory(site)
    # provision: the BMC says the node is on (ipmitool, not our client)
    assert "Chassis Power is on" in ipmitool(site, "node1", "power", "status")
    # SSH with the pinned keys, to the node, a fleet host and the VM
    for host in ("node1", "fleet01", "vm1"):
        assert ssh_hostname(site, host) == host
    # testinfra on the hypervisor: the roles' own checks (libvirt answering, the bridge)
    r = mc("--site", str(site), "verify", "node1", "--role", "hypervisor", "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["hosts"]["node1"]["status"] == "passed", \
        json.dumps(report)[-3000:]
    # virsh and qemu-img on the hypervisor: the domain runs, on an overlay whose backing file
    # is the image store's image, checksum for checksum
    assert exec_(site, "node1", "virsh -c qemu:///system domstate vm1") == "running"
    info = json.loads(exec_(site, "node1", "qemu-img info -U --output=json "
                                           "/var/lib/metalchain/guests/vm1/disk.qcow2"))
    backing = info["full-backing-filename"]
    sha = exec_(site, "node1", f"sha256sum {backing}").split()[0]
    [entry] = inv.groups["storage"].vars["image_store_images"]
    assert sha == entry["sha256"], (sha, entry)
    store = inv.hosts["fleet01"].address
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{store}:9292/index.json", timeout=10) as resp:
        index = resp.read().decode()
    assert entry["sha256"] in index, index[:2000]
    # the guest's NIC is on the hypervisor's bridge, which carries the node's own NIC
    assert "master br-guests" in exec_(site, "node1", "ip -o link show")
    # Prometheus's own API: hypervisor, fleet and VM targets up, the VM with its labels
    targets = node_targets()
    for host in ("node1", "fleet01", "fleet02", "vm1"):
        assert targets[host]["health"] == "up", targets.get(host)
    labels = targets["vm1"]["labels"]
    assert (labels.get("hypervisor"), labels.get("kind"), labels.get("service")) == (
        "node1", "vm", "demo"), labels
    assert "hypervisor" not in targets["node1"]["labels"]


def test_a_second_run_changes_nothing(site: Path):
    """... and never asks the active node's BMC: it is killed for the run (any BMC call would
    fail the node), and started again afterwards."""
    keys = pinned(site, "vm1")
    lab = Lab(site)
    [node] = lab.load().nodes
    spec = lab.bmc_spec(node)
    os.kill(int((site / "lab" / "nodes" / "node1" / "bmc.pid").read_text()), signal.SIGKILL)
    try:
        t0 = time.monotonic()
        result = run_site(site)
        FIGURES["second_run_s"] = round(time.monotonic() - t0, 1)
    finally:
        start_bmc(spec)
    assert result["counts"]["changed"] == 0, result["counts"]
    assert FIGURES["second_run_s"] < FIGURES["first_run_s"] / 2, FIGURES
    assert pinned(site, "vm1") == keys


def _wait_healed(site: Path, target: str, alert: str, since: float) -> dict[str, Any]:
    r = mc("--site", str(site), "incidents", "wait", "--target", target, "--alert", alert,
           "--since", str(since), "--timeout", "600", "--json", timeout=660)
    inc = json.loads(r.stdout)["incident"] if r.stdout.strip() else {}
    doc = json.loads(mc("--site", str(site), "incidents", "show", str(inc.get("id", 0)),
                        "--json").stdout or "{}")
    if r.returncode != 0 or inc.get("state") != "healed":
        # Every incident of the site with how it ended: the one before may be the cause
        # (a guard counts actions of other incidents on the same host).
        listing = mc("--site", str(site), "incidents", "list", "--json").stdout
        others = [{k: i.get(k) for k in ("id", "source", "alertname", "target", "state", "rule",
                                         "created_at", "ended_at")}
                  for i in json.loads(listing or "{}").get("incidents", [])]
        raise AssertionError(f"{alert} on {target} not healed: {r.stderr[-1000:]}\n"
                             f"{json.dumps(doc)[-3000:]}\nall incidents: {json.dumps(others)}")
    return doc


#: The alerts whose rules act on the hosts the fault tests break.
ACTED_ON = ("ExporterDown", "HostDown", "VmDown", "SystemdUnitFailed", "NodePoweredOff")


def _wait_quiet(site: Path) -> None:
    """A fault test starts from a quiet site: none of those firing, no incident open or acting
    (what the chain's runs left behind has ended), so the incident it waits for is its own
    fault's and no guard counts an earlier one."""
    last: dict[str, Any] = {}

    def quiet() -> bool:
        firing = [a["labels"] for a in prometheus("/api/v1/alerts")["alerts"]
                  if a["state"] == "firing" and a["labels"].get("alertname") in ACTED_ON]
        r = mc("--site", str(site), "incidents", "list", "--state", "open", "--state",
               "acting", "--json", timeout=60)
        busy = json.loads(r.stdout or "{}").get("incidents", [r.stderr]) \
            if r.returncode == 0 else [r.stderr]
        last.update(firing=firing, unfinished=busy)
        return not firing and not busy

    t0 = time.monotonic()
    try:
        wait_for(quiet, 300, "a quiet site", interval=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {json.dumps(last)[-3000:]}") from None
    FIGURES.setdefault("quiet_wait_s", []).append(round(time.monotonic() - t0, 1))


def test_a_stopped_exporter_on_the_hypervisor_is_restarted(site: Path):
    _wait_quiet(site)
    t = time.time()
    exec_(site, "node1", "systemctl stop prometheus-node-exporter")
    doc = _wait_healed(site, "node1", "ExporterDown", t)
    FIGURES["exporter_fault_to_healed_s"] = round(doc["incident"]["ended_at"] - t, 1)
    kinds = [e["kind"] for e in doc["timeline"]]
    assert "action_finished" in kinds and kinds[-1] == "healed", \
        json.dumps(doc["timeline"])[-4000:]
    assert exec_(site, "node1", "systemctl is-active prometheus-node-exporter") == "active"


def test_a_killed_vm_is_started_again(site: Path):
    _wait_quiet(site)
    old_pid = exec_(site, "node1", "cat /run/libvirt/qemu/vm1.pid")
    t = time.time()
    exec_(site, "node1", f"kill -9 {old_pid}")
    doc = _wait_healed(site, "vm1", "VmDown", t)
    # Which incident restarts the guest is a race: its ExporterDown (the scrape) can come
    # before its VmDown (the reach probe); that ladder's restart_service fails, its
    # restart_vm brings the guest back, and VmDown then finds it healthy. Either way: once.
    _wait_quiet(site)
    s = Site.open(site)
    try:
        restarts = [(a.action, a.outcome, a.incident_id)
                    for a in s.state.actions(since=t) if a.target == "vm1"
                    and a.action == "restart_vm"]
        ended = max(i.ended_at or 0 for i in s.state.list_incidents(target="vm1")
                    if i.created_at >= t)
    finally:
        s.close()
    FIGURES["vm_kill_to_healed_s"] = round(ended - t, 1)
    assert [(a, o) for a, o, _ in restarts] == [("restart_vm", "ok")], \
        (restarts, json.dumps(doc["timeline"])[-4000:])
    # the host itself: the domain runs with a new QEMU, the guest answers with its pinned key
    assert exec_(site, "node1", "virsh -c qemu:///system domstate vm1") == "running"
    assert exec_(site, "node1", "cat /run/libvirt/qemu/vm1.pid") != old_pid
    assert ssh_hostname(site, "vm1") == "vm1"
    wait_for(lambda: node_targets().get("vm1", {}).get("health") == "up", 120,
             "Prometheus scraping vm1 again")


def test_the_site_is_intact_after_the_chain(site: Path):
    """After two chain runs, two faults and their remediation: the store passes SQLite's
    integrity check, every JSON, JSON-lines and YAML file under the site parses (nothing
    half-written), and no run is left showing ``running``."""
    from tests.lab import crashlab

    assert crashlab.integrity(site) == []
    s = Site.open(site)
    try:
        runs = s.state.list_runs(limit=50)
    finally:
        s.close()
    assert runs and not [r for r in runs if r["status"] == "running"], runs

"""A provisioned lab node powered off behind metalchain's back (ipmitool against its lab BMC):
the BMC poller of a running ``Serve`` (in this process, polling every second) sees it at its
next poll, the store has a ``NodePoweredOff`` incident from
the same ingest as alerts, ``/metrics`` says ``metalchain_node_power_on 0``, and the
``power_cycle`` remediation brings it back to ``active`` with SSH answering its pinned key;
the incident then resolves under the same key. A BMC that stops answering (its process
killed) is a ``BmcUnreachable`` incident after two polls, and the node stays ``active``.

One lab, one node (PXE install under TCG takes a minute or two); detection and recovery
times are printed (bench/RESULTS.md records them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from inventory.site import Site
from monitor.metrics import build_registry, exposition
from monitor.power import BMC_UNREACHABLE, POWERED_OFF, power_fingerprint
from orchestrate.power_remedy import power_cycle_node
from orchestrate.power_watch import PowerWatch
from orchestrate.provisioning import Serve
from provision.sshcheck import ssh_answers_with
from tests.lab.ipmi import ipmitool
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.94.0.0/24"
NODE = "node1"
NODE_IP = "10.94.0.11"
POLL_S = 1.0
DETECT_LIMIT_S = 10.0       # one poll interval plus a BMC call, with room for CI load
RECOVER_LIMIT_S = 240.0     # power on -> SSH with the pinned key under TCG (~20-40 s measured)


HTTP_PORT = 19501
RECEIVER_PORT = 19502


def configure(root: Path) -> None:
    """Our ports (the boot server's, the receiver's should serve start one) and a 1 s poll."""
    path = root / "metalchain.yml"
    header, body = path.read_text().split("\n", 1)
    doc = yaml.safe_load(body)
    doc["boot"]["http_port"] = HTTP_PORT
    doc["monitor"] = {"bmc_poll_interval": POLL_S, "bmc_poll_timeout": 2,
                      "receiver_port": RECEIVER_PORT}
    path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False))


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("power") / "site"
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        configure(root)
        r = mc("--site", str(root), "provision", NODE, "--json", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["nodes"][NODE]["state"] == "active"
        site = Site.open(root)
        try:
            yield root, site
        finally:
            site.close()
    finally:
        mc("lab", "down", "--purge", "--dir", str(root))


def metric(registry, name: str, host: str, **labels: str) -> float | None:
    want = {"host": host, **labels}
    for family in text_string_to_metric_families(exposition(registry).decode()):
        for s in family.samples:
            if s.name == name and s.labels == want:
                return s.value
    return None


def firing_incident(site, alertname: str = POWERED_OFF):
    return next((i for i in site.state.list_incidents(target=NODE)
                 if i.alertname == alertname and i.alert_status == "firing"), None)


def test_a_node_powered_off_through_its_bmc_is_detected_and_power_cycled_back(lab):
    root, site = lab
    ingested: list[list] = []
    srv = Serve(site)
    srv.ingest_listeners.append(ingested.append)
    registry = srv.metrics_registry
    assert srv.power_watch.interval == POLL_S
    loop = threading.Thread(target=srv.run, name="serve", daemon=True)
    try:
        srv.start()
        loop.start()
        wait_for(lambda: metric(registry, "metalchain_node_power_on", NODE) == 1.0, 30,
                 f"the poller to see {NODE} powered on")
        assert metric(registry, "metalchain_bmc_reachable", NODE) == 1.0
        assert firing_incident(site) is None

        off_at = time.monotonic()
        ipmitool(root, NODE, "chassis", "power", "off")
        inc = wait_for(lambda: firing_incident(site), DETECT_LIMIT_S,
                       f"a {POWERED_OFF} incident for {NODE}", interval=0.05)
        detected = time.monotonic() - off_at
        assert (inc.source, inc.state, inc.fingerprint) == \
            ("event", "open", power_fingerprint(POWERED_OFF, NODE))
        assert inc.labels == {"alertname": POWERED_OFF, "host": NODE, "source": "bmc"}
        assert any(i.incident_id == inc.id and i.new for batch in ingested for i in batch)
        assert metric(registry, "metalchain_node_power_on", NODE) == 0.0
        assert metric(registry, "metalchain_bmc_reachable", NODE) == 1.0
        assert "Chassis Power is off" in ipmitool(root, NODE, "chassis", "power", "status")
        assert site.state.node(NODE).state == "active"   # off is an incident, not a state

        fix_at = time.monotonic()
        ok, message, uid = power_cycle_node(site, NODE, timeout=RECOVER_LIMIT_S)
        recovered = time.monotonic() - fix_at
        print(f"\npower off -> {POWERED_OFF} incident in the store: {detected:.2f} s "
              f"(poll every {POLL_S:g} s); power_cycle -> active + SSH with the pinned key: "
              f"{recovered:.1f} s ({message})")
        assert ok, message
        assert "powered on (it was off)" in message
        run = site.state.get_run(uid)
        assert run is not None and (run["kind"], run["status"]) == ("remediation", "ok")
        [entry] = site.state.journal_entries(run_uid=uid)
        assert (entry.host, entry.status) == (NODE, "changed")
        assert site.state.node(NODE).state == "active"
        pinned = site.state.host_keys_of(NODE)[0]
        assert ssh_answers_with(NODE_IP, pinned, timeout=5.0)[0]
        assert "Chassis Power is on" in ipmitool(root, NODE, "chassis", "power", "status")

        # on again: the same incident resolves (same key), and the metric says on
        wait_for(lambda: (i := site.state.incident(inc.id)) and i.alert_status == "resolved",
                 DETECT_LIMIT_S, f"the {POWERED_OFF} incident to resolve")
        assert metric(registry, "metalchain_node_power_on", NODE) == 1.0
        assert len([i for i in site.state.list_incidents(target=NODE)
                    if i.alertname == POWERED_OFF]) == 1
        # a registry of our own per serve: a second one over the same store does not clash
        assert metric(build_registry(site.state)[0], "metalchain_node_state", NODE,
                      state="active") == 1.0
        assert metric(registry, "metalchain_node_state", NODE, state="active") == 1.0
    finally:
        srv.request_stop()
        if loop.is_alive():
            loop.join(30)
        srv.close()
    assert not loop.is_alive()


def test_a_silent_bmc_is_an_incident_after_two_polls_and_resolves_when_it_answers(lab):
    root, site = lab
    watch = PowerWatch(lambda: site.inventory, site.state, interval=POLL_S, timeout=2.0)
    registry, _ = build_registry(site.state, bmc_status=watch.cache.snapshot)
    watch.start()
    try:
        wait_for(lambda: metric(registry, "metalchain_bmc_reachable", NODE) == 1.0, 30,
                 f"the poller to reach {NODE}'s BMC")
        pid = int((root / "lab" / "nodes" / NODE / "bmc.pid").read_text())
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        try:
            inc = wait_for(lambda: firing_incident(site, BMC_UNREACHABLE), 30,
                           f"a {BMC_UNREACHABLE} incident for {NODE}", interval=0.05)
            print(f"\nBMC killed -> {BMC_UNREACHABLE} incident in the store: "
                  f"{time.monotonic() - killed_at:.2f} s (two polls, every {POLL_S:g} s)")
            assert inc.fingerprint == power_fingerprint(BMC_UNREACHABLE, NODE)
            assert inc.annotations["detail"].startswith(f"{NODE} (BMC 127.0.0.1:"), \
                inc.annotations     # the driver's error, naming host and BMC
            assert metric(registry, "metalchain_bmc_reachable", NODE) == 0.0
            assert metric(registry, "metalchain_node_power_on", NODE) is None
            assert firing_incident(site, POWERED_OFF) is None    # silent is not "off"
            assert site.state.node(NODE).state == "active"
        finally:
            r = mc("lab", "up", "--dir", str(root), "--nodes", "1")   # restarts the BMC
        assert r.returncode == 0, r.stderr
        wait_for(lambda: (i := site.state.incident(inc.id)) and i.alert_status == "resolved",
                 30, f"the {BMC_UNREACHABLE} incident to resolve")
        assert metric(registry, "metalchain_bmc_reachable", NODE) == 1.0
        assert metric(registry, "metalchain_node_power_on", NODE) == 1.0
    finally:
        watch.stop()

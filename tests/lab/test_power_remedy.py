"""A provisioned lab node powered off behind metalchain's back (ipmitool against its lab BMC),
healed through the whole path of a running ``Serve`` (in this process): its BMC poller (every
second) sees it at its next poll and ingests a ``NodePoweredOff`` incident; the remediation
engine takes it (shipped rule ``powered-off``: ``power_cycle``, allowed by the rule), the guards
say act, the ``power_cycle`` action powers it on (a run of kind ``remediation`` holding the
node's lease), the verification sees SSH answer with the pinned key, and the incident ends
``healed`` with exactly one action. The poller's own "resolved" for the incident (the node is
on again) does not disturb the engine. Nothing in this module calls ``power_cycle_node``.

A BMC that stops answering (its process killed) is a ``BmcUnreachable`` incident after two
polls, which the shipped rule ``bmc-unreachable`` escalates to a human at once: no action,
the node stays ``active``. With the kill switch on, a node powered off stays off and its
incident is ``suppressed``.

One lab, one node: one PXE install and one recovery boot under TCG; the detection (power off
-> incident in the store) and recovery (incident -> healed) times are printed
(bench/RESULTS.md records them)."""

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
HEAL_LIMIT_S = 300.0        # power on -> SSH with the pinned key under TCG (~30-50 s measured)


HTTP_PORT = 19501
RECEIVER_PORT = 19502


def configure(root: Path) -> None:
    """Our ports (the boot server's, the receiver's) and a 1 s poll."""
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
    """The provisioned node and a running ``Serve`` (poller + engine) for the whole module."""
    root = tmp_path_factory.mktemp("power") / "site"
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        configure(root)
        r = mc("--site", str(root), "provision", NODE, "--json", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["nodes"][NODE]["state"] == "active"
        site = Site.open(root)
        srv = Serve(site)
        loop = threading.Thread(target=srv.run, name="serve", daemon=True)
        try:
            srv.start()
            loop.start()
            yield root, site, srv
        finally:
            srv.request_stop()
            if loop.is_alive():
                loop.join(30)
            srv.close()
            site.close()
        assert not loop.is_alive()
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


def in_state(site, incident_id: int, *states: str):
    inc = site.state.incident(incident_id)
    return inc if inc is not None and inc.state in states else None


def kinds(site, incident_id: int) -> list[str]:
    return [e["kind"] for e in site.state.incident_timeline(incident_id)]


def event(site, incident_id: int, kind: str) -> dict:
    return next(e for e in site.state.incident_timeline(incident_id) if e["kind"] == kind)


def test_a_node_powered_off_through_its_bmc_is_healed_by_the_engine_with_one_action(lab):
    root, site, srv = lab
    registry = srv.metrics_registry
    assert srv.power_watch.interval == POLL_S
    assert srv.remediator is not None
    wait_for(lambda: metric(registry, "metalchain_node_power_on", NODE) == 1.0, 30,
             f"the poller to see {NODE} powered on")
    assert metric(registry, "metalchain_bmc_reachable", NODE) == 1.0
    assert firing_incident(site) is None
    runs_before = {r["uid"] for r in site.state.list_runs(limit=1000)}

    off_at = time.time()
    ipmitool(root, NODE, "chassis", "power", "off")
    inc = wait_for(lambda: firing_incident(site), DETECT_LIMIT_S,
                   f"a {POWERED_OFF} incident for {NODE}", interval=0.05)
    detected = inc.created_at - off_at
    assert (inc.source, inc.fingerprint) == ("event", power_fingerprint(POWERED_OFF, NODE))
    assert inc.labels == {"alertname": POWERED_OFF, "host": NODE, "source": "bmc"}

    healed = wait_for(lambda: in_state(site, inc.id, "healed", "escalated", "suppressed"),
                      HEAL_LIMIT_S, f"the engine to end the {POWERED_OFF} incident")
    timeline = site.state.incident_timeline(inc.id)
    assert healed.state == "healed", json.dumps(timeline, indent=1)
    healed_at = event(site, inc.id, "healed")["at"]
    recovered = healed_at - inc.created_at
    print(f"\npower off -> {POWERED_OFF} incident in the store: {detected:.2f} s "
          f"(poll every {POLL_S:g} s); incident -> healed (engine, power_cycle, SSH with the "
          f"pinned key): {recovered:.1f} s; power off -> healed: {healed_at - off_at:.1f} s")
    assert 0 <= detected < DETECT_LIMIT_S

    # The whole path, in order, in the incident's timeline.
    seen = kinds(site, inc.id)
    order = ["received", "claimed", "decision", "action_started", "action_finished",
             "verified", "healed"]
    assert [k for k in seen if k in order] == order, seen
    assert healed.rule == "powered-off"
    decision = event(site, inc.id, "decision")["detail"]
    assert (decision["verdict"], decision["action"], decision["guard"]) == \
        ("act", "power_cycle", None)
    assert event(site, inc.id, "verified")["detail"]["kind"] == "host_ssh"

    # Exactly one action, on this host, by one remediation run that took the node's lease.
    [action] = site.state.actions(incident_id=inc.id)
    assert (action.action, action.target, action.outcome) == ("power_cycle", NODE, "ok")
    assert "powered on (it was off)" in action.detail["message"], action.detail
    assert action.detail["args"] == {"if_on": "leave"}
    assert [a.id for a in site.state.actions(since=off_at - 1)] == [action.id]
    new_runs = [r for r in site.state.list_runs(limit=1000) if r["uid"] not in runs_before]
    assert [(r["uid"], r["kind"], r["status"]) for r in new_runs] == \
        [(action.run_uid, "remediation", "ok")]
    [entry] = site.state.journal_entries(run_uid=action.run_uid)
    assert (entry.host, entry.status) == (NODE, "changed")

    # Back: active, the pinned key, power on; the poller's "resolved" for the same incident
    # does not reopen or end it differently (it stays healed), and no second incident.
    assert site.state.node(NODE).state == "active"
    assert ssh_answers_with(NODE_IP, site.state.host_keys_of(NODE)[0], timeout=5.0)[0]
    assert "Chassis Power is on" in ipmitool(root, NODE, "chassis", "power", "status")
    wait_for(lambda: (i := site.state.incident(inc.id)) and i.alert_status == "resolved",
             DETECT_LIMIT_S, f"the poller to resolve the {POWERED_OFF} incident")
    assert site.state.incident(inc.id).state == "healed"
    seen = kinds(site, inc.id)
    # The poller resolved it while the action was still waiting for SSH (the node was on,
    # not yet booted): the engine went on and verified, it did not stop at "resolved".
    assert seen.index("action_started") < seen.index("resolved") < seen.index("healed"), seen
    assert metric(registry, "metalchain_node_power_on", NODE) == 1.0
    assert [i.id for i in site.state.list_incidents(target=NODE)
            if i.alertname == POWERED_OFF] == [inc.id]
    assert srv.remediator.wait_idle(10)
    assert len(site.state.actions(since=off_at - 1)) == 1
    # a registry of our own per serve: a second one over the same store does not clash
    assert metric(build_registry(site.state)[0], "metalchain_node_state", NODE,
                  state="active") == 1.0


def test_a_silent_bmc_is_escalated_to_a_human_and_nothing_is_power_cycled(lab):
    root, site, srv = lab
    registry = srv.metrics_registry
    wait_for(lambda: metric(registry, "metalchain_bmc_reachable", NODE) == 1.0, 30,
             f"the poller to reach {NODE}'s BMC")
    actions_before = len(site.state.actions())
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
        ended = wait_for(lambda: in_state(site, inc.id, "escalated", "healed", "suppressed",
                                          "unmatched"), 30,
                         f"the engine to end the {BMC_UNREACHABLE} incident")
        assert (ended.state, ended.rule) == ("escalated", "bmc-unreachable"), \
            site.state.incident_timeline(inc.id)
        decision = event(site, inc.id, "decision")["detail"]
        assert (decision["verdict"], decision["guard"], decision["action"]) == \
            ("escalate", "rule", None)
        assert "action_started" not in kinds(site, inc.id)
        assert site.state.actions(incident_id=inc.id) == []
        assert len(site.state.actions()) == actions_before
        assert metric(registry, "metalchain_bmc_reachable", NODE) == 0.0
        assert metric(registry, "metalchain_node_power_on", NODE) is None
        assert firing_incident(site, POWERED_OFF) is None    # silent is not "off"
        assert site.state.node(NODE).state == "active"
    finally:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1")   # restarts the BMC
    assert r.returncode == 0, r.stderr
    wait_for(lambda: (i := site.state.incident(inc.id)) and i.alert_status == "resolved",
             30, f"the {BMC_UNREACHABLE} incident to resolve")
    assert site.state.incident(inc.id).state == "escalated"   # a human still looks
    assert metric(registry, "metalchain_bmc_reachable", NODE) == 1.0
    assert metric(registry, "metalchain_node_power_on", NODE) == 1.0
    assert len(site.state.actions()) == actions_before


def test_with_the_kill_switch_on_a_powered_off_node_stays_off_and_is_suppressed(lab):
    root, site, srv = lab
    registry = srv.metrics_registry
    wait_for(lambda: metric(registry, "metalchain_node_power_on", NODE) == 1.0, 30,
             f"the poller to see {NODE} powered on")
    actions_before = len(site.state.actions())
    site.state.set_remediation_setting("paused", True, actor="test")
    try:
        ipmitool(root, NODE, "chassis", "power", "off")
        inc = wait_for(lambda: firing_incident(site), DETECT_LIMIT_S,
                       f"a {POWERED_OFF} incident for {NODE}", interval=0.05)
        ended = wait_for(lambda: in_state(site, inc.id, "suppressed", "healed", "escalated"),
                         30, f"the engine to decide on the {POWERED_OFF} incident")
        assert ended.state == "suppressed", site.state.incident_timeline(inc.id)
        decision = event(site, inc.id, "decision")["detail"]
        assert (decision["verdict"], decision["guard"]) == ("suppressed", "kill_switch")
        assert srv.remediator.wait_idle(10)
        assert site.state.actions(incident_id=inc.id) == []
        assert len(site.state.actions()) == actions_before
        assert "Chassis Power is off" in ipmitool(root, NODE, "chassis", "power", "status")
        assert metric(registry, "metalchain_node_power_on", NODE) == 0.0
        assert site.state.incident(inc.id).alert_status == "firing"
        assert site.state.node(NODE).state == "active"   # off is an incident, not a state
    finally:
        site.state.set_remediation_setting("paused", False, actor="test")

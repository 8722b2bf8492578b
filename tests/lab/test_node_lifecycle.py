"""One provisioned lab node through its life: identity, the guests' bridge uplink, a power
cycle with no controller, a dead BMC, and the power remediation of a running ``Serve``.

One lab, one node, one PXE install under TCG for the whole module (it used to be three
modules, each with its own install and its own reboots: test_bridge_uplink,
test_node_without_controller, test_power_remedy).

THE ORDER OF THE TESTS MATTERS: they share the node, and each leaves it as the next one
expects, so that one boot serves several checks:

1. the installer wrote /etc/hostname (and the rest of the node's identity) with mode 0644, so
   the base role has nothing to correct (a fresh node, before any apply);
2. the guests' bridge takes over the NIC (hypervisor_bridge_uplink: auto): the NIC becomes a
   port of br-guests, the node's inventory address and MAC move to the bridge, over the very
   SSH connection of the apply; the second apply changes nothing; the node still reaches the
   controller. Leaves the uplink in place for 3;
3. ONE power cycle (``metalchain power cycle`` against the lab BMC) with no controller
   running (no ``serve``, no dnsmasq) checks both: the node answers SSH with its pinned key
   within its boot time with the static address the inventory gives it (no DHCP lease), AND
   the uplink comes back the same (our networkd files sort before the installer's
   10-metalchain.network, which matches the NIC's MAC, now the bridge's too); an apply then
   changes nothing. Must run before the ``Serve`` of 6-8 starts (it would be a controller);
4. ``hypervisor_bridge_uplink: ""`` gives the NIC its address back (the node stays on);
5. with its BMC process killed, ``provision --force`` fails fast naming the BMC, and the
   node stays ``active`` (``exec`` still works, its pinned key unchanged); ``lab up``
   restarts the BMC. Runs before the ``Serve`` (a provision beside a running serve is not
   what it checks);
6. from here on a ``Serve`` (BMC poller every second + remediation engine) runs in this
   process: the node powered off behind metalchain's back (ipmitool) is healed by the engine
   with exactly one ``power_cycle`` action (a run of kind ``remediation`` holding the node's
   lease), verified by SSH with the pinned key; the poller's own "resolved" does not disturb
   the engine. Nothing in this module calls ``power_cycle_node``. The node is on again;
7. a BMC that stops answering is a ``BmcUnreachable`` incident after two polls, escalated to a
   human at once: no action, the node stays ``active``; ``lab up`` restarts the BMC;
8. with the kill switch on, a node powered off stays off and its incident is ``suppressed``.
   Leaves the node OFF, which 9 wants;
9. a node that is off is reported as unreachable ("no route to host"), never "connection
   refused" (last: nothing after it needs the node on, so it costs no boot).

The shipped hypervisor role installs QEMU and libvirt (minutes under TCG), so 2-4 apply a
site role made of the shipped role's bridge entries only (its recipe entries that mention the
bridge, its templates, files and handlers, unchanged). The detection (power off -> incident in
the store) and recovery (incident -> healed) times are printed (bench/RESULTS.md records
them)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from configure.roles import SHIPPED_ROLES
from inventory.site import Site
from monitor.metrics import build_registry, exposition
from monitor.power import BMC_UNREACHABLE, POWERED_OFF, power_fingerprint
from orchestrate.provisioning import Serve
from provision.sshcheck import ssh_answers_with
from tests.lab.ipmi import ipmitool
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.101.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
NODE = "node1"
NODE_IP = str(ipaddress.ip_network(SUBNET)[11])
HTTP_PORT = 19501
RECEIVER_PORT = 19502
BRIDGE = "br-guests"
ROLE = "guest_bridge"
TCG = ("-e", "hypervisor_require_kvm=false")
# Power-on to SSH of the installed system under TCG: ~17-20 s measured (docs/provision.md),
# 30-40 s on a loaded machine; the limit leaves room for CI load, not for a DHCP retry cycle.
BOOT_LIMIT_S = 120.0
REBOOT_WAIT_S = 240.0       # how long the reboot test waits at all (then BOOT_LIMIT_S is checked)
POLL_S = 1.0
DETECT_LIMIT_S = 10.0       # one poll interval plus a BMC call, with room for CI load
HEAL_LIMIT_S = 300.0        # power on -> SSH with the pinned key under TCG (~30-50 s measured)


def mc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def configure(root: Path) -> None:
    """Our ports (the boot server's, the receiver's) and a 1 s BMC poll."""
    path = root / "metalchain.yml"
    header, body = path.read_text().split("\n", 1)
    doc = yaml.safe_load(body)
    doc["boot"]["http_port"] = HTTP_PORT
    doc["monitor"] = {"bmc_poll_interval": POLL_S, "bmc_poll_timeout": 2,
                      "receiver_port": RECEIVER_PORT}
    path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False))


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
    for sub in ("templates", "files"):     # copies: a role ships only its own files
        shutil.copytree(shipped / sub, dest / sub)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab and its one provisioned node (with the bridge role and its facts)."""
    root = tmp_path_factory.mktemp("lifecycle") / "site"
    try:
        r = mc("lab", "up", "--dir", str(root), "--nodes", "1", "--subnet", SUBNET)
        assert r.returncode == 0, r.stderr
        configure(root)
        r = mc("--site", str(root), "provision", NODE, "--json", timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["nodes"][NODE]["state"] == "active"
        bridge_role(root / "playbooks" / "roles" / ROLE)
        r = mc("--site", str(root), "facts", NODE)
        assert r.returncode == 0, r.stdout + r.stderr
        yield root
    finally:
        mc("lab", "down", "--purge", "--dir", str(root))


@pytest.fixture(scope="module")
def served(lab):
    """A running ``Serve`` (poller + engine) in this process, from the first test that asks
    for it to the end of the module (tests 6-9)."""
    configure(lab)      # again: the `lab up` of test 5 (restarting the BMC) rewrote it
    site = Site.open(lab)
    srv = Serve(site)
    loop = threading.Thread(target=srv.run, name="serve", daemon=True)
    try:
        srv.start()
        loop.start()
        yield lab, site, srv
    finally:
        srv.request_stop()
        if loop.is_alive():
            loop.join(30)
        srv.close()
        site.close()
    assert not loop.is_alive()


# --- the node, over SSH -------------------------------------------------------------------

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


# --- the bridge ---------------------------------------------------------------------------

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


# --- the power watch ----------------------------------------------------------------------

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


# --- 1. identity --------------------------------------------------------------------------

def test_installer_writes_the_node_identity_with_the_modes_the_base_role_wants(lab):
    r = ssh(lab, "stat -c '%a %n' /etc/hostname /etc/hosts /etc/resolv.conf "
                 "/etc/systemd/network/10-metalchain.network")
    assert r.returncode == 0, r.stderr
    modes = dict(reversed(line.split(" ", 1)) for line in r.stdout.splitlines())
    assert modes == {"/etc/hostname": "644", "/etc/hosts": "644", "/etc/resolv.conf": "644",
                     "/etc/systemd/network/10-metalchain.network": "644"}, modes
    assert ssh(lab, "cat /etc/hostname").stdout == f"{NODE}\n"


# --- 2. the uplink ------------------------------------------------------------------------

def test_the_uplink_moves_the_address_to_the_bridge_over_the_apply_connection(lab):
    before = links(lab)
    nic = next(n for n, (_, _, addrs) in before.items() if addrs.startswith(address(lab) + "/"))
    first = apply(lab)
    assert first["rc"] == 0, first
    assert any(f"command:uplink of {BRIDGE}" in c for c in changes(first)), changes(first)
    assert enslaved(lab) == nic
    assert before[nic][0] == links(lab)[BRIDGE][0]
    # The node still reaches the controller, now through the bridge.
    assert "1 received" in on_node(lab, f"ping -c 1 -W 5 {CONTROLLER}")
    second = apply(lab)
    assert second["rc"] == 0 and second["hosts"][NODE]["status"] == "ok", second


# --- 3. one power cycle, two checks -------------------------------------------------------

def test_power_cycled_without_a_controller_it_answers_with_its_static_address_and_the_same_uplink(
        lab):
    nic = enslaved(lab)                   # test 2 left the uplink in place
    # No controller: provision ran its own boot server and stopped it; nothing serves DHCP.
    assert not (lab / "boot" / "serve.json").exists()
    assert dhcp_listeners(lab) == ""
    before = boot_id(lab)
    assert before
    start = time.monotonic()
    r = mc("--site", str(lab), "power", "cycle", NODE)
    assert r.returncode == 0, r.stderr
    # Poll until SSH (pinned key) answers from a new boot, then everything must be as before.
    after = wait_for(lambda: (b := boot_id(lab)) and b != before and b, REBOOT_WAIT_S,
                     f"{NODE} to answer SSH with its pinned key after a power cycle",
                     interval=0.5)
    seconds = time.monotonic() - start
    print(f"power cycle -> SSH with the pinned key: {seconds:.1f} s (boot {after})")
    assert seconds < BOOT_LIMIT_S, f"{seconds:.1f} s from power cycle to SSH"
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
    # The uplink came back the same, and an apply has nothing to do.
    assert enslaved(lab) == nic
    again = apply(lab)
    assert again["rc"] == 0 and again["hosts"][NODE]["status"] == "ok", again


# --- 4. no uplink -------------------------------------------------------------------------

def test_no_uplink_gives_the_nic_its_address_back(lab):
    nic = enslaved(lab)
    released = apply(lab, "-e", "hypervisor_bridge_uplink=")
    assert released["rc"] == 0, released
    state = links(lab)
    assert state[nic][1] == "" and state[nic][2].startswith(address(lab) + "/"), state
    assert state[BRIDGE][2] == "" and state[BRIDGE][0] != state[nic][0], state
    assert on_node(lab, "ls /etc/systemd/network").split() == [
        "10-metalchain.network", f"60-{BRIDGE}.netdev", f"60-{BRIDGE}.network"]
    assert apply(lab, "-e", "hypervisor_bridge_uplink=")["hosts"][NODE]["status"] == "ok"


# --- 5. a dead BMC and provision ----------------------------------------------------------

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


# --- 6-9. the power watch of a running Serve ----------------------------------------------

def test_a_node_powered_off_through_its_bmc_is_healed_by_the_engine_with_one_action(served):
    root, site, srv = served
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


def test_a_silent_bmc_is_escalated_to_a_human_and_nothing_is_power_cycled(served):
    root, site, srv = served
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


def test_with_the_kill_switch_on_a_powered_off_node_stays_off_and_is_suppressed(served):
    root, site, srv = served
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


def test_a_node_that_is_off_is_unreachable_not_refused(served):
    root, site, _ = served
    # The kill switch again, so that nothing powers the node on behind this test's back.
    site.state.set_remediation_setting("paused", True, actor="test")
    try:
        if "Chassis Power is off" not in ipmitool(root, NODE, "chassis", "power", "status"):
            ipmitool(root, NODE, "chassis", "power", "off")    # test 8 did not leave it off
        wait_for(lambda: "Chassis Power is off" in ipmitool(root, NODE, "chassis", "power",
                                                            "status"),
                 30, f"{NODE} to power off", interval=0.5)
        r = mc("--site", str(root), "exec", NODE, "--", "true", timeout=120)
        text = r.stdout + r.stderr
        assert r.returncode != 0, text
        assert "refused" not in text, text
        assert "no route to host" in text or "no answer within" in text, text
    finally:
        site.state.set_remediation_setting("paused", False, actor="test")

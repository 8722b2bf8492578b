"""The monitoring stack on the lab fleet: `monitor up` (promtool/amtool-checked configs),
Prometheus and two clustered Alertmanagers, node_exporter targets autodiscovered from the
inventory (labels, groups, roles), a host leaving the inventory dropped without a restart, a
stopped exporter alerting through the webhook with its bearer token, and `monitor down`
leaving nothing running."""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import os
import secrets
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from monitor.alerts import SHIPPED_ALERTS
from orchestrate.commands.mirror_cmd import mirror
from runtime.pidfile import command_line, process_alive
from tests.lab.fleetsite import fleet_site, invoke, metalchain
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.91.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
HOSTS = ("fleet01", "fleet02")
MIRROR_PORT = 19280
PROM, AM1, AM2, GOSSIP1, GOSSIP2, RECEIVER = 19290, 19291, 19292, 19293, 19294, 19295
PORTS = (PROM, AM1, AM2, GOSSIP1, GOSSIP2)
CACHE = "/var/cache/metalchain/mirror-debs"
PACKAGES = ("sudo", "systemd-timesyncd", "prometheus-node-exporter")
ROLES = ["base", "node_exporter"]
TOKEN = secrets.token_urlsafe(24)
FIGURES: dict[str, float | int | str] = {}


def http_json(url: str, timeout: float = 5) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def cli(site: Path, *args: str, timeout: float = 300):
    return metalchain("--site", str(site), *args, timeout=timeout)


class Sink:
    """A stand-in for metalchain serve's receiver: POST /v1/alerts with the bearer token
    (401 without), GET /metrics (empty, so the "metalchain" job is up)."""

    def __init__(self, address: str, port: int) -> None:
        self.hooks: list[dict] = []
        self.rejected = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(200 if self.path == "/metrics" else 404, b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization") or ""
                if self.path != "/v1/alerts" or not hmac.compare_digest(
                        auth.encode(), f"Bearer {TOKEN}".encode()):
                    with sink.lock:
                        sink.rejected += 1
                    self._answer(401, b"")
                    return
                doc = json.loads(body)
                with sink.lock:
                    sink.hooks.append({"at": time.monotonic(), "from": doc["externalURL"],
                                       "status": doc["status"],
                                       "alerts": [(a["labels"]["alertname"],
                                                   a["labels"].get("host"), a["status"])
                                                  for a in doc["alerts"]],
                                       "labels": [a["labels"] for a in doc["alerts"]]})
                self._answer(200, b"{}")

            def _answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def matching(self, alert: str, host: str, status: str, since: float) -> list[dict]:
        with self.lock:
            return [h for h in self.hooks if h["at"] >= since
                    and (alert, host, status) in h["alerts"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Two fleet hosts with base + node_exporter applied from the site's mirror, the monitor
    settings on ports 192xx (1 s intervals, for: 0s), a webhook token in secrets.yml, and a
    sink on the receiver's port; `monitor down` and the lab teardown also on failure."""
    with fleet_site(tmp_path_factory.mktemp("monitor") / "site", len(HOSTS), SUBNET) as root:
        sink = Sink("127.0.0.1", RECEIVER)
        try:
            _configure(root)
            yield root, sink
        finally:
            try:
                cli(root, "monitor", "down", timeout=120)
            finally:
                sink.stop()


def _configure(root: Path) -> None:
    settings_file = root / "metalchain.yml"
    settings = yaml.safe_load(settings_file.read_text()) if settings_file.exists() else {}
    settings["monitor"] = {"prometheus_port": PROM, "alertmanager_ports": [AM1, AM2],
                           "cluster_ports": [GOSSIP1, GOSSIP2], "scrape_interval": 1,
                           "evaluation_interval": 1, "receiver_address": "127.0.0.1",
                           "receiver_port": RECEIVER}
    settings_file.write_text(yaml.safe_dump(settings))
    secrets_file = root / "secrets.yml"
    values = yaml.safe_load(secrets_file.read_text()) or {}
    secrets_file.write_text(yaml.safe_dump({**values, "monitor_webhook_token": TOKEN}))
    alerts = SHIPPED_ALERTS.read_text().replace("  for: 1m ", "  for: 0s ", 1)
    assert "for: 0s" in alerts
    (root / "playbooks").mkdir(exist_ok=True)
    (root / "playbooks" / "alerts.yml").write_text(alerts)
    inventory = root / "inventory.yml"
    doc = yaml.safe_load(inventory.read_text())
    doc["groups"]["fleet"]["roles"] = ROLES
    doc.setdefault("vars", {})["node_exporter_args"] = "--collector.systemd"
    doc["hosts"]["fleet01"]["labels"] = {"rack": "r1"}
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    start = time.monotonic()
    code, out = invoke(root, mirror, "build", "--packages", ",".join(PACKAGES), "--sign",
                       "--cache-dir", CACHE, "--json")
    assert code == 0, out
    code, out = invoke(root, mirror, "serve", "--address", CONTROLLER, "--port",
                       str(MIRROR_PORT), "--daemon")
    assert code == 0, out
    r = cli(root, "facts", "fleet", "--json")
    assert r.returncode == 0, r.stderr
    role_args = [a for role in ROLES for a in ("--role", role)]
    r = cli(root, "apply", *role_args, "fleet", "--json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    FIGURES["mirror_and_apply_s"] = round(time.monotonic() - start, 1)


def targets(kind: str = "node") -> dict[str, dict]:
    doc = http_json(f"http://127.0.0.1:{PROM}/api/v1/targets?state=active")
    return {t["labels"]["instance"]: t for t in doc["data"]["activeTargets"]
            if t["labels"]["job"] == kind}


def unit_change(root: Path, host: str, verb: str, stamp: str) -> float:
    """``systemctl VERB`` node_exporter on ``host``; when it happened, by the unit's own
    timestamp (the fleet shares this machine's monotonic clock: no time namespace)."""
    r = cli(root, "exec", host, "--json", "--", "sh", "-c",
            f"systemctl {verb} prometheus-node-exporter && systemctl show -p {stamp} "
            "--value prometheus-node-exporter")
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["hosts"][host]["stdout"].strip()) / 1e6


def prometheus_pid(root: Path) -> int:
    return int((root / "monitor" / "run" / "prometheus.pid").read_text())


def test_up_checks_and_starts_the_stack_with_the_token_only_in_its_file(site):
    root, _sink = site
    start = time.monotonic()
    r = cli(root, "monitor", "up", "--json")
    FIGURES["monitor_up_s"] = round(time.monotonic() - start, 2)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["pids"]) == {"prometheus", "alertmanager-1", "alertmanager-2"}
    assert doc["webhook"] == f"http://127.0.0.1:{RECEIVER}/v1/alerts"
    monitor = root / "monitor"
    holding = [p.relative_to(monitor).as_posix() for p in monitor.rglob("*")
               if p.is_file() and not p.is_symlink() and TOKEN.encode() in p.read_bytes()]
    assert holding == ["secrets/webhook-token"]
    for pid in doc["pids"].values():
        argv = command_line(pid)
        assert argv and not any(TOKEN.encode() in a for a in argv)
    # The same checks promtool/amtool ran inside `up`, once more from here.
    r = cli(root, "monitor", "up", "--json")      # again: a reload, the same processes
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pids"] == doc["pids"]


def test_a_broken_alerts_file_is_refused_naming_its_line(site):
    root, _sink = site
    alerts = root / "playbooks" / "alerts.yml"
    good = alerts.read_text()
    rules = root / "monitor" / "rules" / "metalchain.rules.yml"
    passed = rules.read_text()
    try:
        alerts.write_text(good + "  - name: Broken\n    expr: 'up =='\n")
        r = cli(root, "monitor", "up")
        assert r.returncode == 1
        assert rules.read_text() == passed                      # the checked one stays
        assert "Broken" in rules.with_name(rules.name + ".rejected").read_text()
        line = good.count(chr(10)) + 1
        assert f"metalchain.rules.yml: promtool check rejected it (alert Broken, {alerts}:" \
               f"{line}): " in r.stderr and "parse error" in r.stderr, r.stderr
        alerts.write_text(good + "  - name: Broken\n    expr: up\n    for: soon\n")
        r = cli(root, "monitor", "up")
        assert r.returncode == 2 and f"{alerts}:{line + 2}: " in r.stderr, r.stderr
    finally:
        alerts.write_text(good)
    assert cli(root, "monitor", "up").returncode == 0


def test_the_alertmanagers_see_each_other_as_cluster_peers(site):
    def both_peers() -> bool:
        for port in (AM1, AM2):
            peers = http_json(f"http://127.0.0.1:{port}/api/v2/status")["cluster"]["peers"]
            if sorted(p["address"] for p in peers) != [f"127.0.0.1:{GOSSIP1}",
                                                        f"127.0.0.1:{GOSSIP2}"]:
                return False
        return True

    wait_for(both_peers, 30, "both Alertmanagers listing both gossip addresses as peers")


def test_file_sd_targets_are_up_with_the_inventory_labels(site):
    root, _sink = site
    start = time.monotonic()
    up = wait_for(lambda: (t := targets()) and set(t) == set(HOSTS) and all(
        v["health"] == "up" for v in t.values()) and t, 30, "both node_exporters up")
    FIGURES["targets_up_after_s"] = round(time.monotonic() - start, 2)
    labels = up["fleet01"]["labels"]
    assert labels["metalchain_host"] == "fleet01" and labels["rack"] == "r1"
    assert ",fleet," in labels["metalchain_groups"]
    assert labels["metalchain_roles"] == ",base,node_exporter,"
    address = yaml.safe_load((root / "inventory.yml").read_text())["hosts"]["fleet01"][
        "address"]
    assert up["fleet01"]["scrapeUrl"] == f"http://{address}:9100/metrics"
    wait_for(lambda: targets("metalchain").get(f"127.0.0.1:{RECEIVER}", {}).get("health")
             == "up", 30, "metalchain serve's /metrics (the sink) scraped")
    # `monitor status`: all up, nothing firing -> 0.
    r = wait_for(lambda: (r := cli(root, "monitor", "status", "--json")).returncode == 0 and r,
                 30, "monitor status exit 0")
    doc = json.loads(r.stdout)
    assert doc["targets_down"] == 0 and doc["firing"] == 0 and doc["targets_up"] == 3
    assert all(len(am["peers"]) == 2 for am in doc["alertmanagers"])


def test_systemd_unit_states_are_scraped_on_the_fleet(site):
    """node_exporter --collector.systemd works in the fleet's containers (they have D-Bus),
    which is what SystemdUnitFailed reads."""
    def series() -> list:
        doc = http_json(f"http://127.0.0.1:{PROM}/api/v1/query?query="
                        "node_systemd_unit_state%7Bname%3D%22ssh.service%22%2C"
                        "state%3D%22active%22%7D")
        return doc["data"]["result"]

    found = wait_for(series, 30, "node_systemd_unit_state of ssh.service")
    assert {s["metric"]["instance"] for s in found} == set(HOSTS)
    assert all(s["value"][1] == "1" for s in found)


def test_a_failed_unit_fires_systemd_unit_failed_with_its_unit_label(site):
    root, sink = site
    since = time.monotonic()
    r = cli(root, "exec", "fleet01", "--json", "--", "systemd-run", "--unit=mc-broken",
            "--", "/bin/false")
    assert r.returncode == 0, r.stderr
    try:
        hooks = wait_for(lambda: sink.matching("SystemdUnitFailed", "fleet01", "firing",
                                               since), 30, "SystemdUnitFailed for fleet01")
        FIGURES["unit_failed_to_webhook_s"] = round(hooks[0]["at"] - since, 2)
        labels = [lab for h in hooks for lab in h["labels"]
                  if lab["alertname"] == "SystemdUnitFailed"]
        assert {(lab["host"], lab["unit"], lab["severity"]) for lab in labels} == \
            {("fleet01", "mc-broken.service", "critical")}
    finally:
        r = cli(root, "exec", "fleet01", "--json", "--", "systemctl", "reset-failed",
                "mc-broken.service")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: sink.matching("SystemdUnitFailed", "fleet01", "resolved", since), 30,
             "SystemdUnitFailed resolved")


def test_a_stopped_exporter_fires_and_the_webhook_arrives_with_the_token(site):
    root, sink = site
    since = time.monotonic()
    stopped = unit_change(root, "fleet01", "stop", "ActiveExitTimestampMonotonic")
    hooks = wait_for(lambda: sink.matching("ExporterDown", "fleet01", "firing", since), 30,
                     "an ExporterDown webhook for fleet01")
    FIGURES["exporter_stop_to_firing_webhook_s"] = round(hooks[0]["at"] - stopped, 2)
    FIGURES["firing_sender"] = hooks[0]["from"]
    assert sink.rejected == 0
    # Prometheus sent the alert to both replicas; each holds it.
    for port in (AM1, AM2):
        wait_for(lambda port=port: any(
            a["labels"]["alertname"] == "ExporterDown" and a["labels"]["host"] == "fleet01"
            and a["labels"]["severity"] == "critical"
            for a in http_json(f"http://127.0.0.1:{port}/api/v2/alerts")), 10,
            f"ExporterDown in the Alertmanager on :{port}")
    r = cli(root, "monitor", "status", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert [(a["name"], a["host"]) for a in doc["alerts"] if a["state"] == "firing"] == \
        [("ExporterDown", "fleet01")]
    assert doc["targets_down"] == 1
    r = cli(root, "monitor", "status")                  # the same, for a person
    assert r.returncode == 1 and "ExporterDown\tfleet01" in r.stdout, r.stdout
    # Fixed: the resolved notification follows.
    since = time.monotonic()
    started = unit_change(root, "fleet01", "start", "ActiveEnterTimestampMonotonic")
    hooks = wait_for(lambda: sink.matching("ExporterDown", "fleet01", "resolved", since), 30,
                     "the resolved ExporterDown webhook")
    FIGURES["exporter_start_to_resolved_webhook_s"] = round(hooks[0]["at"] - started, 2)


def test_the_other_alertmanager_delivers_when_the_one_that_did_is_gone(site):
    """The replicas share their notification log, so one of them delivered the first alert;
    with that one killed, the next alert reaches the sink through the other: a webhook from
    both. `monitor up` then starts only what is missing."""
    root, sink = site
    urls = {f"http://127.0.0.1:{AM1}": "alertmanager-1", f"http://127.0.0.1:{AM2}":
            "alertmanager-2"}
    first = sink.matching("ExporterDown", "fleet01", "firing", 0)[0]["from"]
    (other,) = set(urls) - {first}
    victim = int((root / "monitor" / "run" / f"{urls[first]}.pid").read_text())
    prom = prometheus_pid(root)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not process_alive(victim), 10, f"{urls[first]} gone")
    since = time.monotonic()
    stopped = unit_change(root, "fleet02", "stop", "ActiveExitTimestampMonotonic")
    hooks = wait_for(lambda: sink.matching("ExporterDown", "fleet02", "firing", since), 60,
                     f"ExporterDown for fleet02 through {urls[other]}")
    FIGURES["failover_stop_to_firing_webhook_s"] = round(hooks[0]["at"] - stopped, 2)
    assert {h["from"] for h in hooks} == {other}
    assert {h["from"] for h in sink.hooks} == set(urls)     # webhooks from both replicas
    unit_change(root, "fleet02", "start", "ActiveEnterTimestampMonotonic")
    r = cli(root, "monitor", "up", "--json")
    assert r.returncode == 0, r.stderr
    pids = json.loads(r.stdout)["pids"]
    assert pids["prometheus"] == prom and pids[urls[first]] != victim
    assert process_alive(pids[urls[first]])


def test_a_host_removed_from_the_inventory_leaves_prometheus_without_a_restart(site):
    root, _sink = site
    pid = prometheus_pid(root)
    inventory = root / "inventory.yml"
    doc = yaml.safe_load(inventory.read_text())
    del doc["hosts"]["fleet02"]
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = cli(root, "monitor", "refresh")
    assert r.returncode == 0, r.stderr
    start = time.monotonic()
    wait_for(lambda: set(targets()) == {"fleet01"}, 30, "fleet02 dropped from the targets")
    FIGURES["removed_host_dropped_s"] = round(time.monotonic() - start, 2)
    assert prometheus_pid(root) == pid and process_alive(pid)


def test_down_leaves_nothing_running_and_frees_the_ports(site):
    root, _sink = site
    pids = [int(p.read_text()) for p in (root / "monitor" / "run").glob("*.pid")]
    assert len(pids) == 3
    start = time.monotonic()
    r = cli(root, "monitor", "down", "--json")
    FIGURES["monitor_down_s"] = round(time.monotonic() - start, 2)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["stopped"]) == ["alertmanager-1", "alertmanager-2",
                                                       "prometheus"]
    assert not [p for p in pids if process_alive(p)]
    for port in PORTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    r = cli(root, "monitor", "status", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["errors"]
    # A port taken by someone else: `up` fails naming it, and leaves nothing running.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", PROM))
        taken.listen()
        r = cli(root, "monitor", "up")
    assert r.returncode == 1 and "prometheus exited at start" in r.stderr, r.stderr
    assert "address already in use" in r.stderr
    assert not list((root / "monitor" / "run").glob("*.pid"))
    for port in (AM1, AM2):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    # After webhooks were sent and everything logged: the token is still in one file only.
    monitor = root / "monitor"
    holding = [p.relative_to(monitor).as_posix() for p in monitor.rglob("*")
               if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert holding == ["secrets/webhook-token"]
    print("\nmonitor stack figures:", json.dumps(FIGURES))

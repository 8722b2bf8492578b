"""Remediation on real fleet hosts with orchestrate's real actions: a stopped exporter is
restarted and verified; a removed package fails the restart and the next step (apply_role
from the site's mirror) heals it without any repeat from Alertmanager. (A SIGKILL in the
middle of an action, with the real `metalchain serve`: tests/lab/test_monitor_chain.py.)

The engine is driven as the receiver drives it (``store.ingest`` then ``on_ingested``); the
site's rules are the shipped ones with no cooldown (the scenarios follow each other on the
same hosts within seconds)."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from inventory.site import Site
from inventory.state.incidents import IncidentInput
from monitor.actions import VerifyCall
from monitor.rules import SHIPPED_RULES
from orchestrate.commands.mirror_cmd import mirror
from orchestrate.remediation import OrchestrateActions, build_remediator
from tests.lab.fleetsite import fleet_site, invoke, metalchain
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.93.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
MIRROR_PORT = 19480
PROMETHEUS_PORT = 19482
CACHE = "/var/cache/metalchain/mirror-debs"
PACKAGES = ("sudo", "systemd-timesyncd", "prometheus-node-exporter")
ROLES = ("base", "node_exporter")
REPO = Path(__file__).resolve().parents[2]
EXPORTER = "prometheus-node-exporter"
TERMINAL = ("healed", "escalated", "suppressed", "dry_run", "resolved", "unmatched")
FIGURES: dict[str, float] = {}


def exec_(site: Path, target: str, script: str) -> dict[str, dict]:
    r = metalchain("--site", str(site), "exec", target, "--json", "--", "sh", "-c", script)
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout)["hosts"]


def stdout_of(site: Path, host: str, script: str) -> str:
    return exec_(site, host, script)[host]["stdout"].strip()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Path]:
    """Two fleet hosts with base + node_exporter applied from the site's signed mirror."""
    with fleet_site(tmp_path_factory.mktemp("remediation") / "site", 2, SUBNET) as root:
        inventory = root / "inventory.yml"
        doc = yaml.safe_load(inventory.read_text())
        doc["groups"]["fleet"]["roles"] = list(ROLES)
        inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
        rules = SHIPPED_RULES.read_text(encoding="utf-8")
        assert "  cooldown: 60 " in rules
        (root / "playbooks").mkdir(exist_ok=True)
        (root / "playbooks" / "remediation.yml").write_text(
            rules.replace("  cooldown: 60 ", "  cooldown: 0  "), encoding="utf-8")
        code, out = invoke(root, mirror, "build", "--packages", ",".join(PACKAGES), "--sign",
                           "--cache-dir", CACHE, "--json")
        assert code == 0, out
        code, out = invoke(root, mirror, "serve", "--address", CONTROLLER, "--port",
                           str(MIRROR_PORT), "--daemon")
        assert code == 0, out
        role_args = [a for r in ROLES for a in ("--role", r)]
        r = metalchain("--site", str(root), "apply", *role_args, "fleet", "--json")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr
        yield root


@contextlib.contextmanager
def engine(root: Path) -> Iterator[tuple[Site, object]]:
    opened = Site.open(root)
    eng = build_remediator(opened)
    eng.start()
    try:
        yield opened, eng
    finally:
        eng.stop(30)
        opened.close()


def alert(host: str, name: str, n: int, **labels: str) -> IncidentInput:
    return IncidentInput(fingerprint=f"{name}-{host}-{n}", starts_at=f"2026-12-01T12:00:{n:02d}Z",
                         status="firing", alertname=name, target=host,
                         labels={"alertname": name, "instance": host, **labels})


def ended(store, incident_id: int, timeout: float) -> object:
    return wait_for(lambda: (inc := store.incident(incident_id)) and inc.state in TERMINAL
                    and inc, timeout, f"incident {incident_id} to end")


def test_a_stopped_exporter_is_restarted_and_verified_healed(site):
    exec_(site, "fleet01", f"systemctl stop {EXPORTER}")
    assert stdout_of(site, "fleet01", f"systemctl is-active {EXPORTER} || true") == "inactive"
    with engine(site) as (opened, eng):
        t0 = time.monotonic()
        got = opened.state.ingest([alert("fleet01", "ExporterDown", 1, job="node")],
                                  "alertmanager")
        eng.on_ingested(got)
        inc = ended(opened.state, got[0].incident_id, 60)
        FIGURES["restart_heal_s"] = round(time.monotonic() - t0, 2)
        acts = opened.state.actions(incident_id=inc.id)
        run = opened.state.get_run(acts[0].run_uid)
    assert inc.state == "healed", opened_timeline(site, inc.id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "ok")]
    assert run is not None and run["kind"] == "remediation"
    assert (site / "runs" / f"{acts[0].run_uid}.jsonl").is_file()
    assert stdout_of(site, "fleet01", f"systemctl is-active {EXPORTER}") == "active"


def opened_timeline(root: Path, incident_id: int) -> list[dict]:
    s = Site.open(root)
    try:
        return s.state.incident_timeline(incident_id)
    finally:
        s.close()


def test_a_removed_package_fails_the_restart_and_apply_role_heals_it(site):
    exec_(site, "fleet02", f"DEBIAN_FRONTEND=noninteractive apt-get remove -y -q {EXPORTER}")
    assert stdout_of(site, "fleet02", f"systemctl is-active {EXPORTER} || true") != "active"
    with engine(site) as (opened, eng):
        t0 = time.monotonic()
        got = opened.state.ingest([alert("fleet02", "ExporterDown", 2, job="node")],
                                  "alertmanager")
        eng.on_ingested(got)
        inc = ended(opened.state, got[0].incident_id, 240)
        FIGURES["apply_role_heal_s"] = round(time.monotonic() - t0, 2)
        acts = opened.state.actions(incident_id=inc.id)
        kinds = [e["kind"] for e in opened.state.incident_timeline(inc.id)]
    assert inc.state == "healed", opened_timeline(site, inc.id)
    assert [(a.action, a.outcome) for a in acts] == [("restart_service", "failed"),
                                                     ("apply_role", "ok")]
    assert inc.deliveries == 1 and kinds.count("received") == 1   # nobody asked twice
    assert kinds.index("step_failed") < kinds.index("healed")
    assert stdout_of(site, "fleet02", f"systemctl is-active {EXPORTER}") == "active"
    print(f"\nremediation lab figures: {FIGURES}")


class _FakePrometheus(http.server.BaseHTTPRequestHandler):
    queries: ClassVar[list[str]] = []
    answers: ClassVar[list[tuple[int, dict]]] = []

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
        self.queries.append(query)
        status, doc = self.answers.pop(0)
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_verifications_ask_ssh_and_prometheus(site):
    opened = Site.open(site)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PROMETHEUS_PORT), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        impl = OrchestrateActions(opened)
        assert impl.host_ssh(VerifyCall("fleet01", {}, {}, 5)).ok
        assert not impl.host_ssh(VerifyCall("nosuch", {}, {}, 5)).ok
        opened.settings.setdefault("monitor", {})["prometheus_port"] = PROMETHEUS_PORT
        series = {"status": "success", "data": {"resultType": "vector", "result": [{}]}}
        empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
        _FakePrometheus.answers[:] = [(200, series), (200, empty), (200, series),
                                      (400, {"status": "error", "error": "bad query"})]
        assert impl.prometheus(VerifyCall("fleet01", {}, {}, 5)).ok
        evil = {"alertname": 'X"} or vector(1) or up{a="'}
        assert impl.prometheus(VerifyCall("fleet01", {"alert_gone": True}, evil, 5)).ok
        assert not impl.prometheus(VerifyCall("fleet01", {"alert_gone": True}, evil, 5)).ok
        refused = impl.prometheus(VerifyCall("fleet01", {"query": "up{"}, {}, 5))
        assert not refused.ok and "refused" in refused.message
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        opened.close()
    assert _FakePrometheus.queries[0] == 'up{instance="fleet01"} == 1'
    assert _FakePrometheus.queries[1] == ('ALERTS{alertname="X\\"} or vector(1) or up{a=\\"",'
                                          'instance="fleet01",alertstate="firing"}')

"""The whole monitoring chain on one lab, for a test module or a benchmark: three fleet hosts
with base + node_exporter (systemd collector, event companion) from the site's signed mirror,
`metalchain monitor up` (Prometheus + two clustered Alertmanagers, 1 s intervals, `for: 0s`)
and `metalchain serve --no-boot` (receiver + remediation engine) as a subprocess.

    with chain_lab(root) as lab:
        lab.exec_("fleet01", "systemctl stop prometheus-node-exporter")
        inc = lab.wait_incident(lambda i: i.target == "fleet01", 30)

Everything is torn down on the way out, also when the body fails: serve (SIGTERM, then
SIGKILL), `monitor down`, the mirror, `lab down --purge`. No pytest in here (bench/ uses it).

The subnet, the number of hosts and the ports are :data:`DEFAULT_NET` unless the caller passes
its own :class:`ChainNet` (a benchmark beside the test suite: ``ChainNet.at(subnet, hosts,
first_port)``).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from inventory.site import Site
from monitor.alerts import SHIPPED_ALERTS
from monitor.rules import SHIPPED_RULES
from tests.lab.fleetsite import fleet_site, metalchain
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

SUBNET = "10.95.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
HOSTS = ("fleet01", "fleet02", "fleet03")
MIRROR_PORT = 19680
PROM, AM1, AM2, GOSSIP1, GOSSIP2, RECEIVER = 19690, 19691, 19692, 19693, 19694, 19695
AM_URLS = (f"http://127.0.0.1:{AM1}", f"http://127.0.0.1:{AM2}")
CACHE = "/var/cache/metalchain/mirror-debs"
PACKAGES = ("sudo", "systemd-timesyncd", "prometheus-node-exporter")
ROLES = ("base", "node_exporter")
EXPORTER = "prometheus-node-exporter"
TERMINAL = ("healed", "escalated", "suppressed", "dry_run", "resolved", "unmatched")


@dataclass(frozen=True)
class ChainNet:
    """Where a chain lab lives: its subnet, its hosts and its ports (mirror, Prometheus, the two
    Alertmanagers, their gossip, the receiver)."""

    subnet: str = SUBNET
    hosts: tuple[str, ...] = HOSTS
    mirror_port: int = MIRROR_PORT
    prometheus_port: int = PROM
    alertmanager_ports: tuple[int, int] = (AM1, AM2)
    cluster_ports: tuple[int, int] = (GOSSIP1, GOSSIP2)
    receiver_port: int = RECEIVER

    @classmethod
    def at(cls, subnet: str, hosts: int, first_port: int) -> ChainNet:
        """``hosts`` fleet hosts (fleet01...) on ``subnet``; the seven ports from
        ``first_port`` on."""
        p = first_port
        return cls(subnet=subnet, hosts=tuple(f"fleet{i:02d}" for i in range(1, hosts + 1)),
                   mirror_port=p, prometheus_port=p + 1, alertmanager_ports=(p + 2, p + 3),
                   cluster_ports=(p + 4, p + 5), receiver_port=p + 6)

    @property
    def controller(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    @property
    def am_urls(self) -> tuple[str, str]:
        a, b = self.alertmanager_ports
        return (f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}")


DEFAULT_NET = ChainNet()


def _secret(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(os.urandom(18)).decode()


def rules_text(*, cooldown: int | None = None) -> str:
    """The shipped remediation rules, with the flap stop out of the way (a test module or a
    benchmark makes dozens of incidents per host within minutes) and optionally another
    cooldown."""
    text = SHIPPED_RULES.read_text(encoding="utf-8")
    for old, new in (("  flap_count: 3 ", "  flap_count: 100000 "),) + (
            (("  cooldown: 60 ", f"  cooldown: {cooldown} "),) if cooldown is not None else ()):
        if old not in text:
            raise RuntimeError(f"the shipped rules changed: no {old.strip()!r} in them")
        text = text.replace(old, new)
    return text


class Serve:
    """``metalchain serve --no-boot`` of the site, in its own process group."""

    def __init__(self, root: Path, net: ChainNet = DEFAULT_NET) -> None:
        self.root = root
        self.net = net
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve-chain.log"

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [METALCHAIN, "--site", str(self.root), "-v", "serve", "--no-boot"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, timeout, f"serve's receiver answering /healthz ({self.log})")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}: "
                                 f"{self.log.read_text(errors='replace')[-2000:]}")
        try:
            return http_get(f"http://{self.net.controller}:{self.net.receiver_port}"
                            "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """``sig`` to the process group; SIGKILL if it is still there after ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post(url: str, body: bytes, token: str, timeout: float = 15) -> tuple[int, dict]:
    """POST JSON with ``Authorization: Bearer TOKEN``: (status, the answer's JSON or {})."""
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def notification(host: str, alertname: str, fingerprint: str, starts: str, *,
                 sender: str = AM_URLS[0], status: str = "firing", **labels: str) -> dict:
    """An Alertmanager v4 notification with one alert, labelled as `monitor up`'s alerts
    are (``host``, ``instance``, ``severity`` and ``labels``)."""
    alert = {"status": status,
             "labels": {"alertname": alertname, "host": host, "instance": host,
                        "severity": "critical", **labels},
             "annotations": {"summary": f"{alertname} on {host}"}, "startsAt": starts,
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fingerprint}
    return {"version": "4", "groupKey": f"{{}}:{{alertname=\"{alertname}\"}}",
            "truncatedAlerts": 0, "status": status, "receiver": "metalchain",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": sender, "alerts": [alert]}


class ChainLab:
    """The lab's site and its serve; helpers to act on hosts and read the store."""

    def __init__(self, root: Path, webhook_token: str, event_key: str,
                 net: ChainNet = DEFAULT_NET) -> None:
        self.root = root
        self.net = net
        self.webhook_token = webhook_token
        self.event_key = event_key
        self.serve = Serve(root, net)
        self._site: Site | None = None
        self.retried_503 = 0

    # -- the CLI and the hosts ---------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return metalchain("--site", str(self.root), *args, timeout=timeout)

    def exec_(self, host: str, script: str, timeout: float = 120) -> str:
        """Run ``script`` with sh on ``host`` as root; its stdout (a non-zero exit fails)."""
        r = self.cli("exec", host, "--json", "--", "sh", "-c", script, timeout=timeout)
        if not r.stdout.strip():
            raise AssertionError(f"exec on {host} said nothing: {r.stderr[-2000:]}")
        doc = json.loads(r.stdout)["hosts"][host]
        if doc["exit_code"] != 0:
            raise AssertionError(f"exec on {host} failed: {doc}")
        return str(doc["stdout"] or "").strip()

    def address(self, host: str) -> str:
        if self._site is None:
            self._site = Site.open(self.root)
        return str(self._site.inventory.hosts[host].address)

    def fault(self, host: str, script: str) -> float:
        """Run the fault ``script`` on ``host``; the host's own clock (``date +%s.%N``, the
        same kernel clock as the controller's) just before it ran."""
        out = self.exec_(host, f"t=$(date +%s.%N); {script}\necho \"$t\"")
        return float(out.splitlines()[-1])

    def install_unit(self, host: str, name: str, text: str, *, start: bool = False) -> None:
        self.exec_(host, f"cat > /etc/systemd/system/{name} <<'EOF'\n{text}EOF\n"
                         f"systemctl daemon-reload && systemctl reset-failed {name} 2>/dev/null"
                         f"; {'systemctl restart ' + name if start else 'true'}")

    # -- the receiver --------------------------------------------------------------------------

    def post_alerts(self, doc: dict) -> tuple[int, dict]:
        return post(f"http://{self.net.controller}:{self.net.receiver_port}/v1/alerts",
                    json.dumps(doc).encode(), self.webhook_token)

    def post_many(self, docs: list[dict], workers: int = 100) -> list[tuple[int, dict]]:
        """``docs`` posted at once, one connection each, as Alertmanager delivers: a 503 (more
        connections from this address than the receiver's per-client cap, 64, when the
        machine is too busy to answer the first ones in time; the server may close before the
        body is sent: a broken pipe) is sent again after a short pause, as Alertmanager
        retries a 5xx or a failed connection. ``self.retried_503`` counts them."""

        def deliver(doc: dict) -> tuple[int, dict, int]:
            status, answer = 0, {}
            for attempt in range(20):
                try:
                    status, answer = self.post_alerts(doc)
                except (urllib.error.URLError, ConnectionError) as exc:
                    status, answer = 0, {"error": str(exc)}
                if status not in (0, 503):
                    return status, answer, attempt
                time.sleep(0.1 * (attempt + 1))
            return status, answer, 20

        with concurrent.futures.ThreadPoolExecutor(min(workers, len(docs))) as pool:
            delivered = list(pool.map(deliver, docs))
        self.retried_503 = sum(resent for _s, _a, resent in delivered)
        return [(status, answer) for status, answer, _r in delivered]

    # -- the state store -----------------------------------------------------------------------

    @property
    def store(self) -> Any:
        if self._site is None:
            self._site = Site.open(self.root)
        return self._site.state

    def incidents(self, pred: Callable[[Any], bool]) -> list[Any]:
        return [i for i in self.store.list_incidents(limit=100_000) if pred(i)]

    def wait_incident(self, pred: Callable[[Any], bool], timeout: float,
                      what: str = "the incident") -> Any:
        return wait_for(lambda: (found := self.incidents(pred)) and found[0], timeout, what)

    def wait_ended(self, incident_id: int, timeout: float) -> Any:
        return wait_for(lambda: (inc := self.store.incident(incident_id)) is not None
                        and inc.state in TERMINAL and inc, timeout,
                        f"incident {incident_id} to end ({self.serve.log})")

    def event_time(self, incident_id: int, kind: str) -> float | None:
        return next((e["at"] for e in self.store.incident_timeline(incident_id)
                     if e["kind"] == kind), None)

    def breakdown(self, incident_id: int, fault: float) -> dict[str, float]:
        """Fault -> healed and its parts, in seconds, from the incident and its timeline:
        ``detect`` fault -> the incident's startsAt (Prometheus's firing evaluation, or the
        failure time systemd gave the pushed event), ``deliver`` -> received (Alertmanager
        and the webhook, or the push; committed in the store), ``to_action`` -> the action's
        start (engine: match, guards), ``action`` its run, ``verify`` the verification,
        ``rest`` the remainder (store writes between them)."""
        inc = self.store.incident(incident_id)
        timeline = self.store.incident_timeline(incident_id)
        at = {}
        for e in timeline:
            at.setdefault(e["kind"], e)
        healed = at["healed"]["at"]
        received = at["received"]["at"]
        out = {"fault_to_healed": healed - fault}
        try:
            starts = datetime.fromisoformat(inc.starts_at.replace("Z", "+00:00")).timestamp()
        except ValueError:
            out["detect"] = received - fault
        else:
            out["detect"], out["deliver"] = starts - fault, received - starts
        if "action_started" in at and "action_finished" in at:
            out["to_action"] = at["action_started"]["at"] - at["received"]["at"]
            out["action"] = at["action_finished"]["at"] - at["action_started"]["at"]
        verified = at.get("verified")
        if verified is not None:
            out["verify"] = float(verified["detail"]["seconds"])
        out["rest"] = out["fault_to_healed"] - sum(out.get(k, 0.0) for k in (
            "detect", "deliver", "to_action", "action", "verify"))
        return {k: round(v, 3) for k, v in out.items()}

    def close_store(self) -> None:
        if self._site is not None:
            self._site.close()
            self._site = None


def _configure(root: Path, webhook_token: str, event_key: str, net: ChainNet) -> None:
    settings_file = root / "metalchain.yml"
    settings = (yaml.safe_load(settings_file.read_text()) if settings_file.exists() else
                None) or {}
    settings["monitor"] = {"prometheus_port": net.prometheus_port,
                           "alertmanager_ports": list(net.alertmanager_ports),
                           "cluster_ports": list(net.cluster_ports), "scrape_interval": 1,
                           "evaluation_interval": 1, "receiver_address": net.controller,
                           "receiver_port": net.receiver_port}
    settings_file.write_text(yaml.safe_dump(settings))
    secrets_file = root / "secrets.yml"
    values = (yaml.safe_load(secrets_file.read_text()) if secrets_file.exists() else None) or {}
    values.update(monitor_webhook_token=webhook_token, monitor_event_key=event_key)
    secrets_file.write_text(yaml.safe_dump(values))
    secrets_file.chmod(0o600)
    (root / "playbooks").mkdir(exist_ok=True)
    alerts = SHIPPED_ALERTS.read_text(encoding="utf-8").replace("  for: 1m ", "  for: 0s ", 1)
    if "  for: 0s " not in alerts:
        raise RuntimeError("the shipped alerts changed: no 'for: 1m' default in them")
    (root / "playbooks" / "alerts.yml").write_text(alerts, encoding="utf-8")
    (root / "playbooks" / "remediation.yml").write_text(rules_text(), encoding="utf-8")
    inventory = root / "inventory.yml"
    doc = yaml.safe_load(inventory.read_text())
    doc["groups"]["fleet"]["roles"] = list(ROLES)
    doc.setdefault("vars", {})["node_exporter_args"] = "--collector.systemd"
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))


def _must(r: subprocess.CompletedProcess[str], what: str) -> None:
    if r.returncode != 0:
        raise AssertionError(f"{what} failed ({r.returncode}): {r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")


def node_targets_up(net: ChainNet = DEFAULT_NET) -> bool:
    status, body = http_get(f"http://127.0.0.1:{net.prometheus_port}/api/v1/targets"
                            "?state=active")
    if status != 200:
        return False
    up = {t["labels"]["instance"] for t in json.loads(body)["data"]["activeTargets"]
          if t["labels"].get("job") == "node" and t["health"] == "up"}
    return up == set(net.hosts)


@contextlib.contextmanager
def chain_lab(root: Path, figures: dict[str, Any] | None = None,
              net: ChainNet = DEFAULT_NET) -> Iterator[ChainLab]:
    """The lab at ``root`` on ``net`` (see the module docstring); ``figures`` gets its set-up
    times."""
    figures = figures if figures is not None else {}
    webhook_token, event_key = _secret("webhook-"), _secret("event-key-")
    with fleet_site(root, len(net.hosts), net.subnet) as site:
        lab = ChainLab(site, webhook_token, event_key, net)
        try:
            t0 = time.monotonic()
            _configure(site, webhook_token, event_key, net)
            _must(lab.cli("mirror", "build", "--packages", ",".join(PACKAGES), "--sign",
                          "--cache-dir", CACHE, "--json", timeout=600), "mirror build")
            _must(lab.cli("mirror", "serve", "--address", net.controller, "--port",
                          str(net.mirror_port), "--daemon"), "mirror serve")
            role_args = [a for r in ROLES for a in ("--role", r)]
            _must(lab.cli("apply", *role_args, "fleet", "--json", timeout=600), "apply")
            figures["mirror_and_apply_s"] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            _must(lab.cli("monitor", "up", "--json"), "monitor up")
            lab.serve.start()
            wait_for(lambda: node_targets_up(net), 60,
                     "Prometheus scraping every fleet host's exporter")
            figures["monitor_up_serve_targets_s"] = round(time.monotonic() - t0, 1)
            yield lab
        finally:
            try:
                lab.close_store()
                lab.serve.stop(signal.SIGTERM)
            finally:
                lab.cli("monitor", "down", timeout=120)

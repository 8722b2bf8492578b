"""Fault -> healed latency of remediation, median and p95 over many trials.

Paths:
  engine    (as root; a lab of fleet hosts) the fault is a stopped prometheus-node-exporter;
            the incident is ingested at once, as the receiver would the moment it hears of it,
            and the engine restarts the unit through orchestrate's runner and verifies it over
            SSH. Measures what remediation itself costs on top of detection: fault -> healed,
            and inside it the action's run and the verification.
  overhead  (no lab) the engine alone with instant fake actions and verifiers over a real
            state store: what the engine adds (store writes, guards, queueing), in ms.

  pushed    (as root; the whole chain of tests/lab/chainsite.py: 3 fleet hosts, `monitor up`,
            `metalchain serve --no-boot`) the fault is a `kill -9` of a test service's main
            process; the host's OnFailure companion posts the failure to /v1/events and the
            engine restarts the unit.
  prometheus (the same lab) the fault is a stopped prometheus-node-exporter: Prometheus
            (1 s scrape and evaluation, `for: 0s`) -> the two Alertmanagers -> the webhook ->
            the same engine.
  For both: fault time = the host's own clock (`date +%s.%N`, the kernel clock the controller
  shares) just before the fault command; healed = the incident's `healed` event in the store.
  Breakdown from the incident's timeline: detect (fault -> committed in the store), to_action
  (-> the action's start), action (its run), verify, rest.

Usage (from the repository):
    .venv/bin/python bench/heal_latency.py --path overhead --trials 200
    flock /tmp/metalchain-lab.lock .venv/bin/python bench/heal_latency.py --path engine \\
        --trials 20 [--json FILE]
    flock /tmp/metalchain-lab.lock .venv/bin/python bench/heal_latency.py --path pushed \\
        --path prometheus --trials 20 [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from harness import METALCHAIN, BenchError, must, report, run

from inventory.site import Site
from inventory.state import StateStore
from inventory.state.incidents import IncidentInput
from monitor.actions import (
    ActionResult,
    Actions,
    Verifiers,
    VerifyResult,
)
from monitor.engine import Remediator
from monitor.guards import Policy
from monitor.rules import SHIPPED_RULES, RuleSet, load_rules

LONG = 1800
SUBNET = "10.93.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
MIRROR_PORT = 19481
PACKAGES = "sudo,systemd-timesyncd,prometheus-node-exporter"
EXPORTER = "prometheus-node-exporter"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: list[float], unit: str = "s", digits: int = 3) -> dict[str, Any]:
    return {f"median_{unit}": round(statistics.median(values), digits),
            f"p95_{unit}": round(percentile(values, 95), digits),
            f"max_{unit}": round(max(values), digits), "n": len(values)}


def _alert(host: str, n: int) -> IncidentInput:
    return IncidentInput(fingerprint=f"bench-{host}-{n}", starts_at=f"bench-{time.time()}-{n}",
                         status="firing", alertname="ExporterDown", target=host,
                         labels={"alertname": "ExporterDown", "job": "node", "instance": host})


class _Ended:
    """Wakes whoever waits for an incident to end (the engine's observer hook)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0

    def __call__(self, kind: str, _detail: Any) -> None:
        if kind == "ended":
            with self.cond:
                self.count += 1
                self.cond.notify_all()

    def wait_past(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.count > count, timeout)


def overhead(trials: int) -> dict[str, Any]:
    rules = load_rules(SHIPPED_RULES)
    rules = RuleSet(Policy(cooldown=0, flap_count=10**6, rate_count=10**6), rules.rules)
    actions, verifiers = Actions(), Verifiers()
    actions.register("restart_service", lambda call: ActionResult(True, "ok"))
    verifiers.register("service_active", lambda call: VerifyResult(True, "active"))
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore.open_file(Path(tmp) / "state.db")
        engine = Remediator(store, rules, actions, verifiers)
        ended = _Ended()
        engine.observers.append(ended)
        engine.start()
        took: list[float] = []
        try:
            for n in range(trials):
                got = store.ingest([_alert(f"h{n % 50}", n)], "alertmanager")
                t0 = time.perf_counter()
                before = ended.count
                engine.on_ingested(got)
                if not ended.wait_past(before, 10):
                    raise BenchError(f"trial {n}: the incident did not end within 10 s")
                took.append((time.perf_counter() - t0) * 1000)
                if store.incident(got[0].incident_id).state != "healed":
                    raise BenchError(f"trial {n}: {store.incident(got[0].incident_id)}")
        finally:
            engine.stop(10)
            store.close()
    return {"path": "overhead", "on_ingested_to_healed": summary(took, "ms", 2)}


def _lab(site: Path, hosts: int) -> None:
    must([METALCHAIN, "lab", "up", "--dir", str(site), "--nodes", "0", "--fleet", str(hosts),
          "--subnet", SUBNET], LONG)
    must([METALCHAIN, "--site", str(site), "mirror", "build", "--packages", PACKAGES,
          "--sign", "--cache-dir", "/var/cache/metalchain/mirror-debs"], LONG)
    must([METALCHAIN, "--site", str(site), "mirror", "serve", "--daemon", "--address",
          CONTROLLER, "--port", str(MIRROR_PORT)], LONG)
    must([METALCHAIN, "--site", str(site), "apply", "--role", "base", "--role",
          "node_exporter", "fleet"], LONG)
    (site / "playbooks").mkdir(exist_ok=True)
    text = SHIPPED_RULES.read_text(encoding="utf-8")
    text = text.replace("  cooldown: 60 ", "  cooldown: 0  ").replace(
        "  flap_count: 3 ", "  flap_count: 100000 ")
    (site / "playbooks" / "remediation.yml").write_text(text, encoding="utf-8")


def engine_path(site: Path, trials: int) -> dict[str, Any]:
    from orchestrate.actions import exec_command
    from orchestrate.remediation import build_remediator

    opened = Site.open(site)
    engine = build_remediator(opened)
    ended = _Ended()
    engine.observers.append(ended)
    engine.start()
    heal, action_s, verify_s, engine_s = [], [], [], []
    hosts = sorted(opened.inventory.hosts)
    try:
        for n in range(trials):
            host = hosts[n % len(hosts)]
            report_ = exec_command(opened, host, ["systemctl", "stop", "--", EXPORTER],
                                   timeout=30, become=True)
            if report_.exit_code != 0:
                raise BenchError(f"trial {n}: could not stop {EXPORTER} on {host}")
            t_fault = time.perf_counter()
            before = ended.count
            got = opened.state.ingest([_alert(host, n)], "alertmanager")
            engine.on_ingested(got)
            if not ended.wait_past(before, 120):
                raise BenchError(f"trial {n}: not healed within 120 s")
            heal.append(time.perf_counter() - t_fault)
            inc = opened.state.incident(got[0].incident_id)
            timeline = opened.state.incident_timeline(inc.id)
            if inc.state != "healed":
                why = [e["detail"] for e in timeline
                       if e["kind"] in ("step_failed", "action_finished", "verify_failed")]
                raise BenchError(f"trial {n} on {host}: ended {inc.state}: {why}")
            action_s += [e["detail"]["seconds"] for e in timeline
                         if e["kind"] == "action_finished"]
            verify_s += [e["detail"]["seconds"] for e in timeline if e["kind"] == "verified"]
            engine_s.append(timeline[-1]["at"] - timeline[0]["at"] - action_s[-1]
                            - verify_s[-1])
    finally:
        engine.stop(30)
        opened.close()
    return {"path": "engine", "hosts": len(hosts), "fault_to_healed": summary(heal),
            "action_run": summary(action_s), "verification": summary(verify_s),
            "engine_rest": summary(engine_s)}


#: The chain paths' cooldown: long enough that the same failure seen by the other path (a
#: pushed kill also fails the unit in Prometheus's eyes) is verified instead of acted on
#: again, short enough for the next trial on the host (trials wait for it to pass).
CHAIN_COOLDOWN = 5
VICTIM = "mc-bench-victim.service"
VICTIM_UNIT = """\
[Unit]
Description=metalchain heal_latency: a service the benchmark kills
[Service]
ExecStart=/bin/sleep infinity
"""


def chain_paths(paths: list[str], trials: int, keep: bool) -> dict[str, Any]:
    """The pushed and/or Prometheus paths on one chain lab (tests/lab/chainsite.py)."""
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from tests.lab import chainsite

    root = Path(tempfile.mkdtemp(prefix="mc-heal-chain-")) / "lab"
    setup: dict[str, Any] = {}
    out: dict[str, Any] = {"hosts": len(chainsite.HOSTS), "cooldown_s": CHAIN_COOLDOWN,
                           "setup": setup}
    try:
        with chainsite.chain_lab(root, setup) as lab:
            (root / "playbooks" / "remediation.yml").write_text(
                chainsite.rules_text(cooldown=CHAIN_COOLDOWN), encoding="utf-8")
            lab.serve.stop()
            lab.serve.start()
            for path in paths:
                out[path] = _chain_trials(lab, chainsite, path, trials)
            if keep:
                print(f"heal_latency: --keep has no effect on the chain lab ({root})",
                      file=sys.stderr)
    except AssertionError as exc:
        raise BenchError(f"the chain lab failed: {exc}") from None
    return out


def _chain_trials(lab: Any, chainsite: Any, path: str, trials: int) -> dict[str, Any]:
    hosts = chainsite.HOSTS
    if path == "pushed":
        for host in hosts:
            lab.install_unit(host, VICTIM, VICTIM_UNIT, start=True)
    parts: dict[str, list[float]] = {}
    extra_actions = 0
    for n in range(trials):
        host = hosts[n % len(hosts)]
        _cooled(lab, host)
        if path == "pushed":
            pid = lab.exec_(host, f"systemctl show -P MainPID {VICTIM}")
            if not pid.isdigit() or pid == "0":
                raise BenchError(f"trial {n}: {VICTIM} not running on {host} ({pid!r})")
            fault = lab.fault(host, f"kill -9 {pid}")
            inc = lab.wait_incident(lambda i, h=host, f=fault: i.target == h
                                    and i.source == "event" and i.labels.get("unit") == VICTIM
                                    and i.created_at >= f, 30, f"trial {n}: the pushed event")
        else:
            fault = lab.fault(host, f"systemctl stop {chainsite.EXPORTER}")
            inc = lab.wait_incident(lambda i, h=host, f=fault: i.target == h
                                    and i.alertname == "ExporterDown" and i.created_at >= f,
                                    30, f"trial {n}: ExporterDown in the store")
        ended = lab.wait_ended(inc.id, 60)
        if ended.state != "healed":
            raise BenchError(f"trial {n} on {host}: ended {ended.state}: "
                             f"{lab.store.incident_timeline(inc.id)}")
        for key, value in lab.breakdown(inc.id, fault).items():
            parts.setdefault(key, []).append(value)
        if path == "prometheus":
            # The next stop on this host must start a new alert: this one resolved first.
            with contextlib.suppress(AssertionError):
                lab_wait(lambda i=inc.id: lab.store.incident(i).alert_status == "resolved",
                         30, f"trial {n}: its alert resolved")
    for inc in lab.incidents(lambda i: i.source == "alertmanager"):
        acts = lab.store.actions(incident_id=inc.id)
        if path == "pushed" and inc.labels.get("unit") == VICTIM and acts:
            extra_actions += len(acts)
    doc = {key: summary(values) for key, values in parts.items()}
    if path == "pushed":
        doc["prometheus_alerts_for_the_same_failures"] = len(lab.incidents(
            lambda i: i.source == "alertmanager" and i.labels.get("unit") == VICTIM))
        doc["actions_from_those_alerts"] = extra_actions
    return doc


def lab_wait(pred: Any, timeout: float, what: str) -> Any:
    from tests.waiting import wait_for

    return wait_for(pred, timeout, what)


def _cooled(lab: Any, host: str) -> None:
    """Until the host's last action ended at least the cooldown (+1 s) ago."""
    deadline = time.monotonic() + 60
    while True:
        ends = [a.ended_at or time.time() for a in lab.store.actions(since=0)
                if a.target == host]
        left = (max(ends) + CHAIN_COOLDOWN + 1 - time.time()) if ends else 0
        if left <= 0:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{host}: an action still running after 60 s")
        time.sleep(min(left, 1.0))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", choices=("engine", "overhead", "pushed", "prometheus"),
                    action="append", help="Repeatable (pushed and prometheus share one lab).")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="Leave the lab up.")
    ap.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = ap.parse_args()
    figures: dict[str, Any] = {"trials": args.trials}
    paths = args.path or ["engine"]
    chain = [p for p in paths if p in ("pushed", "prometheus")]
    if chain and len(chain) != len(paths):
        ap.error("--path pushed/prometheus cannot be combined with engine or overhead")
    if len(paths) > 1 and not chain:
        ap.error("one --path at a time for engine and overhead")
    try:
        if chain:
            figures.update(chain_paths(chain, args.trials, args.keep))
            report(figures, args.json)
            return 0
        if paths[0] == "overhead":
            figures.update(overhead(args.trials))
            report(figures, args.json)
            return 0
        site = Path(tempfile.mkdtemp(prefix="mc-heal-")) / "lab"
        try:
            _lab(site, args.hosts)
            figures.update(engine_path(site, args.trials))
        finally:
            if not args.keep:
                for argv, timeout in (([METALCHAIN, "--site", str(site), "mirror", "stop"], 60),
                                      ([METALCHAIN, "lab", "down", "--purge", "--dir",
                                        str(site)], 600)):
                    try:
                        run(argv, timeout)
                    except BenchError as exc:
                        print(f"heal_latency: {exc}", file=sys.stderr)
    except BenchError as exc:
        print(f"heal_latency: {exc}", file=sys.stderr)
        return 1
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

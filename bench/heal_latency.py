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
  prometheus (the same lab) Prometheus -> the two Alertmanagers -> the webhook -> the same
            engine, under each `--intervals` setting: `lab` (1 s scrape and evaluation,
            `for: 0s`, group_wait 0s, group_interval 1s), `metalchain` (what metalchain ships:
            monitor/settings.py's 15 s intervals, alerts.yml's `for: 1m`, group_wait 0s,
            group_interval = the evaluation interval) and `stock` (stock Prometheus and
            Alertmanager: 1 min scrape and evaluation, group_wait 30s, group_interval 5m; the
            same rules, so `for: 1m`). The fault (`--prom-fault`): `unit` (default) kills a
            unit of the trial's own (OnFailure companion masked: only Prometheus finds it,
            as SystemdUnitFailed), at a random moment within a window of ~0.75 evaluation
            intervals per trial, so trials overlap -- with one alert per host, each trial
            would have to wait for the last one's resolved notification (up to
            group_interval: 5 min with stock settings), or Alertmanager's notification log
            would hold the next firing of the same alert back for repeat_interval;
            `exporter` stops prometheus-node-exporter (ExporterDown), one trial at a time.
            The guards that space actions out (cooldown, fleet cap, rate) are lifted for
            overlapping trials: they are not what the intervals are measured for.
  For both: fault time = the host's own clock (`date +%s.%N`, the kernel clock the controller
  shares) just before the fault command; healed = the incident's `healed` event in the store.
  Breakdown from the incident and its timeline: detect (fault -> its firing / failure time),
  deliver (-> committed in the store), to_action (-> the action's start), action (its run),
  verify, rest.

Usage (from the repository):
    .venv/bin/python bench/heal_latency.py --path overhead --trials 200
    flock /tmp/metalchain-lab.lock .venv/bin/python bench/heal_latency.py --path engine \\
        --trials 20 [--json FILE]
    nice -n 19 .venv/bin/python bench/heal_latency.py --path pushed --path prometheus \\
        --intervals lab --intervals metalchain --intervals stock --trials 20 --hosts 2 \\
        --ingest 3 --setup-lock /tmp/metalchain-light.lock --json FILE.json --plot FILE.png
    .venv/bin/python bench/heal_latency.py --plot-from FILE.json --plot FILE.png

The chain lab runs on 10.141.0.0/24, ports 23000-23006 (the receiver's ingest run: 23010).
``--ingest S`` also runs bench/ingest.py (its own loopback site) for S s per level; ``--plot``
draws bench/heal_plot.py's figure with matplotlib in a venv of its own under /tmp.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import math
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
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
from monitor.alerts import (
    SHIPPED_ALERTS,
    duration_seconds,
    load_alerts_file,
    prometheus_duration,
)
from monitor.engine import Remediator
from monitor.guards import Policy
from monitor.rules import SHIPPED_RULES, RuleSet, load_rules
from monitor.settings import MonitorSettings

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
#: Where the chain lab of this benchmark lives: its own subnet and ports, beside the test
#: suite's chain lab (tests/lab/chainsite.py's defaults) and other benchmarks.
CHAIN_SUBNET = "10.141.0.0/24"
CHAIN_FIRST_PORT = 23000      # mirror, Prometheus, 2 Alertmanagers, 2 gossip, the receiver
INGEST_PORT = 23010
PLOT_VENV = Path("/tmp/mc-bench-plot-venv")
SETUP_LOCK_WAIT = 60.0
#: A victim of the Prometheus path (``--prom-fault unit``) reports nothing itself: the
#: OnFailure companion every service gets (node_exporter role, service.d drop-in) is masked
#: by a drop-in of the same name, so only Prometheus (SystemdUnitFailed) finds it failed.
QUIET_DROPIN = "[Unit]\nOnFailure=\n"


@dataclasses.dataclass(frozen=True)
class Intervals:
    """One monitoring setting: Prometheus's scrape and evaluation intervals (s), the alert
    rules' default ``for:``, Alertmanager's group_wait / group_interval / repeat_interval."""

    name: str
    scrape: float
    evaluation: float
    for_: str
    group_wait: str
    group_interval: str
    repeat_interval: str

    def worst_case(self) -> float:
        """An upper bound of fault -> firing webhook (s): a scrape, an evaluation, for:, a
        second evaluation, group_wait."""
        return (self.scrape + 2 * self.evaluation + duration_seconds(self.for_)
                + duration_seconds(self.group_wait))


def interval_settings() -> dict[str, Intervals]:
    """``lab`` (the chain lab's 1 s), ``metalchain`` (what metalchain ships: read from
    monitor/settings.py's defaults, playbooks/alerts.yml and monitor/stack.py's route) and
    ``stock`` (stock Prometheus and Alertmanager: 1m scrape and evaluation, group_wait 30s,
    group_interval 5m; the same alert rules, so the same ``for: 1m``)."""
    shipped = load_alerts_file(SHIPPED_ALERTS)
    defaults = MonitorSettings(dir=Path("/nonexistent"))   # only its default intervals
    fors = {a.for_ for a in shipped.alerts if a.name in ("SystemdUnitFailed", "ExporterDown")}
    if len(fors) != 1:
        raise BenchError(f"the shipped alerts' for: differ between the two faults: {fors}")
    (rule_for,) = fors
    notes = shipped.notifications
    return {
        "lab": Intervals("lab", 1, 1, "0s", "0s", "1s", notes.repeat_interval),
        "metalchain": Intervals(
            "metalchain", defaults.scrape_interval, defaults.evaluation_interval, rule_for,
            notes.group_wait,
            notes.group_interval or prometheus_duration(max(defaults.evaluation_interval, 1)),
            notes.repeat_interval),
        "stock": Intervals("stock", 60, 60, rule_for, "30s", "5m", notes.repeat_interval),
    }


def apply_intervals(lab: Any, setting: Intervals) -> dict[str, Any]:
    """Write ``setting`` into the site (metalchain.yml, playbooks/alerts.yml), `monitor up`
    (reloads the running stack), restart serve, and read back what Prometheus and an
    Alertmanager now run with."""
    settings_file = lab.root / "metalchain.yml"
    doc = yaml.safe_load(settings_file.read_text(encoding="utf-8")) or {}
    doc["monitor"].update(scrape_interval=setting.scrape, evaluation_interval=setting.evaluation)
    settings_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    alerts = yaml.safe_load(SHIPPED_ALERTS.read_text(encoding="utf-8"))
    alerts["defaults"]["for"] = setting.for_
    alerts["notifications"] = {"group_wait": setting.group_wait,
                               "group_interval": setting.group_interval,
                               "repeat_interval": setting.repeat_interval}
    (lab.root / "playbooks" / "alerts.yml").write_text(
        yaml.safe_dump(alerts, sort_keys=False), encoding="utf-8")
    r = lab.cli("monitor", "up", "--json", timeout=120)
    if r.returncode != 0:
        raise BenchError(f"monitor up ({setting.name}) failed: {r.stderr[-2000:]}")
    lab.serve.stop()
    lab.serve.start()
    net = lab.net
    from tests.lab.chainsite import http_get

    status, body = http_get(f"http://127.0.0.1:{net.prometheus_port}/api/v1/status/config",
                            timeout=10)
    prom = yaml.safe_load(json.loads(body)["data"]["yaml"])["global"] if status == 200 else {}
    status, body = http_get(f"{net.am_urls[0]}/api/v2/status", timeout=10)
    route = (yaml.safe_load(json.loads(body)["config"]["original"])["route"]
             if status == 200 else {})
    running = {"scrape_interval": prom.get("scrape_interval"),
               "evaluation_interval": prom.get("evaluation_interval"),
               "for": setting.for_, "group_wait": route.get("group_wait"),
               "group_interval": route.get("group_interval"),
               "repeat_interval": route.get("repeat_interval")}
    want = {"scrape_interval": prometheus_duration(setting.scrape),
            "evaluation_interval": prometheus_duration(setting.evaluation),
            "group_wait": setting.group_wait, "group_interval": setting.group_interval}
    for key, value in want.items():
        if duration_seconds(str(running[key] or "")) != duration_seconds(value):
            raise BenchError(f"{setting.name}: the running stack has {key} {running[key]!r}, "
                             f"not {value}")
    return running


@contextlib.contextmanager
def setup_lock(path: Path | None, wait: float = SETUP_LOCK_WAIT) -> Iterator[bool]:
    """Hold ``path`` (flock) if it is free within ``wait`` s; go on without it otherwise.
    Yields whether it is held."""
    if path is None:
        yield False
        return
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + wait
        held = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(1)
        if not held:
            print(f"heal_latency: {path} still held after {wait:g} s; set-up goes without it",
                  file=sys.stderr)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fh, fcntl.LOCK_UN)


def chain_paths(out: dict[str, Any], paths: list[str], intervals: list[str], trials: int,
                hosts: int, prom_fault: str, lock: Path | None) -> None:
    """The pushed path and/or the Prometheus path under each of ``intervals``, on one chain
    lab (tests/lab/chainsite.py) of ``hosts`` fleet hosts on this benchmark's subnet/ports;
    the figures go into ``out`` as they come (a later failure keeps the earlier ones)."""
    repo = Path(__file__).resolve().parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from tests.lab import chainsite

    net = chainsite.ChainNet.at(CHAIN_SUBNET, hosts, CHAIN_FIRST_PORT)
    root = Path(tempfile.mkdtemp(prefix="mc-heal-chain-")) / "lab"
    setup: dict[str, Any] = {}
    out.update({"hosts": len(net.hosts), "subnet": net.subnet, "setup": setup,
                "prometheus_fault": prom_fault, "settings": {}})
    settings = interval_settings()
    lock_cm = setup_lock(lock)
    held = lock_cm.__enter__()
    try:
        with chainsite.chain_lab(root, setup, net) as lab:
            lock_cm.__exit__(None, None, None)
            lock_cm = None
            setup["setup_lock_held"] = held
            if "pushed" in paths:
                _write_rules(root, chainsite, CHAIN_COOLDOWN, fleet_cap=None)
                lab.serve.stop()
                lab.serve.start()
                out["pushed"] = _chain_trials(lab, chainsite, "pushed", trials, settings["lab"])
            if "prometheus" in paths:
                # Trials overlap (unit faults): no cooldown, every host at once, so the guards
                # do not space out what the intervals are measured for.
                if prom_fault == "unit":
                    _write_rules(root, chainsite, 0, fleet_cap=1.0)
                else:
                    _write_rules(root, chainsite, CHAIN_COOLDOWN, fleet_cap=None)
                out["rules"] = ({"cooldown_s": 0, "fleet_cap": 1.0, "rate_count": 100000}
                                if prom_fault == "unit"
                                else {"cooldown_s": CHAIN_COOLDOWN})
                for name in intervals:
                    setting = settings[name]
                    out["settings"][name] = {"configured": dataclasses.asdict(setting),
                                             "running": apply_intervals(lab, setting)}
                    print(f"heal_latency: prometheus path, intervals {name} "
                          f"({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
                    if prom_fault == "unit":
                        got = _unit_trials(lab, name, trials, setting)
                    else:
                        got = _chain_trials(lab, chainsite, "prometheus", trials, setting)
                    out[f"prometheus_{name}"] = got
    except AssertionError as exc:
        raise BenchError(f"the chain lab failed: {exc}") from None
    finally:
        if lock_cm is not None:
            lock_cm.__exit__(None, None, None)


def _write_rules(root: Path, chainsite: Any, cooldown: int, fleet_cap: float | None) -> None:
    """The shipped rules with the flap stop out of the way and ``cooldown``; with
    ``fleet_cap``, also that cap and no rate limit (overlapping trials: 20 faults within a
    minute are the benchmark, not a storm)."""
    text = chainsite.rules_text(cooldown=cooldown)
    if fleet_cap is not None:
        for old, new in (("  fleet_cap: 0.25 ", f"  fleet_cap: {fleet_cap} "),
                         ("  rate_count: 20 ", "  rate_count: 100000 ")):
            if old not in text:
                raise BenchError(f"the shipped rules changed: no {old.strip()!r} in them")
            text = text.replace(old, new)
    (root / "playbooks" / "remediation.yml").write_text(text, encoding="utf-8")


def _unit_trials(lab: Any, name: str, trials: int, setting: Intervals) -> dict[str, Any]:
    """The Prometheus path with overlapping trials: trial k kills its own unit
    (``mc-heal-NAME-K.service`` on host k mod hosts; OnFailure masked), at a random moment
    within a window of ~``trials`` evaluation intervals. Each unit is its own alert and its
    own Alertmanager group (group_by alertname, host, unit), so trials do not wait for one
    another's resolved notification, and no alert is held back by Alertmanager's
    notification log (a fault of the same alert again before its resolved notification was
    sent gets no notification until repeat_interval)."""
    hosts = lab.net.hosts
    units = [f"mc-heal-{name}-{k:02d}.service" for k in range(trials)]
    where = {u: hosts[k % len(hosts)] for k, u in enumerate(units)}
    for host in hosts:
        script = "".join(
            f"mkdir -p /etc/systemd/system/{u}.d && printf %s {shlex.quote(QUIET_DROPIN)} > "
            f"/etc/systemd/system/{u}.d/10-metalchain-event.conf && "
            f"printf %s {shlex.quote(VICTIM_UNIT)} > /etc/systemd/system/{u}\n"
            for u in units if where[u] == host)
        started = " ".join(u for u in units if where[u] == host)
        lab.exec_(host, f"set -e\n{script}systemctl daemon-reload\nsystemctl start {started}")
    # Prometheus sees every victim active before the first fault (a failed series of a unit
    # it never saw active would still alert, but the trial must start from a healthy host).
    time.sleep(setting.scrape + setting.evaluation + 1)
    window = max(10.0, trials * setting.evaluation * 0.75)
    rng = random.Random(f"heal-{name}")
    starts = sorted(rng.uniform(0, window) for _ in units)
    t0 = time.monotonic() + 1
    faults: dict[str, float] = {}
    errors: list[str] = []
    stop = threading.Event()    # set when the run fails: the faults not yet made are not made

    def one(unit: str, at: float) -> None:
        if stop.wait(max(0.0, t0 + at - time.monotonic())):
            return
        q = shlex.quote(unit)
        try:
            faults[unit] = lab.fault(where[unit], f"p=$(systemctl show -P MainPID {q}); "
                                     f"[ \"$p\" -gt 0 ] || exit 3; kill -9 \"$p\"")
        except (AssertionError, subprocess.SubprocessError, OSError) as exc:
            errors.append(f"{unit}: {exc}")

    limit = setting.worst_case() + 120
    incidents: dict[str, Any] = {}
    ended: dict[str, Any] = {}
    with concurrent.futures.ThreadPoolExecutor(len(units)) as pool:
        for unit, at in zip(units, starts, strict=True):
            pool.submit(one, unit, at)
        try:
            _watch(lab, name, units, where, faults, errors, incidents, ended,
                   time.monotonic() + window + limit + 30, limit)
        finally:
            stop.set()
    parts: dict[str, list[float]] = {}
    for unit in units:
        inc = ended[unit]
        if inc.state != "healed":
            raise BenchError(f"{name}: {unit} on {where[unit]} ended {inc.state}: "
                             f"{lab.store.incident_timeline(inc.id)}")
        for key, value in lab.breakdown(inc.id, faults[unit]).items():
            parts.setdefault(key, []).append(value)
    doc: dict[str, Any] = {key: summary(values) for key, values in parts.items()}
    doc["fault_to_healed_values"] = parts["fault_to_healed"]
    doc["fault_window_s"] = round(window, 1)
    doc["actions"] = sum(len(lab.store.actions(incident_id=ended[u].id)) for u in units)
    return doc


def _watch(lab: Any, name: str, units: list[str], where: dict[str, str],
           faults: dict[str, float], errors: list[str], incidents: dict[str, Any],
           ended: dict[str, Any], deadline: float, limit: float) -> None:
    """Poll the store until every unit's incident (after its fault) ended, into ``ended``."""
    while len(ended) < len(units):
        if errors:
            raise BenchError(f"{name}: a fault failed: {errors[0]}")
        if time.monotonic() > deadline:
            missing = sorted(set(units) - set(ended))
            raise BenchError(f"{name}: {len(missing)} trials not ended within "
                             f"{limit:.0f} s of their fault: {missing[:5]}")
        for inc in lab.incidents(lambda i: i.alertname == "SystemdUnitFailed"
                                 and i.labels.get("unit") in where):
            unit = inc.labels["unit"]
            if unit in faults and inc.created_at >= faults[unit]:
                incidents.setdefault(unit, inc)
        for unit, inc in incidents.items():
            if unit not in ended:
                now = lab.store.incident(inc.id)
                if now.state in ("healed", "escalated", "suppressed", "dry_run",
                                 "resolved", "unmatched"):
                    ended[unit] = now
        time.sleep(0.5)


def _chain_trials(lab: Any, chainsite: Any, path: str, trials: int,
                  setting: Intervals) -> dict[str, Any]:
    """Trials one after the other, round the hosts: the pushed path, or the Prometheus path
    with ``--prom-fault exporter`` (a stopped exporter: one alert per host, so each trial
    waits for its resolved notification before the next stop on that host)."""
    hosts = lab.net.hosts
    if path == "pushed":
        for host in hosts:
            lab.install_unit(host, VICTIM, VICTIM_UNIT, start=True)
    parts: dict[str, list[float]] = {}
    extra_actions = 0
    unresolved = 0
    limit = setting.worst_case() + 60
    resolve_limit = (setting.scrape + setting.evaluation
                     + duration_seconds(setting.group_interval) + 30)
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
                                    limit, f"trial {n}: ExporterDown in the store")
        ended = lab.wait_ended(inc.id, 60)
        if ended.state != "healed":
            raise BenchError(f"trial {n} on {host}: ended {ended.state}: "
                             f"{lab.store.incident_timeline(inc.id)}")
        for key, value in lab.breakdown(inc.id, fault).items():
            parts.setdefault(key, []).append(value)
        if path == "prometheus":
            # The next stop on this host must start a new alert: this one resolved first.
            try:
                lab_wait(lambda i=inc.id: lab.store.incident(i).alert_status == "resolved",
                         resolve_limit, f"trial {n}: its alert resolved")
            except AssertionError:
                unresolved += 1
    for inc in lab.incidents(lambda i: i.source == "alertmanager"):
        acts = lab.store.actions(incident_id=inc.id)
        if path == "pushed" and inc.labels.get("unit") == VICTIM and acts:
            extra_actions += len(acts)
    doc: dict[str, Any] = {key: summary(values) for key, values in parts.items()}
    doc["fault_to_healed_values"] = parts["fault_to_healed"]
    if path == "pushed":
        doc["prometheus_alerts_for_the_same_failures"] = len(lab.incidents(
            lambda i: i.source == "alertmanager" and i.labels.get("unit") == VICTIM))
        doc["actions_from_those_alerts"] = extra_actions
    else:
        doc["resolved_notification_not_seen_in_time"] = unresolved
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


# --- receiver ingest (bench/ingest.py, a short run) ------------------------------------------

def ingest(seconds: float) -> dict[str, Any]:
    """bench/ingest.py on its own throw-away site (loopback, :data:`INGEST_PORT`): one and
    four clients, 1 and 10 alerts per notification."""
    with tempfile.TemporaryDirectory(prefix="mc-heal-ingest-") as tmp:
        out = Path(tmp) / "ingest.json"
        must([sys.executable, str(Path(__file__).with_name("ingest.py")), "--port",
              str(INGEST_PORT), "--concurrency", "1,4", "--alerts", "1,10", "--seconds",
              str(seconds), "--warmup", "1", "--json", str(out)], 300)
        doc = json.loads(out.read_text(encoding="utf-8"))
    return {"command": f"bench/ingest.py --port {INGEST_PORT} --concurrency 1,4 --alerts 1,10 "
                       f"--seconds {seconds:g} --warmup 1",
            "rows": [{k: row[k] for k in ("concurrency", "alerts_per_notification",
                                          "alerts_per_s", "ack_p50_ms", "ack_p99_ms",
                                          "errors")} for row in doc["rows"]]}


# --- the picture ----------------------------------------------------------------------------

def plot(figures_json: Path, png: Path) -> None:
    """bench/heal_plot.py in the benchmark's own venv (:data:`PLOT_VENV`, matplotlib from pip;
    made on first use, never the project's .venv)."""
    py = PLOT_VENV / "bin" / "python"
    if not py.exists():
        must(["/usr/bin/python3", "-m", "venv", str(PLOT_VENV)], 120)
    if run([str(py), "-c", "import matplotlib"], 60)[1].returncode != 0:
        must([str(py), "-m", "pip", "install", "--quiet", "matplotlib"], 600)
    must([str(py), str(Path(__file__).with_name("heal_plot.py")), str(figures_json),
          str(png)], 120)


def heal_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured path/setting: label, median, p95, the per-trial values."""
    rows = []
    for key, label in (("pushed", "pushed event"),
                       ("prometheus_lab", "Prometheus, lab 1 s"),
                       ("prometheus_metalchain", "Prometheus, metalchain defaults"),
                       ("prometheus_stock", "Prometheus, stock")):
        got = figures.get(key)
        if got:
            rows.append({"key": key, "label": label,
                         "median_s": got["fault_to_healed"]["median_s"],
                         "p95_s": got["fault_to_healed"]["p95_s"],
                         "n": got["fault_to_healed"]["n"],
                         "fault_to_healed_values": got["fault_to_healed_values"]})
    return rows


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                            "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                            "kernel": os.uname().release}
    for name, argv in (("prometheus", ["/usr/bin/prometheus", "--version"]),
                       ("alertmanager", ["/usr/bin/prometheus-alertmanager", "--version"])):
        _took, r = run(argv, 30)
        text = (r.stdout or r.stderr).splitlines()
        info[name] = text[0] if r.returncode == 0 and text else f"unknown ({r.returncode})"
    return info


def print_table(figures: dict[str, Any]) -> None:
    lines = ["", "fault -> healed, restart_service (seconds)",
             f"{'path / intervals':36} {'n':>3} {'median':>8} {'p95':>8} {'max':>8}"]
    for row in figures.get("heal_rows", []):
        got = figures[row["key"]]["fault_to_healed"]
        lines.append(f"{row['label']:36} {got['n']:>3} {got['median_s']:>8.2f} "
                     f"{got['p95_s']:>8.2f} {got['max_s']:>8.2f}")
    if "ingest" in figures:
        lines += ["", "receiver ingest (bench/ingest.py)",
                  f"{'clients':>7} {'alerts/notif':>12} {'alerts/s':>9} {'ack p99 ms':>10}"]
        for r in figures["ingest"]["rows"]:
            lines.append(f"{r['concurrency']:>7} {r['alerts_per_notification']:>12} "
                         f"{r['alerts_per_s']:>9.0f} {r['ack_p99_ms']:>10.1f}")
    print("\n".join(lines), file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", choices=("engine", "overhead", "pushed", "prometheus"),
                    action="append", help="Repeatable (pushed and prometheus share one lab).")
    ap.add_argument("--intervals", choices=("lab", "metalchain", "stock"), action="append",
                    help="The Prometheus path's monitoring settings; repeatable (default lab).")
    ap.add_argument("--prom-fault", choices=("unit", "exporter"), default="unit",
                    help="The Prometheus path's fault: a killed unit of its own per trial "
                         "(SystemdUnitFailed; trials overlap), or a stopped exporter "
                         "(ExporterDown; one trial at a time).")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--hosts", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="Leave the (engine) lab up.")
    ap.add_argument("--ingest", type=float, metavar="SECONDS",
                    help="Also run bench/ingest.py this many seconds per level.")
    ap.add_argument("--setup-lock", type=Path,
                    help="Hold this flock during the chain lab's set-up if it is free within "
                         "a minute.")
    ap.add_argument("--plot", type=Path, help="Write the heal-time figure (PNG) here.")
    ap.add_argument("--plot-from", type=Path,
                    help="Only draw --plot from this earlier --json file.")
    ap.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = ap.parse_args()
    if args.plot is not None and args.json is None and args.plot_from is None:
        ap.error("--plot needs --json (the figure is drawn from it)")
    figures: dict[str, Any] = {"trials": args.trials, "command": " ".join(sys.argv)}
    try:
        if args.plot_from is not None:
            if args.plot is None:
                ap.error("--plot-from needs --plot")
            plot(args.plot_from, args.plot)
            return 0
        figures["machine"] = machine()
        paths = args.path or ["engine"]
        chain = [p for p in paths if p in ("pushed", "prometheus")]
        if chain and len(chain) != len(paths):
            ap.error("--path pushed/prometheus cannot be combined with engine or overhead")
        if len(paths) > 1 and not chain:
            ap.error("one --path at a time for engine and overhead")
        if chain:
            chain_paths(figures, chain, args.intervals or ["lab"], args.trials, args.hosts,
                        args.prom_fault, args.setup_lock)
        elif paths[0] == "overhead":
            figures.update(overhead(args.trials))
        else:
            site = Path(tempfile.mkdtemp(prefix="mc-heal-")) / "lab"
            try:
                _lab(site, args.hosts)
                figures.update(engine_path(site, args.trials))
            finally:
                if not args.keep:
                    for argv, timeout in (
                            ([METALCHAIN, "--site", str(site), "mirror", "stop"], 60),
                            ([METALCHAIN, "lab", "down", "--purge", "--dir", str(site)], 600)):
                        try:
                            run(argv, timeout)
                        except BenchError as exc:
                            print(f"heal_latency: {exc}", file=sys.stderr)
        if args.ingest:
            figures["ingest"] = ingest(args.ingest)
        figures["heal_rows"] = heal_rows(figures)
        figures["machine"]["load_avg_end"] = os.getloadavg()
        figures["machine"]["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    except BenchError as exc:
        print(f"heal_latency: {exc}", file=sys.stderr)
        figures["error"] = str(exc)[:4000]
        figures["heal_rows"] = heal_rows(figures)
        print_table(figures)
        report(figures, args.json)
        return 1
    print_table(figures)
    report(figures, args.json)
    if args.plot is not None:
        try:
            plot(args.json, args.plot)
        except BenchError as exc:
            print(f"heal_latency: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

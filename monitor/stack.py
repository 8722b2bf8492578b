"""The monitoring stack: Prometheus and two clustered Alertmanagers, generated, checked, run.

Everything lives under ``MonitorSettings.dir`` (``SITE/monitor``)::

    prometheus.yml              scrape + alerting config (file_sd targets, metalchain's /metrics)
    rules/metalchain.rules.yml  from playbooks/alerts.yml (monitor/alerts.py)
    alertmanager.yml            the remediation route and the webhook to metalchain serve
    secrets/webhook-token       the webhook's bearer token, mode 0600 (dir 0700): the only
                                file that holds it; configs name the file, argv never holds it
    targets/metalchain.json     file_sd targets (written by orchestrate/monitoring.py)
    data/NAME/  logs/NAME.log  run/NAME.pid     per process (prometheus, alertmanager-1, -2)

Configs are checked with ``promtool check config``, ``promtool check rules`` and ``amtool
check-config`` before anything starts; a failure names the generated file and the tool's
message. The processes run in their own sessions (they outlive ``monitor up``); their pid
files are trusted only for a live process whose command line still holds our config file and
listen address (a recycled pid is someone else). ``stop`` sends SIGTERM, then SIGKILL at a
deadline, and leaves nothing running.

The two Alertmanagers gossip on ``listen:cluster_ports`` with each other as the only peer, the
way operators run them for high availability: Prometheus sends every alert to both, the
replicas share their notification log, and normally one of them delivers each notification
(the second one steps in after ``--cluster.peer-timeout`` when the first did not). The
receiver deduplicates either way: an incident is keyed by (fingerprint, startsAt).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inventory.errors import MetalchainError
from inventory.secrets import Secret
from monitor.alerts import AlertRule, Notifications, prometheus_duration, rule_text
from monitor.settings import MonitorSettings
from runtime import pidfile
from runtime.atomicfile import write_atomic
from runtime.private import open_private
from runtime.process import output_tail, run

PROMETHEUS_BIN = "/usr/bin/prometheus"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
PROMTOOL_BIN = "/usr/bin/promtool"
AMTOOL_BIN = "/usr/bin/amtool"
CHECK_TIMEOUT = 30.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 5.0
WEBHOOK_PATH = "/v1/alerts"
#: What Alertmanager groups notifications by: one notification per alert, host and unit.
GROUP_BY = ("alertname", "host", "unit")
RECEIVER_NAME = "remediation"
#: Prometheus's resend delay: it re-sends firing alerts this often (default 1m), which is
#: what lets a restarted Alertmanager learn them within a second.
RESEND_DELAY = "1s"


class StackError(MetalchainError):
    """The stack could not be generated, checked, started, stopped or asked."""


@dataclass(frozen=True)
class Layout:
    """Where the stack's files are (all under ``root``)."""

    root: Path

    @property
    def prometheus_yml(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def rules_file(self) -> Path:
        return self.root / "rules" / "metalchain.rules.yml"

    @property
    def alertmanager_yml(self) -> Path:
        return self.root / "alertmanager.yml"

    @property
    def token_file(self) -> Path:
        return self.root / "secrets" / "webhook-token"

    @property
    def targets_dir(self) -> Path:
        return self.root / "targets"

    @property
    def targets_file(self) -> Path:
        return self.targets_dir / "metalchain.json"

    def data_dir(self, name: str) -> Path:
        return self.root / "data" / name

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.root / "run" / f"{name}.pid"

    def generated(self) -> tuple[Path, ...]:
        """The generated config files (never the token file)."""
        return (self.prometheus_yml, self.rules_file, self.alertmanager_yml)


@dataclass(frozen=True)
class Component:
    """One process of the stack."""

    name: str
    argv: tuple[str, ...]
    url: str
    pid_file: Path
    log_file: Path
    data_dir: Path
    markers: tuple[str, ...]   # arguments that identify our process on its command line


def layout(settings: MonitorSettings) -> Layout:
    return Layout(settings.dir)


# --- generation (pure) --------------------------------------------------------------------

def prometheus_config(settings: MonitorSettings, lay: Layout) -> dict[str, Any]:
    """prometheus.yml: global intervals, the rules, both Alertmanagers, the file_sd targets
    (re-read within ``refresh_interval`` and on change) and metalchain serve's /metrics."""
    scrape = settings.scrape_interval
    timeout = min(scrape, 10.0)
    refresh = prometheus_duration(min(max(scrape, 1.0), 30.0))
    return {
        "global": {"scrape_interval": prometheus_duration(scrape),
                   "scrape_timeout": prometheus_duration(timeout),
                   "evaluation_interval": prometheus_duration(settings.evaluation_interval)},
        "rule_files": [str(lay.rules_file)],
        "alerting": {"alertmanagers": [{
            "static_configs": [{"targets": [f"{settings.listen}:{p}"
                                            for p in settings.alertmanager_ports]}]}]},
        "scrape_configs": [
            {"job_name": "metalchain-targets",
             "file_sd_configs": [{"files": [str(lay.targets_dir / "*.json")],
                                  "refresh_interval": refresh}]},
            {"job_name": "metalchain",
             "metrics_path": "/metrics",
             "static_configs": [{"targets": [
                 f"{settings.receiver_address}:{settings.receiver_port}"]}]},
        ],
    }


def alertmanager_config(settings: MonitorSettings, lay: Layout,
                        notifications: Notifications | None = None) -> dict[str, Any]:
    """alertmanager.yml: one route to the remediation webhook, sent after ``group_wait``
    (default 0s: at once), again after ``group_interval`` (default: the evaluation interval,
    at least 1 s) when the group changes, and every ``repeat_interval`` while it fires;
    resolved alerts are sent too. The bearer token is read from :attr:`Layout.token_file`."""
    notes = notifications or Notifications()
    group = notes.group_interval or prometheus_duration(max(settings.evaluation_interval, 1.0))
    return {
        "route": {"receiver": RECEIVER_NAME, "group_by": list(GROUP_BY),
                  "group_wait": notes.group_wait,
                  "group_interval": group, "repeat_interval": notes.repeat_interval},
        "receivers": [{"name": RECEIVER_NAME, "webhook_configs": [{
            "url": settings.receiver_url + WEBHOOK_PATH,
            "send_resolved": True,
            "max_alerts": 0,
            "http_config": {"authorization": {"type": "Bearer",
                                              "credentials_file": str(lay.token_file)}},
        }]}],
    }


def yaml_text(doc: dict[str, Any], what: str) -> str:
    head = f"# Generated by metalchain monitor ({what}); changes here are overwritten.\n"
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000)


def components(settings: MonitorSettings, lay: Layout) -> list[Component]:
    """Prometheus and the two Alertmanagers, with their command lines (no secret in any)."""
    listen = settings.listen
    prom_addr = f"{listen}:{settings.prometheus_port}"
    prom_conf = f"--config.file={lay.prometheus_yml}"
    prom_listen = f"--web.listen-address={prom_addr}"
    out = [Component(
        "prometheus",
        (PROMETHEUS_BIN, prom_conf, f"--storage.tsdb.path={lay.data_dir('prometheus')}",
         prom_listen, f"--rules.alert.resend-delay={RESEND_DELAY}", "--web.enable-lifecycle"),
        f"http://{prom_addr}", lay.pid_file("prometheus"), lay.log_file("prometheus"),
        lay.data_dir("prometheus"), (prom_conf, prom_listen))]
    am_conf = f"--config.file={lay.alertmanager_yml}"
    ports = settings.alertmanager_ports
    gossip = settings.cluster_ports
    for i in (0, 1):
        name = f"alertmanager-{i + 1}"
        addr = f"{listen}:{ports[i]}"
        am_listen = f"--web.listen-address={addr}"
        out.append(Component(
            name,
            (ALERTMANAGER_BIN, am_conf, f"--storage.path={lay.data_dir(name)}", am_listen,
             f"--web.external-url=http://{addr}",
             f"--cluster.listen-address={listen}:{gossip[i]}",
             f"--cluster.advertise-address={listen}:{gossip[i]}",
             f"--cluster.peer={listen}:{gossip[1 - i]}"),
            f"http://{addr}", lay.pid_file(name), lay.log_file(name), lay.data_dir(name),
            (am_conf, am_listen)))
    return out


# --- files ----------------------------------------------------------------------------------

def write_token(lay: Layout, token: Secret) -> bool:
    """The bearer token into its 0600 file (directory 0700); True if it changed."""
    value = token.reveal()
    if not value or any(c.isspace() or ord(c) < 32 for c in value):
        raise StackError(f"the webhook token ({token.ref or 'secret'}) must be one word with "
                         "no spaces or control characters")
    secrets_dir = lay.token_file.parent
    secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(secrets_dir, 0o700)
    try:
        return write_atomic(lay.token_file, value, 0o600, unchanged_ok=True)
    except OSError as exc:
        raise StackError(f"cannot write {lay.token_file}: {exc.strerror or exc}") from exc


def write_configs(settings: MonitorSettings, lay: Layout, alerts: Sequence[AlertRule],
                  notifications: Notifications | None = None) -> list[Path]:
    """Write the generated configs (atomically, only when changed); the files written."""
    files = {lay.prometheus_yml: yaml_text(prometheus_config(settings, lay), "prometheus.yml"),
             lay.rules_file: rule_text(list(alerts)),
             lay.alertmanager_yml: yaml_text(alertmanager_config(settings, lay, notifications),
                                             "alertmanager.yml")}
    changed = []
    lay.targets_dir.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        try:
            if write_atomic(path, text, 0o644, unchanged_ok=True):
                changed.append(path)
        except OSError as exc:
            raise StackError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return changed


def install_configs(settings: MonitorSettings, lay: Layout, alerts: Sequence[AlertRule],
                    notifications: Notifications | None = None, *,
                    timeout: float = CHECK_TIMEOUT) -> list[Path]:
    """:func:`write_configs`, then :func:`check_configs`; if a check fails, the previous
    files are put back (a running stack, or its next start, keeps a config that passed) and
    the rejected ones are kept as ``NAME.rejected`` for a look. The files changed."""
    before = {}
    for path in lay.generated():
        try:
            before[path] = path.read_bytes()
        except FileNotFoundError:
            before[path] = None
    changed = write_configs(settings, lay, alerts, notifications)
    try:
        check_configs(lay, alerts, timeout)
    except StackError as exc:
        kept = []
        for path in changed:
            rejected = path.with_name(path.name + ".rejected")
            with contextlib.suppress(OSError):
                os.replace(path, rejected)
                kept.append(str(rejected))
            old = before.get(path)
            if old is not None:
                write_atomic(path, old, 0o644)
        raise StackError(f"{exc} (the previous config stays; rejected: "
                         f"{', '.join(kept) or 'none'})") from None
    return changed


def check_configs(lay: Layout, alerts: Sequence[AlertRule] = (),
                  timeout: float = CHECK_TIMEOUT) -> None:
    """``promtool check rules``/``check config`` and ``amtool check-config`` on the generated
    files; StackError names the file and the tool's message (for a rule, also the alert's
    entry in alerts.yml)."""
    checks = ((lay.rules_file, [PROMTOOL_BIN, "check", "rules", str(lay.rules_file)]),
              (lay.prometheus_yml, [PROMTOOL_BIN, "check", "config", str(lay.prometheus_yml)]),
              (lay.alertmanager_yml, [AMTOOL_BIN, "check-config", str(lay.alertmanager_yml)]))
    sources = {a.name: a.source for a in alerts}
    for path, argv in checks:
        proc = run(argv, timeout=timeout, check=False, error=StackError)
        if proc.returncode != 0:
            tail = " ".join((output_tail(proc.stderr, proc.stdout) or
                             f"exit {proc.returncode}").split())
            rule = re.search(r'rule \d+, "([^"]+)"', tail)
            origin = f" (alert {rule[1]}, {sources[rule[1]]})" \
                if rule and rule[1] in sources else ""
            raise StackError(f"{path}: {Path(argv[0]).name} {argv[1]} rejected it{origin}: "
                             f"{tail}")


# --- processes ------------------------------------------------------------------------------

def running_pid(component: Component) -> int | None:
    """The live pid of ``component``, or None (not started, gone, or a recycled pid)."""
    return pidfile.live_pid(component.pid_file, markers=component.markers)


def start(settings: MonitorSettings, lay: Layout, *, timeout: float = START_TIMEOUT
          ) -> dict[str, int]:
    """Start what is not running and wait until every component answers ``/-/ready``;
    reload (``POST /-/reload``) those already running. Returns name -> pid. If one fails to
    start, the ones this call started are stopped again and StackError carries its log."""
    pids: dict[str, int] = {}
    started: list[Component] = []
    deadline = time.monotonic() + timeout
    try:
        comps = components(settings, lay)
        for comp in comps:
            pid = running_pid(comp)
            if pid is not None:
                reload(comp)
            else:
                pid = _spawn(comp)
                started.append(comp)
            pids[comp.name] = pid
        for comp in comps:
            _wait_ready(comp, pids[comp.name], deadline)
    except BaseException:
        for comp in started:
            with contextlib.suppress(StackError):
                _stop_one(comp, STOP_TIMEOUT)
        raise
    return pids


def _spawn(comp: Component) -> int:
    try:
        for d in (comp.log_file.parent, comp.pid_file.parent, comp.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        # the logs hold alert labels and receiver errors: 0600, like the token
        with open_private(comp.log_file, "ab") as log:
            proc = subprocess.Popen(list(comp.argv), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True, close_fds=True,
                                    cwd=str(comp.data_dir))
    except OSError as exc:
        raise StackError(f"cannot start {comp.name} ({comp.argv[0]}): "
                         f"{exc.strerror or exc}") from exc
    pidfile.write_pidfile(comp.pid_file, proc.pid)
    # It outlives this process: the Popen object must not warn when collected.
    proc.returncode = 0
    return proc.pid


def _wait_ready(comp: Component, pid: int, deadline: float) -> None:
    delay = 0.05
    while True:
        pidfile.reap(pid)
        if not pidfile.process_alive(pid):
            raise StackError(f"{comp.name} exited at start: {_log_tail(comp)}")
        if _answers(comp.url + "/-/ready"):
            return
        if time.monotonic() > deadline:
            raise StackError(f"{comp.name} did not answer {comp.url}/-/ready in time: "
                             f"{_log_tail(comp)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _log_tail(comp: Component) -> str:
    try:
        text = comp.log_file.read_text("utf-8", "replace")
    except OSError:
        return "no log"
    tail = " | ".join(text.strip().splitlines()[-3:])
    return f"{tail[-600:] or 'no output'} (log: {comp.log_file})"


def reload(comp: Component) -> None:
    """Make a running component read its config again."""
    try:
        _request(comp.url + "/-/reload", method="POST", timeout=HTTP_TIMEOUT)
    except StackError as exc:
        raise StackError(f"{comp.name}: reload failed: {exc}") from None


def stop(settings: MonitorSettings, lay: Layout, *, timeout: float = STOP_TIMEOUT
         ) -> list[str]:
    """Stop every component that runs (SIGTERM, SIGKILL at ``timeout``); the names stopped."""
    stopped = []
    errors = []
    for comp in components(settings, lay):
        try:
            if _stop_one(comp, timeout):
                stopped.append(comp.name)
        except StackError as exc:
            errors.append(str(exc))
    if errors:
        raise StackError("; ".join(errors))
    return stopped


def _stop_one(comp: Component, timeout: float) -> bool:
    pid = running_pid(comp)
    if pid is not None and not pidfile.terminate(pid, term_timeout=timeout,
                                                 kill_timeout=STOP_TIMEOUT):
        raise StackError(f"{comp.name} (pid {pid}) did not exit after SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        comp.pid_file.unlink()
    return pid is not None


def running(settings: MonitorSettings, lay: Layout) -> dict[str, int | None]:
    return {c.name: running_pid(c) for c in components(settings, lay)}


# --- asking the running stack --------------------------------------------------------------

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _request(url: str, *, method: str = "GET", timeout: float = HTTP_TIMEOUT) -> bytes:
    """One HTTP request to the stack (never through a proxy); StackError on any failure."""
    if not url.startswith("http://"):
        raise StackError(f"not an http:// URL: {url}")
    req = urllib.request.Request(url, method=method)  # noqa: S310 - checked just above
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return bytes(resp.read(8 * 1024 * 1024))
    except urllib.error.HTTPError as exc:
        raise StackError(f"{method} {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StackError(f"{method} {url}: {reason}") from None


def _answers(url: str) -> bool:
    try:
        _request(url, timeout=1.0)
    except StackError:
        return False
    return True


def get_json(url: str, timeout: float = HTTP_TIMEOUT) -> Any:
    body = _request(url, timeout=timeout)
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StackError(f"GET {url}: not JSON ({exc})") from None


def prometheus_targets(settings: MonitorSettings) -> list[dict[str, Any]]:
    """Prometheus's active targets: job, instance, host, health, last error, labels."""
    doc = get_json(settings.prometheus_url + "/api/v1/targets?state=active")
    out = []
    for t in (doc.get("data") or {}).get("activeTargets") or []:
        labels = t.get("labels") or {}
        out.append({"job": labels.get("job", ""), "instance": labels.get("instance", ""),
                    "host": labels.get("metalchain_host", ""), "health": t.get("health", ""),
                    "scrape_url": t.get("scrapeUrl", ""), "last_error": t.get("lastError", ""),
                    "labels": labels})
    return sorted(out, key=lambda t: (t["job"], t["instance"]))


def prometheus_alerts(settings: MonitorSettings) -> list[dict[str, Any]]:
    """Alerts Prometheus holds (pending and firing)."""
    doc = get_json(settings.prometheus_url + "/api/v1/alerts")
    out = []
    for a in (doc.get("data") or {}).get("alerts") or []:
        labels = a.get("labels") or {}
        out.append({"name": labels.get("alertname", ""), "state": a.get("state", ""),
                    "host": labels.get("host", ""), "unit": labels.get("unit", ""),
                    "severity": labels.get("severity", ""), "active_at": a.get("activeAt"),
                    "labels": labels})
    return sorted(out, key=lambda a: (a["name"], a["host"], a["unit"]))


def alertmanager_status(url: str) -> dict[str, Any]:
    """One Alertmanager's cluster view: its name, cluster status and peers."""
    doc = get_json(url + "/api/v2/status")
    cluster = doc.get("cluster") or {}
    peers = cluster.get("peers") or []
    return {"url": url, "cluster_status": cluster.get("status", ""),
            "name": cluster.get("name", ""),
            "peers": sorted(str(p.get("address", "")) for p in peers if isinstance(p, dict))}

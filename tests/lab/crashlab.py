"""Crash anywhere: SIGKILL the controller at random points, restart or ``--resume``, and check
what is left — for a test module (tests/lab/test_crash.py, a few trials) and a benchmark
(bench/crash.py, hundreds). No pytest in here.

The lab is ``metalchain lab up --fleet 2`` (systemd hosts, no QEMU). Side effects are
counted **on the hosts**: every counted action appends a line to a file on the host's own
file system (a command step or resource, or a unit's ``ExecStartPre`` for a service start),
read from the controller through the host's root directory (``lab/fleet/HOST/root``), never
from metalchain's own records.

Each trial kills one controller process — ``metalchain run``, ``metalchain apply`` or
``metalchain serve`` — either at a named crash point (``METALCHAIN_CRASH_AT``, see
:mod:`runtime.crashpoint`) or after a random wall-clock delay, then finishes the work as an
operator would (``run --resume RUN``, the same ``apply`` again, ``serve`` started again) and
checks, after every trial:

- **terminal**: the run (resumed) ended ``ok``; every incident is in a terminal state; no
  remediation action is left ``running``; no run shows ``running``;
- **once**: each counted side effect happened exactly once on the host — except where
  metalchain promises only convergence (an unguarded command, or a handler, whose step was
  cut after its action reached the host and before its outcome was journaled: the journal
  entry is still ``intent``). Those repeats are counted apart (``in_doubt_repeats``), never
  hidden and never allowed elsewhere;
- **intact**: ``PRAGMA integrity_check`` of the SQLite store is ``ok``; every JSON, JSON-lines
  and YAML file under the site parses (the lab's host file systems excepted);
- **unlocked**: the follow-up started without manual cleanup (no host reported held), and no
  lease is left once every process has ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inventory.state.runowner import seen_status

METALCHAIN = str(Path(sys.executable).parent / "metalchain")
HOSTS = ("fleet01", "fleet02")
SUBNET = "10.107.0.0/24"
RECEIVER_PORT = 20651
TERMINAL_INCIDENT = ("healed", "escalated", "suppressed", "dry_run", "resolved", "unmatched")
SCENARIOS = ("run", "apply", "serve")
CRASH_ENV = "METALCHAIN_CRASH_AT"

# -- what each scenario may be killed at (named crash points; "random" = a wall-clock delay) --
RUN_POINTS = ("run.step_intent", "run.step_done", "run.before_end")
APPLY_POINTS = ("apply.before_act", "apply.after_act", "run.step_intent", "run.step_done",
                "run.before_end")
SERVE_POINTS = ("serve.after_ack", "serve.claimed", "serve.action_started",
                "run.step_intent", "run.step_done", "serve.action_done")
# Random delays (seconds after the start; for serve, after the webhook's answer): spread over
# what each takes here (a run ~2.2 s of which ~1.2 s is starting Python; a heal ~1.5 s).
RUN_DELAYS, APPLY_DELAYS, SERVE_DELAYS = (0.8, 2.8), (0.8, 3.4), (0.0, 1.6)


class CrashLabError(RuntimeError):
    """The lab itself failed (not a finding of the campaign)."""


@dataclass
class Trial:
    scenario: str
    n: int
    kill: str                    # "hook:NAME#K" or "random:SECONDS"
    killed: bool = False         # the process died of SIGKILL (not finished before it)
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    in_doubt_repeats: int = 0    # side effects repeated where only convergence is promised
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


# -- the lab ------------------------------------------------------------------------------------

def metalchain(*args: str, timeout: float = 300, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _must(r: subprocess.CompletedProcess[str], what: str) -> None:
    if r.returncode != 0:
        raise CrashLabError(f"{what} failed ({r.returncode}): {r.stdout[-2000:]}\n"
                            f"{r.stderr[-2000:]}")


ROLE_RECIPE = """\
- directory: {path: /var/lib/crash/apply, mode: '0755', owner: root, group: root}
- file:
    path: /etc/systemd/system/crash-apply.service
    content: |
      [Unit]
      Description=crash campaign: counts its starts
      # Restarted by every generation, trials seconds apart: systemd's default start
      # limit (5 in 10 s) refused one ("start of the service was attempted too often").
      StartLimitIntervalSec=0
      [Service]
      ExecStartPre=/bin/sh -c 'echo start >> /var/lib/crash/apply/starts'
      ExecStart=/bin/sleep infinity
    mode: '0644'
  notify: reload systemd
- file: {path: /var/lib/crash/apply/conf, content: "gen {{ crash_gen }}\\n", mode: '0644'}
  notify: restart crash-apply
- command:
    argv:
      - /bin/sh
      - -c
      - echo "$0" >> /var/lib/crash/apply/once && touch "/var/lib/crash/apply/once-$0.done"
      - "{{ crash_gen }}"
    creates: "/var/lib/crash/apply/once-{{ crash_gen }}.done"
    name: count once per generation
- command:
    argv:
      - /bin/sh
      - -c
      - sleep 0.5; echo "$0" >> /var/lib/crash/apply/slow && touch /var/lib/crash/apply/slow-$0.done
      - "{{ crash_gen }}"
    creates: "/var/lib/crash/apply/slow-{{ crash_gen }}.done"
    name: a slow one, counted once per generation
- service: {name: crash-apply, state: started}
"""
ROLE_HANDLERS = """\
reload systemd:
  command: [systemctl, daemon-reload]
restart crash-apply:
  service: {name: crash-apply, state: restarted}
"""
ROLE_DEFAULTS = "crash_gen: 0\n"

SERVE_UNIT = """\
[Unit]
Description=crash campaign: remediation restarts it; counts its starts
[Service]
ExecStartPre=/bin/sh -c 'echo start >> /var/lib/crash/serve/starts'
ExecStartPre=/bin/sleep 0.5
ExecStart=/bin/sleep infinity
"""

RULES = """\
policy:
  cooldown: 0
  rate_count: 100000
  rate_window: 60
  max_concurrent: 5
  fleet_cap: 1.0
  flap_count: 100000
  flap_window: 60
rules:
  - name: unit-failed
    match: {alertname: SystemdUnitFailed}
    steps:
      - action: restart_service
        args: {service: "{{ labels.unit }}"}
        verify: {kind: service_active, timeout: 20}
        timeout: 60
"""


def run_playbook(n: int) -> str:
    """Three steps per host: a guarded command (once), an unguarded one (re-run when in
    doubt), a slow guarded one (kills land inside it)."""
    d = f"/var/lib/crash/run/t{n}"
    return f"""\
- name: crash trial {n}
  hosts: fleet
  steps:
    - name: guarded
      command:
        argv: [/bin/sh, -c, 'mkdir -p {d} && echo a >> {d}/count && touch {d}/a.done']
        creates: {d}/a.done
    - name: unguarded
      command: [/bin/sh, -c, 'echo b >> {d}/count']
    - name: slow guarded
      command:
        argv: [/bin/sh, -c, 'sleep 0.4; echo c >> {d}/count && touch {d}/c.done']
        creates: {d}/c.done
"""


class CrashLab:
    """The site at ``root`` (fleet hosts up), the helpers the scenarios share."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = "crash-webhook-" + os.urandom(12).hex()
        self.serve_log = root / "serve-crash.log"
        self._serve: subprocess.Popen[bytes] | None = None

    # host side
    def host_file(self, host: str, path: str) -> Path:
        return self.root / "lab" / "fleet" / host / "root" / path.lstrip("/")

    def host_lines(self, host: str, path: str) -> list[str]:
        try:
            return self.host_file(host, path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def cli(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return metalchain("--site", str(self.root), *args, timeout=timeout, env=env)

    def exec_(self, host: str, script: str) -> str:
        """``script`` run by sh inside ``host`` (nsenter into its init's namespaces: the
        test's own hand on the host, not metalchain's)."""
        record = json.loads((self.root / "lab" / "fleet" / host / "host.json").read_text())
        r = subprocess.run(["nsenter", "-t", str(record["init_pid"]), "-a", "-r", "-w",
                            "/bin/sh", "-c", script], capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0:
            raise CrashLabError(f"on {host}: {script!r} exited {r.returncode}: {r.stderr[-800:]}")
        return r.stdout

    # set-up
    def set_ports(self, first: int = RECEIVER_PORT) -> None:
        """serve's receiver (and the monitoring ports nothing here starts) on our ports."""
        settings_file = self.root / "metalchain.yml"
        settings = yaml.safe_load(settings_file.read_text()) or {}
        settings["monitor"] = {"receiver_address": "127.0.0.1", "receiver_port": first,
                               "prometheus_port": first + 1,
                               "alertmanager_ports": [first + 2, first + 3],
                               "cluster_ports": [first + 4, first + 5]}
        settings_file.write_text(yaml.safe_dump(settings))

    def configure(self) -> None:
        self.set_ports()
        secrets_file = self.root / "secrets.yml"
        values = yaml.safe_load(secrets_file.read_text()) or {}
        values["monitor_webhook_token"] = self.token
        secrets_file.write_text(yaml.safe_dump(values))
        secrets_file.chmod(0o600)
        playbooks = self.root / "playbooks"
        role = playbooks / "roles" / "crashrole"
        role.mkdir(parents=True, exist_ok=True)
        (role / "recipe.yml").write_text(ROLE_RECIPE)
        (role / "handlers.yml").write_text(ROLE_HANDLERS)
        (role / "defaults.yml").write_text(ROLE_DEFAULTS)
        (playbooks / "remediation.yml").write_text(RULES)
        _must(self.cli("apply", "--role", "crashrole", "fleet", "-e", "crash_gen=0", "--json"),
              "the first apply of the crash role")
        for host in HOSTS:
            self.exec_(host, "mkdir -p /var/lib/crash/serve && cat > "
                             "/etc/systemd/system/crash-serve.service <<'EOF'\n"
                             f"{SERVE_UNIT}EOF\nsystemctl daemon-reload")

    # serve
    def serve_start(self, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        with open(self.serve_log, "ab") as out:
            self._serve = subprocess.Popen(
                [METALCHAIN, "--site", str(self.root), "serve", "--no-boot"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self._serve.poll() is not None:
                raise CrashLabError(f"serve exited {self._serve.returncode}: "
                                    f"{self.serve_log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise CrashLabError(f"serve did not answer /healthz in {timeout} s")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return http(f"http://127.0.0.1:{RECEIVER_PORT}/healthz")[0] == 200
        except OSError:
            return False

    @property
    def serve_proc(self) -> subprocess.Popen[bytes] | None:
        return self._serve

    def serve_stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        proc, self._serve = self._serve, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        return proc.returncode

    def post_alert(self, host: str, unit: str, fingerprint: str) -> tuple[int, dict[str, Any]]:
        alert = {"status": "firing",
                 "labels": {"alertname": "SystemdUnitFailed", "host": host, "instance": host,
                            "unit": unit, "severity": "critical"},
                 "annotations": {}, "startsAt": "2026-12-01T23:00:00Z",
                 "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
                 "fingerprint": fingerprint}
        doc = {"version": "4", "groupKey": "{}:{alertname=\"SystemdUnitFailed\"}",
               "truncatedAlerts": 0, "status": "firing", "receiver": "metalchain",
               "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
               "externalURL": "http://127.0.0.1:1", "alerts": [alert]}
        return http(f"http://127.0.0.1:{RECEIVER_PORT}/v1/alerts",
                    json.dumps(doc).encode(), self.token)

    # the state store, read as an operator would (a fresh connection each time)
    def store_query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.root / 'state' / 'metalchain.db'}?mode=ro",
                              uri=True, timeout=30)
        try:
            return list(con.execute(sql, tuple(args)))
        finally:
            con.close()

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with the status ``runs list`` shows (a ``running`` run
        whose process is gone shows ``interrupted``)."""
        here, now = socket.gethostname(), time.time()
        rows = self.store_query("SELECT uid, kind, status, owner_host, pid, pid_start, "
                                "heartbeat_at, started_at FROM runs ORDER BY id DESC")
        return [{"uid": uid, "kind": kind, "recorded_status": status,
                 "status": seen_status(status, owner_host=owner, pid=pid, pid_start=start,
                                       heartbeat_at=beat, started_at=started, here=here,
                                       now=now)}
                for uid, kind, status, owner, pid, start, beat, started in rows]

    def journal(self, uid: str) -> list[tuple[str, str, str]]:
        """(host, step, status) of the run's journal."""
        return [(h, s, st) for h, s, st in self.store_query(
            "SELECT n.name, j.step, j.status FROM journal j JOIN runs r ON r.id = j.run_id "
            "JOIN nodes n ON n.id = j.node_id WHERE r.uid = ? ORDER BY j.id", (uid,))]


def http(url: str, body: bytes | None = None, token: str | None = None,
         timeout: float = 15) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET",
                                 headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
            try:
                return resp.status, json.loads(raw or b"{}")
            except ValueError:
                return resp.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


@contextlib.contextmanager
def crash_lab(root: Path, *, timeout: float = 600) -> Iterator[CrashLab]:
    """``lab up`` with two fleet hosts at ``root``, configured for the trials; torn down (serve
    stopped, ``lab down --purge``) on the way out, also after a failure."""
    lab = CrashLab(root)
    try:
        r = metalchain("lab", "up", "--dir", str(root), "--nodes", "0", "--fleet",
                       str(len(HOSTS)), "--subnet", SUBNET, timeout=timeout)
        _must(r, "lab up")
        lab.configure()
        yield lab
    finally:
        try:
            lab.serve_stop()
        finally:
            metalchain("lab", "down", "--purge", "--dir", str(root), timeout=timeout)


# -- the checks every trial ends with ---------------------------------------------------------

SKIP_DIRS = {"upper", "work", "root"}   # a fleet host's file systems (under lab/fleet/HOST)


def integrity(root: Path) -> list[str]:
    """What is half-written under the site: the store's integrity check, and every JSON,
    JSON-lines and YAML file parsed."""
    problems: list[str] = []
    db = root / "state" / "metalchain.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        verdict = [r[0] for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()
    if verdict != ["ok"]:
        problems.append(f"integrity_check: {verdict[:5]}")
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.parent.name == "fleet":
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            path = here / name
            try:
                if name.endswith(".json"):
                    json.loads(path.read_text(encoding="utf-8"))
                elif name.endswith(".jsonl"):
                    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                        if line.strip():
                            try:
                                json.loads(line)
                            except ValueError:
                                problems.append(f"{path.relative_to(root)}:{k}: a torn line")
                elif name.endswith((".yml", ".yaml")):
                    yaml.safe_load(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue   # removed while walking (a temp file renamed into place)
            except (ValueError, yaml.YAMLError, UnicodeDecodeError) as exc:
                problems.append(f"{path.relative_to(root)}: {exc.__class__.__name__}")
    return problems


def common_checks(lab: CrashLab, trial: Trial) -> None:
    """intact, no run left running, no lease left, no action running, incidents terminal."""
    trial.violations += integrity(lab.root)
    for run in lab.runs():
        if run["status"] == "running":
            trial.violations.append(f"run {run['uid']} ({run['kind']}) still shows running")
    left = lab.store_query("SELECT n.name, l.holder, l.pid FROM leases l "
                           "JOIN nodes n ON n.id = l.node_id")
    if left:
        trial.violations.append(f"leases left: {left}")
    running = lab.store_query("SELECT id FROM remediation_actions WHERE outcome = 'running'")
    if running and lab.serve_proc is None:
        trial.violations.append(f"remediation actions left running: {running}")
    states = lab.store_query("SELECT id, state FROM incidents")
    open_ = [(i, s) for i, s in states if s not in TERMINAL_INCIDENT]
    if open_:
        trial.violations.append(f"incidents not terminal: {open_}")


# -- killing one process ----------------------------------------------------------------------

def _choose_kill(rng: random.Random, points: Sequence[str], max_hit: int,
                 delays: tuple[float, float]) -> tuple[str, dict[str, str], float | None]:
    """Half the trials a named crash point (hit K of up to ``max_hit``), half a random delay."""
    if rng.random() < 0.5:
        point = rng.choice(points)
        hit = 1 if point in ("run.before_end", "serve.after_ack", "serve.claimed",
                             "serve.action_started", "serve.action_done") \
            else rng.randint(1, max_hit)
        return f"hook:{point}#{hit}", {CRASH_ENV: f"{point}#{hit}"}, None
    delay = round(rng.uniform(*delays), 3)
    return f"random:{delay}", {}, delay


def _run_until_killed(argv: list[str], env: dict[str, str], delay: float | None,
                      timeout: float = 120) -> tuple[int, str]:
    """Start the controller command; SIGKILL it after ``delay`` s (None: let its crash point
    do it). Its exit code (-9 when killed) and stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    try:
        if delay is not None:
            try:
                proc.wait(delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        out, _err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out


def _newest_run(lab: CrashLab, kind: str, before: set[str]) -> dict[str, Any] | None:
    return next((r for r in lab.runs() if r["kind"] == kind and r["uid"] not in before), None)


# -- scenario: metalchain run, then --resume ----------------------------------------------------

def trial_run(lab: CrashLab, n: int, rng: random.Random) -> Trial:
    kill, env, delay = _choose_kill(rng, RUN_POINTS, 3 * len(HOSTS), RUN_DELAYS)
    trial = Trial("run", n, kill)
    t0 = time.monotonic()
    name = f"crash-run-{n}"
    (lab.root / "playbooks" / f"{name}.yml").write_text(run_playbook(n))
    before = {r["uid"] for r in lab.runs()}
    code, _out = _run_until_killed([METALCHAIN, "--site", str(lab.root), "run", name,
                                    "--json"], env, delay)
    trial.killed = code == -signal.SIGKILL
    killed_run = _newest_run(lab, "playbook", before)
    in_doubt = set()
    if killed_run is not None:
        in_doubt = {(h, s.split(" / ", 1)[1]) for h, s, st in lab.journal(killed_run["uid"])
                    if st == "intent"}
        trial.detail["killed_journal"] = lab.journal(killed_run["uid"])
    if trial.killed:
        if killed_run is not None:
            r = lab.cli("run", name, "--resume", killed_run["uid"], "--json")
        else:   # killed before the run was recorded: nothing to resume, run it again
            r = lab.cli("run", name, "--json")
        trial.detail["follow_up"] = "resume" if killed_run is not None else "run again"
        _check_follow_up(trial, r)
        if killed_run is not None:
            shown = next((x for x in lab.runs() if x["uid"] == killed_run["uid"]), None)
            if shown is None or shown["status"] != "ok":
                trial.violations.append(f"the resumed run is {shown and shown['status']}")
    elif code != 0:
        trial.violations.append(f"the run was not killed and exited {code}")
    for host in HOSTS:
        lines = lab.host_lines(host, f"/var/lib/crash/run/t{n}/count")
        for letter, step, guarded in (("a", "guarded", True), ("b", "unguarded", False),
                                      ("c", "slow guarded", True)):
            got = lines.count(letter)
            if got == 1:
                continue
            if got == 2 and not guarded and (host, step) in in_doubt:
                trial.in_doubt_repeats += 1   # documented: an unguarded command in doubt
                continue
            trial.violations.append(f"{host}: step '{step}' ran {got} times on the host")
    common_checks(lab, trial)
    trial.seconds = round(time.monotonic() - t0, 2)
    return trial


def _check_follow_up(trial: Trial, r: subprocess.CompletedProcess[str]) -> None:
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        trial.violations.append(f"follow-up printed no JSON (exit {r.returncode}): "
                                f"{r.stderr[-500:]}")
        return
    if doc.get("held"):
        trial.violations.append(f"a stale lease blocked the follow-up: {doc['held']}")
    if r.returncode != 0:
        trial.violations.append(f"follow-up exited {r.returncode}: {r.stdout[-800:]}"
                                f"{r.stderr[-400:]}")


# -- scenario: metalchain apply, then the same apply again --------------------------------------

def trial_apply(lab: CrashLab, n: int, rng: random.Random) -> Trial:
    kill, env, delay = _choose_kill(rng, APPLY_POINTS, len(HOSTS), APPLY_DELAYS)
    trial = Trial("apply", n, kill)
    t0 = time.monotonic()
    gen = 1000 + n
    counted = ("/var/lib/crash/apply/once", "/var/lib/crash/apply/slow",
               "/var/lib/crash/apply/starts")
    base = {(h, f): len(lab.host_lines(h, f)) for h in HOSTS for f in counted}
    before = {r["uid"] for r in lab.runs()}
    argv = [METALCHAIN, "--site", str(lab.root), "apply", "--role", "crashrole", "fleet",
            "-e", f"crash_gen={gen}", "--json"]
    code, _out = _run_until_killed(argv, env, delay)
    trial.killed = code == -signal.SIGKILL
    killed_run = _newest_run(lab, "apply", before)
    in_doubt = set()
    if killed_run is not None:
        in_doubt = {h for h, _s, st in lab.journal(killed_run["uid"]) if st == "intent"}
    if trial.killed:
        r = lab.cli(*argv[1:])
        _check_follow_up(trial, r)
    elif code != 0:
        trial.violations.append(f"the apply was not killed and exited {code}")
    for host in HOSTS:
        for f in counted:
            got = len(lab.host_lines(host, f)) - base[(host, f)]
            if got == 1:
                continue
            # A handler (the restart) owed by an action script that was cut, or whose
            # outcome never landed, runs again: convergence, not once (counted apart).
            if got == 2 and f.endswith("starts") and host in in_doubt:
                trial.in_doubt_repeats += 1
                continue
            trial.violations.append(f"{host}: {Path(f).name} changed by {got} (expected 1)")
        conf = lab.host_lines(host, "/var/lib/crash/apply/conf")
        if conf != [f"gen {gen}"]:
            trial.violations.append(f"{host}: conf is {conf}, not gen {gen}")
    common_checks(lab, trial)
    trial.seconds = round(time.monotonic() - t0, 2)
    return trial


# -- scenario: metalchain serve, killed between the webhook and the end of its action ----------

def trial_serve(lab: CrashLab, n: int, rng: random.Random) -> Trial:
    kill, env, delay = _choose_kill(rng, SERVE_POINTS, 2, SERVE_DELAYS)
    trial = Trial("serve", n, kill)
    t0 = time.monotonic()
    host = HOSTS[n % len(HOSTS)]
    unit = "crash-serve.service"
    lab.exec_(host, f"systemctl stop {unit}; systemctl reset-failed {unit} 2>/dev/null; true")
    base = len(lab.host_lines(host, "/var/lib/crash/serve/starts"))
    lab.serve_start(env)
    status, answer = lab.post_alert(host, unit, f"crash-{n}-{os.urandom(4).hex()}")
    if status != 200 or not answer.get("incidents"):
        trial.violations.append(f"the receiver answered {status} {answer}")
        lab.serve_stop()
        return trial
    incident = int(answer["incidents"][0])
    proc = lab.serve_proc
    if delay is not None:
        _wait_gone(proc, delay)
        if proc is not None and proc.poll() is None:
            lab.serve_stop(signal.SIGKILL)
    else:
        # The crash point fires inside serve; if the incident ends first, it was not reached.
        deadline = time.monotonic() + 60
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            if _incident_state(lab, incident) in TERMINAL_INCIDENT:
                break
            time.sleep(0.05)
    code = proc.poll() if proc is not None else None
    trial.killed = code == -signal.SIGKILL
    trial.detail["state_at_kill"] = _incident_state(lab, incident)
    lab.serve_stop()   # SIGTERM: a serve that was not killed ends here
    lab.serve_start()
    try:
        deadline = time.monotonic() + 90
        while _incident_state(lab, incident) not in TERMINAL_INCIDENT:
            if time.monotonic() > deadline:
                trial.violations.append(f"incident {incident} still "
                                        f"{_incident_state(lab, incident)} after 90 s")
                break
            time.sleep(0.05)
    finally:
        lab.serve_stop()
    state = _incident_state(lab, incident)
    if state != "healed":
        trial.violations.append(f"incident {incident} ended {state}, not healed")
    got = len(lab.host_lines(host, "/var/lib/crash/serve/starts")) - base
    if got != 1:
        trial.violations.append(f"{host}: {unit} was started {got} times (expected 1)")
    trial.detail["actions"] = lab.store_query(
        "SELECT action, outcome FROM remediation_actions WHERE incident_id = ?", (incident,))
    common_checks(lab, trial)
    trial.seconds = round(time.monotonic() - t0, 2)
    return trial


def _wait_gone(proc: subprocess.Popen[bytes] | None, delay: float) -> None:
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(delay)


def _incident_state(lab: CrashLab, incident: int) -> str | None:
    rows = lab.store_query("SELECT state FROM incidents WHERE id = ?", (incident,))
    return rows[0][0] if rows else None


# -- scenario: metalchain provision (real QEMU nodes under TCG; the lab lock) ---------------------

NODE = "node1"
#: The lifecycle states a provision passes through, each a crash point (provision.<state>).
PROVISION_STATES = ("powering_on", "pxe_booting", "installing", "installed", "rebooting",
                    "active")
IN_PROGRESS = ("powering_on", "pxe_booting", "installing", "installed", "rebooting")
INSTALL_DONE = "] done; rebooting"          # the installer's last line on the node's console


def _node_state(lab: CrashLab, node: str = NODE) -> str | None:
    rows = lab.store_query("SELECT state FROM nodes WHERE name = ?", (node,))
    return rows[0][0] if rows else None


def _installs(lab: CrashLab, node: str = NODE) -> int:
    """Installs that ran to their end on the node, read from its serial console (the node's
    own output, not our records)."""
    log = lab.root / "lab" / "nodes" / node / "serial.log"
    try:
        return log.read_text(encoding="utf-8", errors="replace").count(INSTALL_DONE)
    except FileNotFoundError:
        return 0


def trial_provision(lab: CrashLab, n: int, rng: random.Random, state: str | None = None
                    ) -> Trial:
    """``provision NODE --force --retry`` killed when the node reaches ``state`` (a crash
    point; random when None), then the controller restarted (``serve --no-images``, which
    re-checks nodes left in progress), then ``provision --retry`` if the node failed.
    Once: an install that had reported done is never run again."""
    state = state or rng.choice(PROVISION_STATES)
    trial = Trial("provision", n, f"hook:provision.{state}#1")
    t0 = time.monotonic()
    base = _installs(lab)
    argv = [METALCHAIN, "--site", str(lab.root), "provision", NODE, "--force", "--retry",
            "--json"]
    code, _out = _run_until_killed(argv, {CRASH_ENV: f"provision.{state}#1"}, None,
                                   timeout=900)
    trial.killed = code == -signal.SIGKILL
    at_kill = _node_state(lab)
    done_at_kill = _installs(lab) - base
    trial.detail.update(state_at_kill=at_kill, installs_at_kill=done_at_kill)
    if at_kill in IN_PROGRESS:
        serve = subprocess.Popen([METALCHAIN, "--site", str(lab.root), "serve", "--no-images"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while _node_state(lab) in IN_PROGRESS and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(30)
    after_restart = _node_state(lab)
    trial.detail["after_restart"] = after_restart
    if after_restart in IN_PROGRESS:
        trial.violations.append(f"{NODE} still {after_restart} after the restart")
    if after_restart == "provision_failed":
        r = lab.cli("provision", NODE, "--retry", "--json", timeout=900)
        trial.detail["retry_exit"] = r.returncode
    final = _node_state(lab)
    if final != "active":
        trial.violations.append(f"{NODE} ended {final}, not active")
    if at_kill not in IN_PROGRESS:
        _next_run_takes_over(lab, trial)
    installs = _installs(lab) - base
    trial.detail["installs"] = installs
    if installs > 1 and done_at_kill >= 1:
        trial.violations.append(f"{NODE}: installed {installs} times; the first had ended")
    elif installs > 1:
        trial.in_doubt_repeats += 1   # cut before its end, installed again by --retry
    common_checks(lab, trial)
    trial.seconds = round(time.monotonic() - t0, 2)
    return trial


def _next_run_takes_over(lab: CrashLab, trial: Trial) -> None:
    """Killed once the node was ``active``, no controller process follows (nothing is left in
    progress): the dead provision's lease of the node is still in the store. The contract
    (README, host leases) is that it blocks nothing -- the next run on this machine takes it
    over at once -- so that is what is checked, with a run that takes the node's lease and
    changes nothing (``power on`` of a node that is on); after it no lease may be left."""
    left = lab.store_query("SELECT n.name FROM leases l JOIN nodes n ON n.id = l.node_id")
    trial.detail["leases_after_kill"] = len(left)
    if not left:
        return
    before = lab.store_query("SELECT COUNT(*) FROM audit WHERE action = 'lease_take_over'")
    r = lab.cli("power", "on", NODE, timeout=120)
    after = lab.store_query("SELECT COUNT(*) FROM audit WHERE action = 'lease_take_over'")
    took = after[0][0] > before[0][0]       # audited by the store when a lease changes hands
    trial.detail["next_run_took_over"] = took
    if r.returncode != 0 or not took:
        trial.violations.append(f"the next run on {NODE} did not take the dead provision's "
                                f"lease over (exit {r.returncode}): {(r.stdout + r.stderr)[-300:]}")


@contextlib.contextmanager
def provision_lab(root: Path, *, timeout: float = 900) -> Iterator[CrashLab]:
    """``lab up`` with one QEMU node (hold /tmp/metalchain-lab.lock), provisioned once."""
    lab = CrashLab(root)
    try:
        _must(metalchain("lab", "up", "--dir", str(root), "--nodes", "1", "--fleet", "0",
                         "--subnet", SUBNET, timeout=timeout), "lab up")
        lab.set_ports(RECEIVER_PORT + 10)
        _must(lab.cli("provision", NODE, "--json", timeout=timeout), "the first provision")
        yield lab
    finally:
        metalchain("lab", "down", "--purge", "--dir", str(root), timeout=timeout)


TRIALS: dict[str, Callable[[CrashLab, int, random.Random], Trial]] = {
    "run": trial_run, "apply": trial_apply, "serve": trial_serve}


def campaign(lab: CrashLab, counts: dict[str, int], *, seed: int = 13,
             on_trial: Callable[[Trial], None] | None = None) -> list[Trial]:
    """``counts[scenario]`` trials of each scenario, interleaved, seeded."""
    rng = random.Random(seed)
    order = [s for s in SCENARIOS for _ in range(counts.get(s, 0))]
    rng.shuffle(order)
    trials: list[Trial] = []
    for n, scenario in enumerate(order, 1):
        trial = TRIALS[scenario](lab, n, rng)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
    return trials


def summary(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    """scenario -> trials, killed, passed, in-doubt repeats, median seconds, failures."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in sorted({t.scenario for t in trials}):
        mine = [t for t in trials if t.scenario == scenario]
        secs = sorted(t.seconds for t in mine)
        out[scenario] = {
            "trials": len(mine), "killed": sum(t.killed for t in mine),
            "hooks": sum(t.kill.startswith("hook:") for t in mine),
            "passed": sum(t.passed for t in mine),
            "in_doubt_repeats": sum(t.in_doubt_repeats for t in mine),
            "median_s": secs[len(secs) // 2] if secs else 0.0,
            "failures": [{"n": t.n, "kill": t.kill, "violations": t.violations}
                         for t in mine if not t.passed]}
    return out

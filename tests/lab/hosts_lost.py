"""Hosts lost in the middle of a run, for a test module or a benchmark (no pytest in here:
bench/hosts_lost.py uses it).

A trial runs the playbook ``lost`` on every fleet host of a lab site: a slow ``command``
step, then a slow ``apply_role`` (a file and a slow command in the site's role
``lostrole``). Chosen hosts are lost at a chosen phase — killed, frozen or cut off
(``lab.faults``) the moment the host itself shows it is inside that phase (a marker file it
writes, read through its root directory from the controller, not over SSH). Then:

* every other host must end as in a run without faults: the same steps with the same
  statuses and changes (compared with a baseline run), and their side effects on the host;
* exactly the lost hosts are ``unreachable``, each within its limit: the time from the fault
  to the host's ``host_step_end`` event in the run's event log, against the SSH keepalive
  timeout (``configure.ssh``) — or a few seconds for a killed host, whose kernel resets the
  connection;
* after healing (reboot with its disk, SIGCONT, link up) ``run lost --limit @failed`` runs
  exactly the lost hosts, and they converge.

Every value a trial writes carries its token (``T0001``...), so a trial's side effects are
told from an earlier one's.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from configure.ssh import KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT
from lab import faults
from lab.fleet import HostRecord, load_records

METALCHAIN = str(Path(sys.executable).parent / "metalchain")
PHASES = ("command", "apply")
#: Seconds each slow part of a trial sleeps on the hosts (the window faults are injected in).
SLEEP = 3
#: A killed host's connection is reset by its kernel: reported at once, give or take the
#: event loop and a loaded machine.
KILL_LIMIT = 5.0
#: A frozen or cut host answers no keepalive: lost after KEEPALIVE_TIMEOUT, with the probe
#: sent up to KEEPALIVE_INTERVAL after the fault, plus scheduling slack on a busy machine.
SILENT_LIMIT = KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + 3.0

_TOKEN = re.compile(r"T[0-9]{4}")

PLAYBOOK = f"""\
- name: lost hosts
  hosts: fleet
  steps:
    - name: slow command
      command:
        shell: "touch /root/lost-command-{{{{ trial }}}}; sleep {SLEEP};
          echo {{{{ trial }}}} >> /root/lost-done"
    - name: slow apply
      apply_role: lostrole
"""

RECIPE = f"""\
- file: {{path: /root/lost-trial, content: "{{{{ trial }}}}\\n", mode: '0644'}}
- command:
    argv: [sh, -c, "touch /root/lost-apply-{{{{ trial }}}}; sleep {SLEEP};
      touch /root/lost-act-{{{{ trial }}}}"]
    creates: /root/lost-act-{{{{ trial }}}}
    name: slow act
"""


class CampaignError(RuntimeError):
    """A trial could not be carried out (not: a trial that found a defect)."""


@dataclass(frozen=True)
class Fault:
    host: str
    kind: str    # lab.faults.FAULTS
    phase: str   # PHASES


@dataclass
class FaultResult:
    host: str
    kind: str
    phase: str
    status: str = ""
    message: str = ""
    detect_s: float | None = None     # fault -> host_step_end (unreachable) in the event log
    limit_s: float = 0.0
    heal_s: float | None = None
    rerun_status: str = ""

    @property
    def passed(self) -> bool:
        return (self.status == "unreachable" and self.detect_s is not None
                and self.detect_s <= self.limit_s and self.rerun_status in ("ok", "changed"))


@dataclass
class TrialResult:
    trial: str
    hosts: int
    faults: list[FaultResult] = field(default_factory=list)
    run_s: float = 0.0
    rerun_s: float = 0.0
    unaffected: int = 0
    unaffected_differ: dict[str, str] = field(default_factory=dict)  # host -> what differs
    lost_set_exact: bool = False
    unexpected_lost: list[str] = field(default_factory=list)
    rerun_hosts: list[str] = field(default_factory=list)
    rerun_exact: bool = False
    effects_missing: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (not self.unaffected_differ and self.lost_set_exact and self.rerun_exact
                and not self.effects_missing and all(f.passed for f in self.faults))

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["passed"] = self.passed
        for f, d in zip(self.faults, doc["faults"], strict=True):
            d["passed"] = f.passed
        return doc


def prepare(site: Path) -> None:
    """Write the trial's playbook and role into the site."""
    role = site / "playbooks" / "roles" / "lostrole"
    role.mkdir(parents=True, exist_ok=True)
    (site / "playbooks" / "lost.yml").write_text(PLAYBOOK, encoding="utf-8")
    (role / "recipe.yml").write_text(RECIPE, encoding="utf-8")


def records(site: Path) -> dict[str, HostRecord]:
    return {r.name: r for r in load_records(site / "lab")}


def _run(site: Path, token: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([METALCHAIN, "--site", str(site), "run", "lost", "--json",
                             "-e", f"trial={token}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise CampaignError(f"the run did not end within {timeout:g} s (it was killed): "
                            f"{err[-2000:]}") from None
    if proc.returncode not in (0, 1):
        raise CampaignError(f"run exited {proc.returncode}: {err[-2000:]}")
    try:
        return json.loads(out)
    except ValueError as exc:
        raise CampaignError(f"run printed no JSON document ({exc}): {out[-500:]} "
                            f"{err[-1500:]}") from None


def normalized(doc: dict[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    """Per host: (step, status, changes) with the trials' tokens taken out: what must be the
    same for a host in every trial it is not lost in."""
    return {h: [(s["step"], s["status"], _TOKEN.sub("TRIAL", json.dumps(s["changes"])))
                for s in v["steps"]]
            for h, v in doc["hosts"].items()}


def _events(site: Path, run_uid: str) -> list[dict[str, Any]]:
    path = site / "runs" / f"{run_uid}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def baseline(site: Path, *, timeout: float = 600) -> dict[str, Any]:
    """Two runs without faults: the first creates what every later run updates (a file's
    first change reads differently), the second's normalized results are what unaffected
    hosts must match."""
    docs = []
    for token in ("T9998", "T9999"):
        doc = _finish(_run(site, token), timeout)
        if doc["exit_code"] != 0:
            bad = {h: v["status"] for h, v in doc["hosts"].items() if v["status"] != "changed"}
            raise CampaignError(f"the baseline run {token} failed: {bad}")
        docs.append(doc)
    return {"results": normalized(docs[-1])}


def _marker(record: HostRecord, phase: str, token: str) -> Path:
    return Path(record.root, "root", f"lost-{phase}-{token}")


def _effects_missing(record: HostRecord, token: str) -> str:
    root = Path(record.root, "root")
    missing = []
    done = root / "lost-done"
    if not done.exists() or token not in done.read_text(encoding="utf-8").split():
        missing.append("lost-done")
    if not (root / f"lost-act-{token}").exists():
        missing.append(f"lost-act-{token}")
    trial = root / "lost-trial"
    if not trial.exists() or trial.read_text(encoding="utf-8").strip() != token:
        missing.append("lost-trial")
    return ", ".join(missing)


def trial(site: Path, token: str, plan: list[Fault], base: dict[str, Any], *,
          timeout: float = 600, heal_timeout: float = 180) -> TrialResult:
    """One trial: the run with ``plan``'s faults, the heals, the ``@failed`` re-run."""
    hosts = records(site)
    for f in plan:
        if f.host not in hosts or f.kind not in faults.FAULTS or f.phase not in PHASES:
            raise CampaignError(f"bad fault {f}")
    result = TrialResult(token, len(hosts))
    started = time.monotonic()
    proc = _run(site, token)
    fault_at: dict[str, float] = {}
    pending = list(plan)
    try:
        while pending:
            if proc.poll() is not None:
                raise CampaignError(f"the run ended before every fault was injected "
                                    f"(left: {pending})")
            if time.monotonic() - started > timeout:
                raise CampaignError(f"faults not injected within {timeout:g} s: {pending}")
            for f in list(pending):
                if _marker(hosts[f.host], f.phase, token).exists():
                    faults.inject(f.kind, hosts[f.host])
                    fault_at[f.host] = time.time()
                    pending.remove(f)
            time.sleep(0.02)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    doc = _finish(proc, timeout)
    result.run_s = round(time.monotonic() - started, 2)
    ended = {e["host"]: e for e in _events(site, doc["run"])
             if e["event"] == "host_step_end" and e.get("status") == "unreachable"}
    lost = {h for h, v in doc["hosts"].items() if v["status"] != "changed"}
    planned = {f.host for f in plan}
    result.lost_set_exact = lost == planned
    result.unexpected_lost = sorted(lost - planned)
    for f in plan:
        r = FaultResult(f.host, f.kind, f.phase,
                        limit_s=KILL_LIMIT if f.kind == "kill" else SILENT_LIMIT)
        host = doc["hosts"].get(f.host, {})
        r.status = host.get("status", "missing")
        r.message = next((s["message"] for s in host.get("steps", [])
                          if s["status"] != "changed"), "")[:300]
        if f.host in ended:
            r.detect_s = round(ended[f.host]["ts"] - fault_at[f.host], 2)
        result.faults.append(r)
    want = base["results"]
    got = normalized(doc)
    for h in sorted(set(hosts) - planned):
        result.unaffected += 1
        if got.get(h) != want.get(h):
            result.unaffected_differ[h] = f"{got.get(h)} != {want.get(h)}"
        missing = _effects_missing(hosts[h], token)
        if missing:
            result.effects_missing[h] = missing
    by_host = {r.host: r for r in result.faults}
    for f in plan:
        healing = time.monotonic()
        hosts[f.host] = faults.heal(f.kind, hosts[f.host], timeout=heal_timeout)
        by_host[f.host].heal_s = round(time.monotonic() - healing, 2)
    again = time.monotonic()
    redo = _finish(_run(site, token, "--limit", "@failed"), timeout)
    result.rerun_s = round(time.monotonic() - again, 2)
    result.rerun_hosts = sorted(redo["hosts"])
    result.rerun_exact = set(redo["hosts"]) == planned
    for h, v in redo["hosts"].items():
        if h in by_host:
            by_host[h].rerun_status = v["status"]
    for h in planned:
        missing = _effects_missing(hosts[h], token)
        if missing:
            result.effects_missing[h] = f"after the re-run: {missing}"
    return result


def plan_faults(hosts: list[str], per_kind: int, trial_no: int) -> list[Fault]:
    """``per_kind`` hosts of each fault kind, the phases alternating, the hosts moving on
    each trial so every trial loses other hosts.

    >>> plan_faults([f"h{i}" for i in range(6)], 1, 0)
    [Fault(host='h0', kind='kill', phase='command'), Fault(host='h2', kind='freeze', \
phase='apply'), Fault(host='h4', kind='cut', phase='command')]
    """
    wanted = per_kind * len(faults.FAULTS)
    if wanted > len(hosts) // 2:
        raise CampaignError(f"{wanted} faults need at least {2 * wanted} hosts")
    stride = len(hosts) // wanted
    plan = []
    for n in range(wanted):
        host = hosts[(n * stride + trial_no) % len(hosts)]
        kind = faults.FAULTS[n % len(faults.FAULTS)]
        phase = PHASES[(n + trial_no) % len(PHASES)]
        plan.append(Fault(host, kind, phase))
    return plan

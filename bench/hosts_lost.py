"""Hosts lost mid-run at full size: fleet hosts killed, frozen (SIGSTOP) or cut off (link
down) while `metalchain run` is inside a command step or an apply, on a lab of 50 hosts.

Per trial: one run of the playbook of tests/lab/hosts_lost.py on every host with
``--per-kind`` hosts of each fault kind lost (phases alternating), the heals (reboot with
its disk / SIGCONT / link up), then `run --limit @failed`. Checked per trial: the other
hosts' steps, statuses and changes equal a fault-free baseline run's and their side effects
are on the hosts; exactly the lost hosts are `unreachable`, each within its limit (fault ->
its host_step_end event; the SSH keepalive timeout of configure/ssh.py for frozen and cut
hosts, 5 s for killed ones); the re-run runs exactly them and they converge.

Usage (as root, from the repository; the lab is torn down afterwards):
    flock /tmp/metalchain-light.lock .venv/bin/python bench/hosts_lost.py --full \\
        --json /tmp/hosts_lost.json
    flock /tmp/metalchain-light.lock .venv/bin/python bench/hosts_lost.py   # 10 hosts, 1 trial
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import report

from tests.lab import hosts_lost as hl
from tests.lab.fleetsite import fleet_site

SUBNET = "10.108.0.0/24"


def table(trials: list[hl.TrialResult]) -> list[dict[str, Any]]:
    rows = []
    for kind in ("kill", "freeze", "cut"):
        found = [f for t in trials for f in t.faults if f.kind == kind]
        times = [f.detect_s for f in found if f.detect_s is not None]
        rows.append({
            "fault": kind, "lost": len(found), "passed": sum(f.passed for f in found),
            "unreachable": sum(f.status == "unreachable" for f in found),
            "detect_median_s": round(statistics.median(times), 2) if times else None,
            "detect_max_s": max(times) if times else None,
            "limit_s": found[0].limit_s if found else None,
            "heal_max_s": max((f.heal_s or 0 for f in found), default=None),
            "rerun_ok": sum(f.rerun_status in ("ok", "changed") for f in found)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="50 hosts, 5 trials, 2 per kind")
    parser.add_argument("--fleet", type=int)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--per-kind", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fleet = args.fleet or (50 if args.full else 10)
    trials = args.trials or (5 if args.full else 1)
    per_kind = args.per_kind or (2 if args.full else 1)
    with tempfile.TemporaryDirectory(prefix="hosts-lost-") as tmp:
        up = time.monotonic()
        with fleet_site(Path(tmp) / "site", fleet, SUBNET, timeout=900) as site:
            lab_up_s = round(time.monotonic() - up, 1)
            hl.prepare(site)
            started = time.monotonic()
            base = hl.baseline(site)
            baseline_s = round(time.monotonic() - started, 1)
            hosts = sorted(hl.records(site))
            results = []
            for n in range(trials):
                result = hl.trial(site, f"T{n + 1:04d}", hl.plan_faults(hosts, per_kind, n),
                                  base)
                results.append(result)
                print(f"trial {n + 1}: {'passed' if result.passed else 'FAILED'}; run "
                      f"{result.run_s} s, re-run {result.rerun_s} s", file=sys.stderr)
    rows = table(results)
    print(f"{'fault':8} {'lost':>5} {'passed':>6} {'unreach':>7} {'med s':>6} {'max s':>6} "
          f"{'limit s':>7} {'heal max':>8} {'rerun ok':>8}", file=sys.stderr)
    for r in rows:
        print(f"{r['fault']:8} {r['lost']:>5} {r['passed']:>6} {r['unreachable']:>7} "
              f"{r['detect_median_s']!s:>6} {r['detect_max_s']!s:>6} {r['limit_s']!s:>7} "
              f"{r['heal_max_s']!s:>8} {r['rerun_ok']:>8}", file=sys.stderr)
    figures = {"fleet": fleet, "trials": trials, "per_kind": per_kind, "lab_up_s": lab_up_s,
               "baseline_run_s": baseline_s, "table": rows,
               "trials_passed": sum(t.passed for t in results),
               "unaffected_hosts_checked": sum(t.unaffected for t in results),
               "unaffected_differ": sum(len(t.unaffected_differ) for t in results),
               "details": [t.to_json() for t in results]}
    report(figures, args.json)
    return 0 if all(t.passed for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())

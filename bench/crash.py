"""Crash anywhere: SIGKILL `metalchain run`, `apply` and `serve` at random points (named
crash points and random delays), finish the work (`run --resume`, the same apply again, serve
started again) and check after every trial that nothing ran twice on the hosts, nothing is
half-written, nothing is left running or locked. The scenarios and their checks are
tests/lab/crashlab.py (shared with tests/lab/test_crash.py, which runs a few of them in CI).

Usage (from the repository, as root):
    # run, apply, serve: two fleet hosts, no QEMU
    flock /tmp/metalchain-light.lock .venv/bin/python bench/crash.py --trials 210 \\
        [--scenario run --scenario apply --scenario serve] [--seed 13] [--json FILE]
    # provision: one QEMU node under TCG (minutes a trial), killed in each lifecycle state
    flock /tmp/metalchain-lab.lock .venv/bin/python bench/crash.py --trials 0 --provision 12

``--trials`` is the total, split evenly over the scenarios. Prints one line per trial, then a
table per scenario (trials, killed, at a named point, passed, in-doubt repeats, median seconds)
and the whole result as JSON (also written to ``--json``). Exit code 1 if a trial failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness import report  # noqa: E402 - after the path is set

from tests.lab import crashlab  # noqa: E402


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ("scenario", "trials", "killed", "at_point", "passed", "in_doubt", "median_s")
    lines = ["\t".join(head)]
    for name, r in rows.items():
        lines.append("\t".join(str(x) for x in (name, r["trials"], r["killed"], r["hooks"],
                                                r["passed"], r["in_doubt_repeats"],
                                                r["median_s"])))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=210, help="total trials (default 210)")
    ap.add_argument("--scenario", action="append", choices=crashlab.SCENARIOS)
    ap.add_argument("--provision", type=int, default=0, metavar="N",
                    help="also N provision trials, cycling through the lifecycle states "
                         "(a QEMU node: hold /tmp/metalchain-lab.lock)")
    ap.add_argument("--states", default=",".join(crashlab.PROVISION_STATES),
                    help="the lifecycle states the provision trials cycle through "
                         "(comma-separated; default all)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--keep", action="store_true", help="leave the lab's directory")
    ap.add_argument("--json", type=Path, help="also write the result to this file")
    args = ap.parse_args()
    states = [s for s in args.states.split(",") if s]
    unknown = [s for s in states if s not in crashlab.PROVISION_STATES]
    if unknown or not states:
        ap.error(f"--states: unknown {unknown or 'none given'}; known: "
                 f"{', '.join(crashlab.PROVISION_STATES)}")
    scenarios = args.scenario or list(crashlab.SCENARIOS)
    per = args.trials // len(scenarios)
    counts = {s: per for s in scenarios}
    root = Path(tempfile.mkdtemp(prefix="mc-crash-")) / "site"
    t0 = time.monotonic()

    def show(trial: crashlab.Trial) -> None:
        verdict = "ok" if trial.passed else "FAIL " + "; ".join(trial.violations)
        print(f"{trial.n:4d} {trial.scenario:6s} {trial.kill:28s} killed={int(trial.killed)} "
              f"doubt={trial.in_doubt_repeats} {trial.seconds:6.2f}s {verdict}", flush=True)

    trials: list[crashlab.Trial] = []
    setup_s = 0.0
    if args.trials > 0:
        with crashlab.crash_lab(root) as lab:
            setup_s = round(time.monotonic() - t0, 1)
            trials += crashlab.campaign(lab, counts, seed=args.seed, on_trial=show)
    if args.provision > 0:
        rng = random.Random(args.seed)
        with crashlab.provision_lab(root.parent / "prov") as lab:
            for k in range(args.provision):
                state = states[k % len(states)]
                trial = crashlab.trial_provision(lab, 10_000 + k, rng, state)
                show(trial)
                trials.append(trial)
    rows = crashlab.summary(trials)
    print(table(rows))
    report({"kind": "bench.crash", "seed": args.seed, "setup_s": setup_s,
            "total_s": round(time.monotonic() - t0, 1), "scenarios": rows,
            "trials": [t.to_json() for t in trials]}, args.json)
    if not args.keep:
        import shutil
        shutil.rmtree(root.parent, ignore_errors=True)
    return 0 if all(t.passed for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())

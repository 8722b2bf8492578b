"""BMC under loss at full size: power and boot-device calls through a lossy UDP relay in front
of a lab BMC driving one idle QEMU machine, at 10 %, 30 % and 50 % loss per direction with
random delays; actions counted on the QEMU side (tests/lab/bmcloss.py).

Prints a table (loss, calls, succeeded, failed clearly, hung, double actions, wrong state,
p50/p95/max latency) and the per-call results as JSON. ``--legacy`` runs power cycles the way
metalchain did before issue 13 (the chassis "cycle" control, resent on a lost reply) to show
the double actions the fix removes.

Usage (from the repository; one QEMU, torn down afterwards):
    nice -n 19 flock /tmp/metalchain-light.lock .venv/bin/python bench/bmc_loss.py --full \\
        --json /tmp/bmc_loss.json
    nice -n 19 flock /tmp/metalchain-light.lock .venv/bin/python bench/bmc_loss.py  # 12 calls
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import report

from tests.lab import bmcloss

BMC_PORT = 20811
RELAY_PORT = 20812
LEVELS = (0.1, 0.3, 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="60 calls per loss level")
    parser.add_argument("--calls", type=int, help="calls per loss level")
    parser.add_argument("--delay-max", type=float, default=0.05, help="seconds (uniform 0..)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--legacy", action="store_true",
                        help="power cycle as before issue 13 (chassis cycle, resent)")
    parser.add_argument("--levels", default=",".join(str(v) for v in LEVELS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    calls = args.calls or (60 if args.full else 12)
    levels = [float(v) for v in args.levels.split(",")]
    started = time.monotonic()
    with bmcloss.rig(BMC_PORT, RELAY_PORT, seed=args.seed, legacy=args.legacy) as rig:
        for n, loss in enumerate(levels):
            rig.level(loss, calls, (0.0, args.delay_max), seed=args.seed + n)
            print(f"loss {loss:.0%}: {calls} calls done", file=sys.stderr)
        results = rig.results
        relay = {"up": rig.relay.stats.up, "down": rig.relay.stats.down,
                 "dropped_up": rig.relay.stats.dropped_up,
                 "dropped_down": rig.relay.stats.dropped_down}
    rows = bmcloss.summary(results)
    header = ("loss", "calls", "succeeded", "failed_clearly", "failed_unexpectedly", "hung",
              "double_actions", "wrong_state", "over_limit", "p50_s", "p95_s", "max_s")
    print(" | ".join(header), file=sys.stderr)
    for row in rows:
        print(" | ".join(str(row[h]) for h in header), file=sys.stderr)
    report({"bench": "bmc_loss", "legacy": args.legacy, "calls_per_level": calls,
            "delay_s": [0.0, args.delay_max], "limits_s": bmcloss.LIMITS,
            "seconds": round(time.monotonic() - started, 1), "relay": relay, "table": rows,
            "calls": bmcloss.as_json(results)}, args.json)
    bad = sum(r["hung"] + r["wrong_state"] + r["failed_unexpectedly"] + r["over_limit"]
              + (0 if args.legacy else r["double_actions"]) for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

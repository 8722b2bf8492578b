"""A converged re-run of base + node_exporter on many fleet hosts: wall time, time per host and
SSH round trips per host, plus the first (changing) apply and `metalchain verify` for scale.

Usage (as root, from the repository):
    .venv/bin/python bench/converge.py [--fleet 50] [--repeat 3] [--keep] [--json FILE]

Brings up a lab of fleet hosts (10.86.0.0/24) in a temporary directory, builds and serves a
signed mirror with the roles' packages (the .deb cache makes this quick after the first time),
applies the roles once, then times --repeat converged re-runs, and tears everything down.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import METALCHAIN, BenchError, must, report, run

LONG = 1800  # seconds: the limit of one step (a lab up, a mirror build, an apply)
SUBNET = "10.86.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
MIRROR_PORT = 8088
PACKAGES = "sudo,systemd-timesyncd,prometheus-node-exporter"
ROLES = ("base", "node_exporter")


def apply(site: Path) -> tuple[float, dict]:
    roles = [a for r in ROLES for a in ("--role", r)]
    took, r = must([METALCHAIN, "--site", str(site), "apply", *roles, "fleet", "--json",
                    "--parallel", "100"], LONG)
    return took, json.loads(r.stdout)


def per_host(doc: dict) -> tuple[list[float], list[int]]:
    steps = [v["steps"][0] for v in doc["hosts"].values()]
    return [s["duration"] for s in steps], [s["round_trips"] for s in steps]


def verify(site: Path, hosts: int) -> tuple[float, int]:
    """`metalchain verify` through its Python entry point (the one `apply --verify` uses)."""
    from inventory.site import Site
    from orchestrate.actions import verify_hosts

    s = Site.open(site)
    try:
        names = [h for h in s.inventory.hosts if h.startswith("fleet")]
        start = time.monotonic()
        report = verify_hosts(s, names, list(ROLES), parallel=min(hosts, 50))
        return round(time.monotonic() - start, 2), report.exit_code
    finally:
        s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="Leave the lab up.")
    ap.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = ap.parse_args()
    site = Path(tempfile.mkdtemp(prefix="mc-converge-")) / "lab"
    figures: dict[str, object] = {"hosts": args.fleet, "roles": list(ROLES)}
    try:
        took, _ = must([METALCHAIN, "lab", "up", "--dir", str(site), "--nodes", "0",
                        "--fleet", str(args.fleet), "--subnet", SUBNET], LONG)
        figures["lab_up_s"] = round(took, 1)
        must([METALCHAIN, "--site", str(site), "mirror", "build", "--packages", PACKAGES,
              "--sign"], LONG)
        must([METALCHAIN, "--site", str(site), "mirror", "serve", "--daemon", "--address",
              CONTROLLER, "--port", str(MIRROR_PORT)], LONG)
        must([METALCHAIN, "--site", str(site), "facts", "fleet", "--parallel", "100"], LONG)
        took, first = apply(site)
        if first["counts"]["failed"] or first["counts"]["unreachable"]:
            raise BenchError(f"first apply failed: {json.dumps(first['counts'])}")
        durations, trips = per_host(first)
        figures["first_apply_s"] = round(took, 2)
        figures["first_apply_host_median_s"] = round(statistics.median(durations), 2)
        figures["first_apply_round_trips_per_host"] = sorted(set(trips))
        walls, host_medians, all_trips = [], [], set()
        for _ in range(args.repeat):
            took, doc = apply(site)
            if doc["counts"]["changed"] or doc["counts"]["ok"] != args.fleet:
                raise BenchError(f"not converged: {json.dumps(doc['counts'])}")
            durations, trips = per_host(doc)
            walls.append(took)
            host_medians.append(statistics.median(durations))
            all_trips.update(trips)
        figures["converged_wall_s"] = [round(w, 2) for w in walls]
        figures["converged_wall_median_s"] = round(statistics.median(walls), 2)
        figures["converged_host_median_s"] = round(statistics.median(host_medians), 3)
        figures["converged_round_trips_per_host"] = sorted(all_trips)
        figures["verify_s"], figures["verify_exit_code"] = verify(site, args.fleet)
    except BenchError as exc:
        print(f"converge: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            for argv, timeout in (([METALCHAIN, "--site", str(site), "mirror", "stop"], 60),
                                  ([METALCHAIN, "lab", "down", "--purge", "--dir", str(site)],
                                   600)):
                try:
                    run(argv, timeout)
                except BenchError as exc:
                    print(f"converge: {exc}", file=sys.stderr)
    report(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

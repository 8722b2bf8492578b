"""Power-on to active under TCG, from the state store's transitions.

Usage (as root, from the repository):
    .venv/bin/python bench/provision_timing.py [--nodes 2]

Brings up a lab with N blank nodes in a temporary directory, provisions them in parallel,
prints each node's seconds from power-on to every later state, and removes the lab.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness import METALCHAIN, must, run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--subnet", default="10.88.0.0/24")
    args = ap.parse_args()
    site = Path(tempfile.mkdtemp(prefix="mc-prov-")) / "lab"
    try:
        must([METALCHAIN, "lab", "up", "--dir", str(site), "--nodes", str(args.nodes),
              "--subnet", args.subnet], 300)
        wall, r = run([METALCHAIN, "--site", str(site), "provision", "nodes", "--json"], 900)
        nodes = json.loads(r.stdout)["nodes"]
        states = ["pxe_booting", "installing", "installed", "rebooting", "active"]
        print(f"{args.nodes} node(s) in parallel, wall clock {wall:.1f} s (images cached)")
        print("node    " + "".join(f"{s:>13}" for s in states))
        for name, n in nodes.items():
            t = n["timings"]
            print(f"{name:<8}" + "".join(f"{t.get(s, float('nan')):>13.1f}" for s in states))
        return r.returncode
    finally:
        run([METALCHAIN, "lab", "down", "--purge", "--dir", str(site)], 300)


if __name__ == "__main__":
    sys.exit(main())

"""How `metalchain exec` scales with the number of hosts: one host vs the whole fleet, against
plain OpenSSH run host after host (fifty round trips) measured in the same run.

Usage (as root, from the repository):
    .venv/bin/python bench/exec_fanout.py [--fleet 50] [--repeat 3] [--keep]

Brings up a lab with only fleet hosts in a temporary directory (unless --site points at an
existing lab site), prints medians and ratios, and tears the lab down again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import METALCHAIN, must, run


def timed(argv: list[str], timeout: float = 600) -> float:
    return must(argv, timeout)[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--site", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    site = args.site or Path(tempfile.mkdtemp(prefix="mc-bench-")) / "lab"
    own = args.site is None
    try:
        if own:
            up = timed([METALCHAIN, "lab", "up", "--dir", str(site), "--nodes", "0",
                        "--fleet", str(args.fleet), "--subnet", "10.81.0.0/24"])
            print(f"lab up with {args.fleet} fleet hosts: {up:.1f} s")
        inv = json.loads(must([METALCHAIN, "--site", str(site), "inventory", "list", "fleet",
                               "--json"], 60)[1].stdout)["hosts"]
        known = site / "bench_known_hosts"
        known.write_text("".join(f"{h['address']} {h['ssh']['host_key']}\n" for h in inv))
        key = site / "keys" / "id_ed25519"
        one = [timed([METALCHAIN, "--site", str(site), "exec", inv[0]["name"], "--",
                      "hostname"]) for _ in range(args.repeat)]
        many = [timed([METALCHAIN, "--site", str(site), "exec", "fleet", "--", "hostname"])
                for _ in range(args.repeat)]
        startup = [timed([METALCHAIN, "--version"]) for _ in range(args.repeat)]

        def sequential() -> float:
            start = time.monotonic()
            for h in inv:
                must(["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o",
                      "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}",
                      f"root@{h['address']}", "hostname"], 30)
            return time.monotonic() - start

        seq = [sequential() for _ in range(args.repeat)]
        m1, mn, ms, m0 = (statistics.median(x) for x in (one, many, seq, startup))
        print(f"hosts: {len(inv)}; medians of {args.repeat} runs (wall clock, CLI included)")
        print(f"  metalchain --version (CLI start-up):       {m0:6.2f} s")
        print(f"  metalchain exec, 1 host:                   {m1:6.2f} s")
        print(f"  metalchain exec, {len(inv)} hosts:                  {mn:6.2f} s")
        print(f"  OpenSSH client, {len(inv)} hosts one after another: {ms:6.2f} s")
        print(f"ratio exec {len(inv)} hosts / exec 1 host:     {mn / m1:5.2f}")
        print(f"ratio sequential ssh / exec {len(inv)} hosts:  {ms / mn:5.2f}")
    finally:
        if own and not args.keep:
            run([METALCHAIN, "lab", "down", "--purge", "--dir", str(site)], 300)
    return 0


if __name__ == "__main__":
    sys.exit(main())

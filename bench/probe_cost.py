"""CPU of the sysctl probe on this machine: the old form (sysctl -n and cat in two command
substitutions) against the current one (one cat of the /proc/sys file, the shell's read of
the sysctl.d file), 40 sysctls per script, each script run --runs times, interleaved.

    .venv/bin/python bench/probe_cost.py [--runs 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess

from configure.resources.system import Sysctl
from configure.ssh import quote_command

KEYS = ["net.ipv4.ip_forward", "net.ipv4.tcp_syncookies", "kernel.pid_max", "vm.swappiness",
        "net.core.somaxconn", "net.ipv4.tcp_fin_timeout", "kernel.threads-max",
        "vm.overcommit_memory", "net.ipv4.ip_local_port_range", "fs.file-max"] * 4


def old_probe(key: str) -> str:
    conf = quote_command([f"/etc/sysctl.d/90-metalchain-{key}.conf"])
    return (f"echo \"runtime=$(sysctl -n -- {quote_command([key])} 2>/dev/null)\"\n"
            f"echo \"persisted=$(cat {conf} 2>/dev/null)\"")


def script(probes: list[str]) -> str:
    return "exec 2>/dev/null\n" + "\n".join(f"( {p}\n)" for p in probes) + "\n"


def cpu_ms(text: str, runs: int) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run(["sh", "-c", text], capture_output=True, check=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used * 1000 / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    old = script([old_probe(k) for k in KEYS])
    new = script([Sysctl({"name": k, "value": 1}).probes()[0].script for k in KEYS])
    rows: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        rows["old"].append(cpu_ms(old, args.runs))
        rows["new"].append(cpu_ms(new, args.runs))
    for name, ms in rows.items():
        print(f"{name}: {len(KEYS)} sysctl probes, CPU ms per script: "
              + " / ".join(f"{m:.1f}" for m in ms))
    ratio = statistics.median(rows["old"]) / statistics.median(rows["new"])
    print(f"old/new (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()

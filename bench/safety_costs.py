"""What the operator-safety checks cost a run before it contacts a host: per-host leases in the
state store and validation before contact, at growing fleet sizes.

In-process, on a throw-away SQLite store and site (no host is contacted, nothing leaves the
machine). For N hosts it times, median of ``--repeat`` rounds:

- leases: taking N free leases, trying N held by another run (all refused), one heartbeat of
  N leases, releasing them (``inventory.state.leases``);
- validation: :func:`orchestrate.runs.run_problems` of a playbook with a templated command
  step and ``apply_roles`` over N hosts with the roles base and node_exporter (what
  ``run``, ``run --plan``, ``apply`` and ``drift`` all do before their first connection).

Absolute times drift on this shared machine; what matters is how they grow with N::

    .venv/bin/python bench/safety_costs.py --hosts 10 100 1000 2000 --json /tmp/safety.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import report

from inventory.site import Site
from inventory.state import StateStore
from inventory.state.leases import Owner
from orchestrate.runs import RunOptions, load, run_problems

PLAYBOOK = """\
- name: touch and converge
  hosts: fleet
  steps:
    - command: [echo, '{{ inventory_hostname }}']
    - apply_roles: {}
"""


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def lease_costs(n: int, root: Path) -> dict[str, float]:
    store = StateStore.open_file(root / f"leases-{n}.db")
    try:
        hosts = [f"h{i:05d}" for i in range(n)]
        a = Owner.this_process("run-a", "metalchain apply --role base fleet")
        b = Owner.this_process("run-b", "metalchain drift fleet --fix")
        took = {"acquire": timed(lambda: store.acquire_leases(hosts, a))}
        held = store.acquire_leases(hosts, b)
        if len(held.held) != n:
            raise SystemExit(f"expected {n} held, got {len(held.held)}")
        took["acquire_all_held"] = timed(lambda: store.acquire_leases(hosts, b))
        took["heartbeat"] = timed(lambda: store.heartbeat_leases("run-a"))
        took["release"] = timed(lambda: store.release_leases("run-a"))
        return took
    finally:
        store.close()


def validation_cost(n: int, root: Path) -> float:
    site_dir = root / f"site-{n}"
    (site_dir / "playbooks").mkdir(parents=True)
    hosts = "".join(f"  n{i:05d}: {{address: 127.0.{i // 250}.{i % 250 + 1}}}\n"
                    for i in range(n))
    (site_dir / "inventory.yml").write_text(
        f"groups:\n  fleet:\n    roles: [base, node_exporter]\n    hosts: "
        f"[{', '.join(f'n{i:05d}' for i in range(n))}]\nhosts:\n{hosts}")
    (site_dir / "secrets.yml").write_text("{}\n")
    (site_dir / "secrets.yml").chmod(0o600)
    (site_dir / "playbooks" / "t.yml").write_text(PLAYBOOK)
    site = Site.open(site_dir)
    try:
        pb = load(site, "t")
        problems: list[Any] = []
        took = timed(lambda: problems.extend(run_problems(site, pb, RunOptions())))
        if problems:
            raise SystemExit(f"the bench playbook should validate: {problems[0]}")
        return took
    finally:
        site.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.hosts:
            rounds = [lease_costs(n, Path(tmp) / f"r{r}") for r in range(args.repeat)]
            row = {k: statistics.median(r[k] for r in rounds) * 1000 for k in rounds[0]}
            row["validation"] = statistics.median(
                validation_cost(n, Path(tmp) / f"v{r}") for r in range(args.repeat)) * 1000
            rows[str(n)] = {k: round(v, 1) for k, v in row.items()}
            print(f"{n:>6} hosts: " + ", ".join(f"{k} {v:.1f} ms" for k, v in rows[str(n)].items()),
                  file=sys.stderr)
    report({"kind": "bench.safety_costs", "unit": "ms (median)", "repeat": args.repeat,
            "hosts": rows}, args.json)


if __name__ == "__main__":
    main()

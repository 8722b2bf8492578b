"""What one scrape of metalchain's own metrics costs on a big state store.

Fills a throw-away SQLite store (NODES nodes, each provisioned once: 7 transitions; RUNS
finished runs with outcomes; ACTIONS remediation actions; drift on a tenth of the nodes; a
BMC sample per node in the cache), then times ``exposition(registry)`` REPEAT times::

    .venv/bin/python bench/metrics_scrape.py --nodes 1000 --runs 10000 --actions 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from inventory.state import StateStore
from inventory.state.incidents import IncidentInput
from monitor.metrics import build_registry, exposition
from monitor.power import PowerCache, PowerSample

LIFECYCLE = ("enrolled", "powering_on", "pxe_booting", "installing", "installed", "rebooting",
             "active")


def fill(store: StateStore, nodes: int, runs: int, actions: int, cache: PowerCache) -> None:
    for i in range(nodes):
        name = f"node{i}"
        for state in LIFECYCLE:
            store.set_node_state(name, state)
        cache.record(PowerSample(name, True, "on", time.time()))
        if i % 10 == 0:
            store.save_drift(name, [{"role": "base", "resource": "file /etc/motd",
                                     "status": "changed", "changes": ["content"]}])
    for i in range(runs):
        uid = store.start_run(("apply", "drift", "exec", "power")[i % 4], "site.yml")
        store.end_run(uid, "ok" if i % 7 else "failed",
                      {"counts": {"ok": 40, "changed": 3, "failed": 1 if i % 7 == 0 else 0}})
    inc = store.ingest([IncidentInput(fingerprint="f", starts_at="s", status="firing",
                                      alertname="UnitFailed", target="node0")], "event")[0]
    for i in range(actions):
        aid = store.start_action(inc.incident_id, f"node{i % nodes}",
                                 ("restart_service", "apply_role", "power_cycle")[i % 3], 1)
        store.finish_action(aid, "ok" if i % 5 else "failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--actions", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore.open_file(Path(tmp) / "state.db")
        cache = PowerCache()
        fill(store, args.nodes, args.runs, args.actions, cache)
        registry, _ = build_registry(store, bmc_status=cache.snapshot)
        times, size = [], 0
        for _ in range(args.repeat):
            start = time.perf_counter()
            size = len(exposition(registry))
            times.append(time.perf_counter() - start)
        store.close()
    times.sort()
    print(json.dumps({"nodes": args.nodes, "runs": args.runs, "actions": args.actions,
                      "scrapes": args.repeat, "median_ms": round(statistics.median(times) * 1e3, 1),
                      "max_ms": round(times[-1] * 1e3, 1), "body_bytes": size}))


if __name__ == "__main__":
    main()

"""Full-size fuzzing of metalchain's network input: the webhook and event parsers, and the
receiver of ``metalchain serve`` and the boot server's install callbacks over real HTTP.

The same strategies and servers as the CI tests (tests/netfuzz.py, tests/netfuzz_servers.py;
tests/unit/test_netfuzz_parsers.py and tests/lab/test_netfuzz_http.py run them for seconds),
for as long as asked: the time is shared between the targets, each running rounds of
Hypothesis examples with a fresh seed per round.

- parser targets: ``parse_notification`` / ``parse_event`` on any bytes; a failure is an
  exception that is not the project's PayloadError with a 4xx status, or an accepted value the
  state store could not write (everything accepted is also ingested into a real store).
- HTTP targets: every request answered, within the deadline, never 5xx (a 501 for a method
  the server does not implement is counted apart); the servers still serve at the end; the
  requests that once escaped are sent first as fixed cases.

Prints one table (target, examples, failures, 5xx, max latency, peak RSS) and writes the
JSON document with ``--json``::

    nice -n 10 flock /tmp/metalchain-light.lock .venv/bin/python bench/fuzz_net.py \\
        --minutes 20 --json /tmp/fuzz_net.json

Ports: 127.0.0.1:20510 (receiver) and :20511 (boot server) unless given.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from bench.harness import report
from inventory.state import StateStore
from monitor import events as ev
from monitor import webhook
from monitor.ingest import alert_inputs
from tests import netfuzz, netfuzz_servers

ROUND = 400   # examples per Hypothesis round (a new seed each)


def _parser_round(name: str, parse: Any, strategy: st.SearchStrategy[bytes], store: StateStore,
                  tally: dict[str, Any], round_seed: int, deadline: float) -> None:
    @seed(round_seed)
    @settings(max_examples=ROUND, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(body: bytes) -> None:
        if time.monotonic() > deadline:
            return
        tally["examples"] += 1
        t0 = time.perf_counter()
        why = ""
        try:
            got = parse(body)
        except webhook.PayloadError as exc:
            got = None
            if exc.status not in (400, 413):
                why = f"PayloadError with status {exc.status}"
        except Exception as exc:  # noqa: BLE001 - what the campaign is looking for
            got = None
            why = f"{exc.__class__.__name__}: {str(exc)[:120]}"
        tally["max_latency_s"] = max(tally["max_latency_s"], time.perf_counter() - t0)
        if got is not None:
            tally["accepted"] += 1
            items = alert_inputs(got) if isinstance(got, webhook.Notification) \
                else [got.incident_input()]
            try:
                store.ingest(items, "fuzz", received={"client": "bench"})
            except Exception as exc:  # noqa: BLE001
                why = f"accepted but not storable: {exc.__class__.__name__}: {str(exc)[:120]}"
        if why:
            tally["failures"] += 1
            if len(tally["first_failures"]) < 5:
                tally["first_failures"].append({"why": why, "body": body[:300].decode(
                    "latin-1")})

    one()


def run_parser(name: str, parse: Any, strategy: st.SearchStrategy[bytes], store: StateStore,
               seconds: float, rng: random.Random) -> dict[str, Any]:
    tally: dict[str, Any] = {"target": name, "examples": 0, "accepted": 0, "failures": 0,
                             "server_errors": None, "max_latency_s": 0.0,
                             "first_failures": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _parser_round(name, parse, strategy, store, tally, rng.getrandbits(64), deadline)
    tally["max_latency_s"] = round(tally["max_latency_s"], 4)
    tally["peak_rss_mb"] = round(netfuzz.peak_rss_mb(), 1)
    return tally


def run_http(srv: netfuzz_servers.Servers, target: netfuzz_servers.Target, seconds: float,
             rng: random.Random) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    total: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        t = netfuzz_servers.run_target(srv, target, examples=ROUND, seed=rng.getrandbits(64),
                                       deadline=deadline).to_json()
        if total is None:
            total = t
            continue
        for key in ("examples", "failures", "server_errors", "dropped", "hangs",
                    "unknown_method_501"):
            total[key] += t[key]
        total["max_latency_s"] = max(total["max_latency_s"], t["max_latency_s"])
        for k, v in t["answers"].items():
            total["answers"][k] = total["answers"].get(k, 0) + v
        total["first_failures"] = (total["first_failures"] + t["first_failures"])[:5]
    assert total is not None
    total["peak_rss_mb"] = round(netfuzz.peak_rss_mb(), 1)
    return total


def corpus(srv: netfuzz_servers.Servers) -> dict[str, Any]:
    rows = []
    for what, server, request in netfuzz_servers.regression_corpus():
        port = srv.receiver.port if server == "receiver" else srv.boot.port
        got = netfuzz.exchange(port, request)
        rows.append({"case": what, "status": got.status, "seconds": round(got.seconds, 3)})
    bad = [r for r in rows if r["status"] is None or not 400 <= r["status"] < 500]
    return {"target": "fixed cases (once escaped)", "examples": len(rows),
            "failures": len(bad), "server_errors": sum(1 for r in bad if (r["status"] or 0)
                                                      >= 500),
            "max_latency_s": max(r["seconds"] for r in rows), "cases": rows,
            "peak_rss_mb": round(netfuzz.peak_rss_mb(), 1)}


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'target':34} {'examples':>9} {'failures':>8} {'5xx':>5} {'501*':>5} " \
           f"{'max latency':>12} {'peak RSS':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        five = "-" if r.get("server_errors") is None else str(r["server_errors"])
        lines.append(f"{r['target'][:34]:34} {r['examples']:>9} {r['failures']:>8} {five:>5} "
                     f"{r.get('unknown_method_501', '-')!s:>5} "
                     f"{r['max_latency_s'] * 1000:>10.1f}ms {r['peak_rss_mb']:>7.1f}MB")
    lines.append("501*: a method the server does not implement (RFC 9110 15.6.2), not a "
                 "failure")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=2.0, help="total time (default 2)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--seed", type=int, default=None, help="seed of the rounds' seeds")
    ap.add_argument("--only", choices=("parsers", "http"), default=None,
                    help="run only the parser targets (no socket: needs no lab lock) or only "
                         "the HTTP ones")
    ap.add_argument("--receiver-port", type=int, default=20510)
    ap.add_argument("--boot-port", type=int, default=20511)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)   # the servers log every refusal
    rng = random.Random(args.seed)
    started = time.time()
    parsers, http = args.only in (None, "parsers"), args.only in (None, "http")
    http_targets = netfuzz_servers.targets() if http else []
    share = args.minutes * 60 / ((2 if parsers else 0) + len(http_targets))
    rows: list[dict[str, Any]] = []
    serving = True
    with tempfile.TemporaryDirectory(prefix="fuzz-net-") as tmp:
        root = Path(tmp)
        if parsers:
            store = StateStore.open_file(root / "parsers.db")
            try:
                rows.append(run_parser("parse_notification (+ store)",
                                       webhook.parse_notification,
                                       netfuzz.json_body(netfuzz.notification()), store, share,
                                       rng))
                rows.append(run_parser("parse_event (+ store)", ev.parse_event,
                                       netfuzz.json_body(netfuzz.event()), store, share, rng))
            finally:
                store.close()
        if http:
            with netfuzz_servers.servers(root / "http", receiver_port=args.receiver_port,
                                         boot_port=args.boot_port) as srv:
                rows.append(corpus(srv))
                for target in http_targets:
                    rows.append(run_http(srv, target, share, rng))
                serving = netfuzz_servers.still_serving(srv)
    print(table(rows))
    if http:
        print(f"servers still serving afterwards: {serving}")
    doc = {"bench": "fuzz_net", "minutes": args.minutes, "only": args.only,
           "started": started,
           "seconds": round(time.time() - started, 1), "still_serving": serving,
           "targets": rows,
           "totals": {"examples": sum(r["examples"] for r in rows),
                      "failures": sum(r["failures"] for r in rows)}}
    report(doc, args.json)
    return 0 if doc["totals"]["failures"] == 0 and serving else 1


if __name__ == "__main__":
    sys.exit(main())

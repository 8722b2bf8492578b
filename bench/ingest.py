"""Ingest into the receiver of a real `metalchain serve --no-boot`: sustained alerts per second
and the time to acknowledge (200 after the commit), at several client concurrencies.

A throw-away site (loopback only) gets a webhook token; serve runs as a subprocess; the
clients are keep-alive HTTP/1.1 connections (as Alertmanager's), spread over client processes
(``--procs``, each running its share of connections in threads) so the client's own GIL is not
the limit. Each request is one Alertmanager v4 notification of ``N`` alerts, every alert new
(a fresh fingerprint: an INSERT of the incident and its first timeline row, the costly case);
``--duplicates`` sends the same notification again and again instead (retries, the second
replica). Reported per (concurrency, N): notifications/s, alerts/s (= notifications/s x N),
and the acknowledge time p50/p99/max in ms, over a measured window after a warm-up.

    .venv/bin/python bench/ingest.py --concurrency 1,4,16,64 --alerts 1,10,50 --seconds 10 \
        --json /tmp/ingest.json

Everything shares this machine's CPUs (the serve process, SQLite, the clients).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import METALCHAIN, BenchError, report

INVENTORY = "hosts:\n" + "".join(f"  host{i:03d}: {{address: 127.0.0.1}}\n" for i in range(50))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_site(root: Path, port: int, token: str) -> None:
    (root / "inventory.yml").write_text(INVENTORY)
    (root / "metalchain.yml").write_text(
        f"monitor:\n  receiver_address: 127.0.0.1\n  receiver_port: {port}\n")
    secrets_file = root / "secrets.yml"
    secrets_file.write_text(f"monitor_webhook_token: {token}\n")
    secrets_file.chmod(0o600)


def notification(prefix: str, seq: int, n: int) -> bytes:
    alerts = [{"status": "firing",
               "labels": {"alertname": "SystemdUnitFailed", "host": f"host{(seq + i) % 50:03d}",
                          "name": "cron.service", "severity": "page"},
               "annotations": {"summary": "cron.service failed"},
               "startsAt": "2026-12-01T10:00:00.000Z", "endsAt": "0001-01-01T00:00:00Z",
               "generatorURL": "http://127.0.0.1:9090/graph",
               "fingerprint": f"{prefix}{seq:08x}{i:04x}"} for i in range(n)]
    return json.dumps({"version": "4", "groupKey": "{}:{alertname=\"SystemdUnitFailed\"}",
                       "truncatedAlerts": 0, "status": "firing", "receiver": "remediation",
                       "groupLabels": {"alertname": "SystemdUnitFailed"}, "commonLabels": {},
                       "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
                       "alerts": alerts}).encode()


def _client(args: tuple[int, str, int, int, float, float, bool, str]) -> dict[str, Any]:
    """One client process: ``threads`` keep-alive connections for warm-up + window seconds;
    latencies (s) of the requests that completed inside the window."""
    port, token, threads, n, warmup, window, duplicates, tag = args
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    start = time.monotonic()
    measure_from, measure_to = start + warmup, start + warmup + window
    out: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        seq = 0
        fixed = notification(f"{tag}{k:03d}d", 0, n)
        while True:
            now = time.monotonic()
            if now >= measure_to:
                break
            body = fixed if duplicates else notification(f"{tag}{k:03d}", seq, n)
            seq += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/alerts", body, headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            took = time.perf_counter() - t0
            if measure_from <= now and time.monotonic() <= measure_to:
                if ok:
                    out[k].append(took)
                else:
                    errors[k] += 1
        conn.close()

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"latencies": [x for xs in out for x in xs], "errors": sum(errors)}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(port: int, token: str, concurrency: int, n: int, procs: int, warmup: float,
            window: float, duplicates: bool, tag: str, server_pid: int) -> dict[str, Any]:
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0)
              for i in range(procs)]
    jobs = [(port, token, share, n, warmup, window, duplicates, f"{tag}p{i}")
            for i, share in enumerate(shares)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pending = pool.map_async(_client, jobs)
        time.sleep(warmup)     # the clients' own warm-up: the server's CPU is read after it
        cpu0, t0 = cpu_seconds(server_pid), time.monotonic()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(server_pid), time.monotonic()
        results = pending.get()
    lat = sorted(x for r in results for x in r["latencies"])
    done = len(lat)
    return {"concurrency": concurrency, "alerts_per_notification": n,
            "duplicates": duplicates, "window_s": window,
            "notifications_per_s": round(done / window, 1),
            "alerts_per_s": round(done * n / window, 1),
            "ack_p50_ms": round(percentile(lat, 0.50) * 1000, 2),
            "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "ack_max_ms": round(lat[-1] * 1000, 2) if lat else None,
            # The serve process's CPU during the window (1.0 = one CPU busy), and per
            # notification: what the clients leave to the server on this shared machine.
            "server_cpus_busy": round((cpu1 - cpu0) / (t1 - t0), 2),
            "server_cpu_ms_per_notification": round((cpu1 - cpu0) * 1000 / done, 3)
            if done else None,
            "errors": sum(r["errors"] for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--alerts", default="1,10,50", help="alerts per notification (N)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured window per level")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    ap.add_argument("--duplicates", action="store_true",
                    help="resend one notification (every alert a duplicate)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record the serve process with py-spy into this file (svg)")
    ap.add_argument("--port", type=int, default=None,
                    help="the receiver's loopback port (default: a free one)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    token = secrets.token_urlsafe(24)
    port = args.port if args.port is not None else free_port()
    with tempfile.TemporaryDirectory(prefix="mc-bench-ingest-") as tmp:
        site = Path(tmp)
        make_site(site, port, token)
        log = open(site / "serve.log", "wb")  # closed below
        proc = subprocess.Popen([METALCHAIN, "--site", str(site), "serve", "--no-boot"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        spy: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise BenchError("serve did not start: "
                                         + (site / "serve.log").read_text()[-2000:]) from None
                    time.sleep(0.1)
            if args.profile is not None:
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                        "--pid", str(proc.pid), "--threads", "--gil", "--output",
                                        str(args.profile), "--format",
                                        {".json": "speedscope", ".txt": "raw"}.get(
                                            args.profile.suffix, "flamegraph")])
            rows = []
            for n in [int(x) for x in args.alerts.split(",")]:
                for c in [int(x) for x in args.concurrency.split(",")]:
                    row = measure(port, token, c, n, args.procs, args.warmup, args.seconds,
                                  args.duplicates, f"c{c}n{n}", proc.pid)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()
    report({"benchmark": "receiver ingest (serve --no-boot, loopback, keep-alive)",
            "cpus": os.cpu_count(), "client_procs": args.procs, "rows": rows}, args.json)


if __name__ == "__main__":
    main()

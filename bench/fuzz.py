"""Fuzz every parser of operator files at full size: the properties of
tests/unit/test_fuzz_operator_files.py (tests/operator_fuzz.py ``judge``) with many more
examples, random seeds, and memory measured for every example.

    nice -n 10 .venv/bin/python bench/fuzz.py --minutes 30 --json /tmp/fuzz.json
    nice -n 10 .venv/bin/python bench/fuzz.py --cpu-hours 1 --jobs 2   # 30 min on 2 cores
    .venv/bin/python bench/fuzz.py --replay /tmp/fuzz.json    # are its failures fixed?
    .venv/bin/python bench/fuzz.py --sweep     # each value of each example, replaced in turn

The time is shared equally by the parsers (``--targets`` picks some). Prints a table (parser,
examples, accepted, rejected, failures, max time per example, peak memory of one example as
tracemalloc saw it on every ``--trace-every``-th example, largest input) and one JSON document
with the same figures and, for each distinct failure, its first input. Each worker's address
space is capped (ADDRESS_SPACE_HEADROOM), so an untraced bomb fails as MemoryError.
Exit status 1 if any example broke the property.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import random
import re
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import report
from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.operator_fuzz import PEAK_BYTES, SECONDS, judge, sweep, targets

CHUNK = 200   # examples per hypothesis run (each with a fresh seed)
#: Address space a worker may grow by: past it, allocation fails with MemoryError (an
#: "unhandled" failure), so a bomb cannot take the machine even where tracemalloc is off.
ADDRESS_SPACE_HEADROOM = 2 * 2 ** 30


def _signature(outcome: str, detail: str) -> str:
    """What makes two failures the same bug: the outcome and the message without paths,
    numbers and quoted values."""
    text = re.sub(r"/tmp/[^\s:'\"]+", "PATH", detail.splitlines()[0] if detail else "")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return f"{outcome}: {re.sub(r'[0-9]+', 'N', text)[:160]}"


def _limit_memory() -> None:
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + ADDRESS_SPACE_HEADROOM,
                                            resource.RLIM_INFINITY))


def fuzz_target(name: str, seconds: float, rng_seed: int, trace_every: int = 4
                ) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    _limit_memory()
    target = next(t for t in targets() if t.name == name)
    rng = random.Random(rng_seed)
    stats: dict[str, Any] = {"parser": name, "examples": 0, "accepted": 0, "rejected": 0,
                             "failures": 0, "max_seconds": 0.0, "peak_bytes": 0,
                             "traced": 0, "max_input_bytes": 0, "distinct_failures": {}}
    deadline = time.monotonic() + seconds

    def record(data: bytes) -> None:
        if time.monotonic() > deadline:
            return
        trace = stats["examples"] % trace_every == 0
        with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as root:
            v = judge(target, Path(root), data, seconds=SECONDS, peak_bytes=PEAK_BYTES,
                      trace_memory=trace)
        stats["examples"] += 1
        stats["traced"] += trace
        stats["max_input_bytes"] = max(stats["max_input_bytes"], len(data))
        stats["max_seconds"] = max(stats["max_seconds"], v.seconds)
        stats["peak_bytes"] = max(stats["peak_bytes"], v.peak_bytes)
        if v.ok:
            stats[v.outcome] += 1
            return
        stats["failures"] += 1
        sig = _signature(v.outcome, v.detail)
        seen = stats["distinct_failures"].setdefault(sig, {
            "count": 0, "detail": v.detail, "input_base64": base64.b64encode(
                data[:1_000_000]).decode()})
        seen["count"] += 1

    cpu_start = time.process_time()
    while time.monotonic() < deadline:
        run = settings(max_examples=CHUNK, deadline=None, database=None,
                       phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
            given(data=target.inputs())(record))
        seed(rng.getrandbits(64))(run)()
    stats["cpu_seconds_used"] = round(time.process_time() - cpu_start, 1)
    return stats


def _worker(job: tuple[str, float, int, int]) -> dict[str, Any]:
    return fuzz_target(*job)


def run_sweep(names: list[str]) -> int:
    """Every value of every example file replaced by each of SWEEP_VALUES (and removed)."""
    warnings.simplefilter("ignore")
    by_name = {t.name: t for t in targets()}
    bad = 0
    for name in names:
        cases = sweep(by_name[name])
        counts: dict[str, int] = {}
        start = time.monotonic()
        for where, data in cases:
            with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as root:
                v = judge(by_name[name], Path(root), data, seconds=SECONDS, trace_memory=False)
            counts[v.outcome] = counts.get(v.outcome, 0) + 1
            if not v.ok:
                bad += 1
                sys.stdout.write(f"{name}: {where}: {v.outcome}: {v.detail[:200]}\n")
        sys.stdout.write(f"{name}: {len(cases)} cases in {time.monotonic() - start:.0f} s: "
                         f"{counts}\n")
    return 1 if bad else 0


def replay(path: Path) -> int:
    """Judge again every distinct failure a previous run wrote (``--json``)."""
    import json

    doc = json.loads(path.read_text(encoding="utf-8"))
    by_name = {t.name: t for t in targets()}
    still = 0
    for row in doc["parsers"]:
        for sig, failure in row["distinct_failures"].items():
            data = base64.b64decode(failure["input_base64"])
            with tempfile.TemporaryDirectory(prefix="mc-fuzz-") as root:
                v = judge(by_name[row["parser"]], Path(root), data, seconds=SECONDS)
            still += not v.ok
            sys.stdout.write(f"{row['parser']}: {'STILL ' + v.outcome if not v.ok else 'fixed'}"
                             f" ({v.seconds:.2f} s): {sig}\n")
    return 1 if still else 0


def main() -> int:
    names = [t.name for t in targets()]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--minutes", type=float, help="wall-clock minutes in all (default 5)")
    size.add_argument("--cpu-hours", type=float, help="CPU hours in all, over --jobs cores")
    parser.add_argument("--jobs", type=int, default=1, help="parsers fuzzed at once")
    parser.add_argument("--targets", default=",".join(names),
                        help=f"comma-separated, of: {', '.join(names)}")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--trace-every", type=int, default=4,
                        help="measure memory (tracemalloc, ~3x slower) on every Nth example")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--sweep", action="store_true",
                        help="instead of random examples: every value of every example file "
                             "replaced by each odd value in turn (type confusion)")
    parser.add_argument("--replay", type=Path, default=None, metavar="JSON",
                        help="judge again the failures a previous --json file holds, and stop")
    args = parser.parse_args()
    if args.replay is not None:
        return replay(args.replay)
    chosen = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    if args.sweep:
        return run_sweep(chosen)
    jobs = max(1, args.jobs)
    cpu_seconds = args.cpu_hours * 3600 if args.cpu_hours else (args.minutes or 5) * 60 * jobs
    per_target = cpu_seconds / len(chosen)
    base_seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    work = [(n, per_target, base_seed + i, max(1, args.trace_every))
            for i, n in enumerate(chosen)]
    start = time.monotonic()
    if jobs == 1:   # in a child all the same: the memory limit is the worker's alone
        with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
            rows = pool.map(_worker, work, chunksize=1)
    else:
        with multiprocessing.get_context("fork").Pool(jobs, maxtasksperchild=1) as pool:
            rows = pool.map(_worker, work, chunksize=1)
    wall = time.monotonic() - start

    header = f"{'parser':<16}{'examples':>10}{'accepted':>10}{'rejected':>10}" \
             f"{'failures':>10}{'max s/ex':>10}{'peak MiB':>10}{'max KiB in':>12}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['parser']:<16}{r['examples']:>10}{r['accepted']:>10}"
                     f"{r['rejected']:>10}{r['failures']:>10}{r['max_seconds']:>10.2f}"
                     f"{r['peak_bytes'] / 2 ** 20:>10.1f}{r['max_input_bytes'] / 1024:>12.0f}")
    total = sum(r["examples"] for r in rows)
    failures = sum(r["failures"] for r in rows)
    lines.append(f"{'all':<16}{total:>10}{'':>10}{'':>10}{failures:>10}")
    used = sum(r["cpu_seconds_used"] for r in rows)
    lines.append(f"CPU time used by the parsers' workers: {used / 3600:.2f} h "
                 f"(wall {wall / 60:.1f} min)")
    sys.stderr.write("\n".join(lines) + "\n")
    for r in rows:
        for sig, f in r["distinct_failures"].items():
            sys.stderr.write(f"  {r['parser']}: {f['count']} x {sig}\n")
    report({"kind": "bench.fuzz", "version": 1, "seed": base_seed, "jobs": jobs,
            "cpu_seconds": round(cpu_seconds), "wall_seconds": round(wall, 1),
            "limits": {"seconds_per_example": SECONDS, "peak_bytes": PEAK_BYTES,
                       "address_space_headroom": ADDRESS_SPACE_HEADROOM},
            "memory_traced_every": max(1, args.trace_every),
            "cpu_seconds_used": round(sum(r["cpu_seconds_used"] for r in rows), 1),
            "examples": total, "failures": failures, "parsers": rows}, args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

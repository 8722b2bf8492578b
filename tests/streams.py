"""The test suite (``make test``) as two pytest sessions that run at the same time.

Why: QEMU runs under TCG on this kind of machine, one thread per virtual CPU, so a test that
drives a QEMU machine keeps one of the two CPUs busy and leaves the other mostly idle while it
waits for the guest. The suite is split into two streams of about equal length:

- ``side``: the modules in :data:`SIDE` (the e2e chain and a few other modules of long
  QEMU tests),
- ``main``: every other module (``--ignore`` for each of :data:`SIDE`),

both with the marker expression of README's test command, so together they run exactly the
tests one session would (``--serial`` runs them one after the other, as one session did).
Every lab test module has its own subnet, ports and netns; each stream has its own
``--basetemp`` (two sessions sharing /tmp/pytest-of-$USER would delete each other's
directories when pruning old ones).

Output: ``main``'s goes to stdout as it runs; ``side``'s into ``side.log`` under the stream
directory, printed whole when both have ended; then one line per stream. The exit status is
0 when both passed, else the first failing stream's. SIGINT and SIGTERM are passed on to both
sessions (their fixtures tear their labs down); a stream past :data:`STREAM_TIMEOUT` is
interrupted the same way. Arguments after ``--`` go to both pytest sessions.

    .venv/bin/python tests/streams.py                 # what make test runs
    .venv/bin/python tests/streams.py --serial -- -x
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKERS = "unit or lab or e2e"
#: The modules of the side stream (paths from the repository root); see the module docstring.
SIDE = (
    "tests/e2e",
    "tests/lab/test_provision.py",
    "tests/lab/test_installer.py",
    "tests/lab/test_node_lifecycle.py",
    "tests/lab/test_secret_canary_lab.py",
)
#: Seconds a stream may take before it is interrupted (CI allows 90 minutes in all).
STREAM_TIMEOUT = 80 * 60
#: Seconds an interrupted session gets to tear its labs down before it is killed.
GRACE = 120


@dataclass
class Stream:
    name: str
    args: list[str]
    log: Path | None = None            # None: to our stdout
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    seconds: float = 0.0
    code: int | None = None
    interrupted: bool = field(default=False)


def streams(workdir: Path, extra: list[str]) -> list[Stream]:
    for path in SIDE:
        if not (ROOT / path).exists():
            raise SystemExit(f"streams.py: {path} (in SIDE) does not exist")
    common = ["-m", MARKERS, "-p", "no:cacheprovider", *extra]
    side = Stream("side", [*common, "--basetemp", str(workdir / "side"), *SIDE],
                  log=workdir / "side.log")
    main = Stream("main", [*common, "--basetemp", str(workdir / "main"),
                           *(f"--ignore={p}" for p in SIDE), "tests"])
    return [main, side]


def _default_sigint() -> None:
    # A job started in the background by a shell has SIGINT ignored, and Python keeps it so:
    # pytest must get KeyboardInterrupt from it to tear its labs down.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(stream: Stream) -> None:
    out = open(stream.log, "wb") if stream.log else None
    stream.started = time.monotonic()
    # Its own process group: a signal to the stream reaches pytest and what it started
    # in the foreground, never this runner.
    stream.proc = subprocess.Popen([sys.executable, "-m", "pytest", *stream.args], cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT if out else None,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   preexec_fn=_default_sigint)
    if out is not None:
        out.close()


def interrupt(stream: Stream) -> None:
    """SIGINT to the stream's pytest (it tears its fixtures down); SIGKILL to its process
    group after :data:`GRACE` seconds."""
    proc = stream.proc
    if proc is None or proc.poll() is not None:
        return
    stream.interrupted = True
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait(stream: Stream) -> None:
    proc = stream.proc
    if proc is None:
        return
    try:
        stream.code = proc.wait(max(1.0, STREAM_TIMEOUT - (time.monotonic() - stream.started)))
    except subprocess.TimeoutExpired:
        print(f"\nstreams.py: {stream.name} still running after {STREAM_TIMEOUT} s: "
              "interrupting it", flush=True)
        interrupt(stream)
        stream.code = proc.wait()
    stream.seconds = time.monotonic() - stream.started


def run(all_streams: list[Stream], *, serial: bool) -> int:
    def forward(signum: int, _frame: object) -> None:
        print(f"\nstreams.py: signal {signum}: interrupting the streams", flush=True)
        threads = [threading.Thread(target=interrupt, args=(s,)) for s in all_streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        raise SystemExit(130)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    if serial:
        for s in all_streams:
            start(s)
            wait(s)
    else:
        for s in all_streams:
            start(s)
        waiters = [threading.Thread(target=wait, args=(s,)) for s in all_streams]
        for t in waiters:
            t.start()
        for t in waiters:
            while t.is_alive():   # a join with a timeout lets the signal handler run
                t.join(1.0)
    for s in all_streams:
        if s.log is not None:
            print(f"\n{'=' * 30} stream {s.name} ({s.log}) {'=' * 30}", flush=True)
            sys.stdout.buffer.write(s.log.read_bytes())
            sys.stdout.flush()
    print()
    for s in all_streams:
        state = "passed" if s.code == 0 else f"FAILED (exit {s.code})"
        print(f"stream {s.name}: {state} in {s.seconds:.0f} s", flush=True)
    return next((s.code or 1 for s in all_streams if s.code != 0), 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serial", action="store_true",
                    help="Run the streams one after the other.")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/metalchain-tests"),
                    help="Where each stream's basetemp and the side stream's log go "
                         "(emptied first).")
    ap.add_argument("extra", nargs="*", help="After --: arguments for both pytest sessions.")
    args = ap.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    return run(streams(args.workdir, args.extra), serial=args.serial)


if __name__ == "__main__":
    sys.exit(main())

"""runtime/ against real child processes: process.run's errors, zombies, SIGTERM/SIGKILL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from inventory.errors import LabError
from runtime import process
from runtime.pidfile import process_alive, terminate, wait_gone

pytestmark = pytest.mark.lab


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:  # also when the test failed
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_run_returns_output_and_feeds_input() -> None:
    proc = process.run(["sh", "-c", "cat; echo done"], input="in\n", timeout=10)
    assert proc.stdout == "in\ndone\n" and proc.returncode == 0


def test_run_failure_names_the_command_and_the_tail_not_the_input() -> None:
    with pytest.raises(LabError) as info:
        process.run(["sh", "-c", "cat >/dev/null; echo broken >&2; exit 3"],
                    input="s3cret-value", timeout=10, error=LabError)
    message = str(info.value)
    assert message.startswith("sh -c ") and "failed (exit 3): broken" in message
    assert "s3cret-value" not in message


def test_run_without_check_returns_the_status() -> None:
    assert process.run(["sh", "-c", "exit 4"], timeout=10, check=False).returncode == 4


def test_run_timeout_and_missing_binary() -> None:
    started = time.monotonic()
    with pytest.raises(LabError, match=r"^sleeper did not finish within 0.3 s$"):
        process.run(["sleep", "30"], timeout=0.3, error=LabError, what="sleeper")
    assert time.monotonic() - started < 5
    with pytest.raises(LabError, match="cannot run /nonexistent/tool: No such file"):
        process.run(["/nonexistent/tool"], timeout=5, error=LabError)


def test_a_zombie_counts_as_gone(children: list[subprocess.Popen[bytes]]) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    children.append(proc)
    assert process_alive(proc.pid)
    proc.kill()
    deadline = time.monotonic() + 10
    while process_alive(proc.pid):  # dead but not reaped: a zombie
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is not None  # it really was our unreaped child


def test_terminate_escalates_to_sigkill(children: list[subprocess.Popen[bytes]]) -> None:
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    children.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    started = time.monotonic()
    assert terminate(proc.pid, term_timeout=0.3, kill_timeout=5) is True
    assert 0.3 <= time.monotonic() - started < 5
    assert not process_alive(proc.pid)


def test_wait_gone_gives_up_at_the_deadline(children: list[subprocess.Popen[bytes]]) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    children.append(proc)
    assert wait_gone(proc.pid, 0.2) is False
    assert terminate(proc.pid, term_timeout=5, kill_timeout=5) is True


def test_stop_child_terminates_then_kills(children: list[subprocess.Popen[bytes]]) -> None:
    polite = subprocess.Popen(["sleep", "30"])
    children.append(polite)
    assert process.stop_child(polite, timeout=5) == -15  # SIGTERM was enough
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('ready', flush=True); time.sleep(60)"
    stubborn = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    children.append(stubborn)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    assert process.stop_child(stubborn, timeout=0.3) == -9
    assert process.stop_child(stubborn, timeout=0.3) == -9  # already gone: just the status

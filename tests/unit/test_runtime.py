"""The shared mechanisms in runtime/: atomic writes, JSON documents, locks, pid files, the
argument checks of process.run, and the threaded server's start/stop (loopback, port 0).
What needs a child process (a command, a zombie, SIGKILL) is in
tests/lab/test_runtime_processes.py."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from inventory.errors import LabError
from runtime import atomicfile, process
from runtime.atomicfile import write_atomic
from runtime.filelock import file_lock
from runtime.httpserver import ServerThread
from runtime.jsondoc import content_key, json_text, write_json
from runtime.pidfile import command_line, live_pid, process_alive, read_pid, write_pidfile

pytestmark = pytest.mark.unit


# -- atomic writes ---------------------------------------------------------------------------

def test_write_atomic_text_bytes_and_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.txt"
    assert write_atomic(target, "grüße\n", 0o600) is True
    assert target.read_bytes() == "grüße\n".encode()
    assert target.stat().st_mode & 0o777 == 0o600
    assert write_atomic(target, b"\x00\x01") is True
    assert target.read_bytes() == b"\x00\x01"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_write_atomic_leaves_an_unchanged_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "conf"
    assert write_atomic(target, "a\n", unchanged_ok=True) is True
    inode = target.stat().st_ino
    assert write_atomic(target, "a\n", unchanged_ok=True) is False
    assert target.stat().st_ino == inode
    assert write_atomic(target, "a\n") is True  # without unchanged_ok: always replaced
    assert target.stat().st_ino != inode


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path: Path,
                                                            monkeypatch) -> None:
    target = tmp_path / "state.json"
    target.write_text("old", encoding="utf-8")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, "new")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# -- JSON documents --------------------------------------------------------------------------

def test_json_text_is_utf8_indented_and_ends_in_newline() -> None:
    text = json_text({"b": "ä", "a": [1]}, sort_keys=True)
    assert text == '{\n  "a": [\n    1\n  ],\n  "b": "ä"\n}\n'
    assert json_text({"p": Path("/x")}, default=str) == '{\n  "p": "/x"\n}\n'


def test_write_json_round_trips(tmp_path: Path) -> None:
    write_json(tmp_path / "doc.json", {"name": "nöde1"}, 0o600)
    assert json.loads((tmp_path / "doc.json").read_text("utf-8")) == {"name": "nöde1"}
    assert (tmp_path / "doc.json").stat().st_mode & 0o777 == 0o600


def test_emit_json_prints_one_versioned_document(capsys) -> None:
    from orchestrate.output import emit_json

    emit_json("hosts", {"hosts": ["ä"]})
    out = capsys.readouterr().out
    assert json.loads(out) == {"kind": "hosts", "version": 1, "hosts": ["ä"]}
    assert out.endswith("}\n") and "ä" in out


# -- file locks ------------------------------------------------------------------------------

def test_file_lock_times_out_with_the_callers_error(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "build.lock"
    with file_lock(lock, 1.0, LabError):
        started = time.monotonic()
        with pytest.raises(LabError, match=r"waited 0.1 s for the lock .*build\.lock"), \
                file_lock(lock, 0.1, LabError, poll=0.02):
            pass
        assert time.monotonic() - started < 1.0
    with file_lock(lock, 0.1, LabError):  # released on exit
        pass


def test_file_lock_try_once_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    with file_lock(lock, 0, LabError, note="pid 4242"):
        started = time.monotonic()
        with pytest.raises(LabError, match=r"waited 0 s for another run .*run\.lock "
                                           r"\(held by pid 4242\)"), \
                file_lock(lock, 0, LabError, holder="another run", note="pid 1"):
            pass
        assert time.monotonic() - started < 0.5


# -- pid files -------------------------------------------------------------------------------

def test_pidfile_round_trip_and_bad_contents(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    assert read_pid(pidfile) is None
    write_pidfile(pidfile)
    assert read_pid(pidfile) == os.getpid()
    for junk in ("", "abc", "-5", "0"):
        pidfile.write_text(junk, encoding="utf-8")
        assert read_pid(pidfile) is None


def test_liveness_of_this_process_and_of_no_process() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(0)
    assert not process_alive(2**22 + 1)  # above the kernel's pid_max limit


def test_live_pid_needs_the_marker_on_the_command_line(tmp_path: Path) -> None:
    pidfile = tmp_path / "x.pid"
    write_pidfile(pidfile)
    # This process was not started with the pid file's path: a recycled pid, say.
    assert live_pid(pidfile) is None
    argv0 = (command_line(os.getpid()) or [b""])[0].decode()
    assert live_pid(pidfile, markers=[argv0]) == os.getpid()
    assert live_pid(pidfile, markers=[argv0, "--no-such-flag"]) is None


# -- process.run: what is checked before anything starts ------------------------------------

def test_run_with_a_spent_deadline_starts_nothing() -> None:
    with pytest.raises(LabError, match="no time left to run cpio -o"):
        process.run(["cpio", "-o"], timeout=0, error=LabError)


def test_describe_quotes_and_cuts_long_command_lines() -> None:
    assert process.describe(["ip", "link", "add", "a b"]) == "ip link add 'a b'"
    long = process.describe(["x"] + ["y" * 50] * 10)
    assert len(long) == process.SHOWN_ARGV_CHARS and long.endswith("...")
    assert process.output_tail(b"", "one\ntwo\n") == "one\ntwo"
    assert process.output_tail(None, "") == ""


# -- the threaded server ---------------------------------------------------------------------

class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_server_thread_serves_and_stops(tmp_path: Path) -> None:
    serving = ServerThread.start(lambda addr: ThreadingHTTPServer(addr, _Hello),
                                 ("127.0.0.1", 0), name="test-http", error=LabError)
    port = serving.port
    assert port > 0 and serving.name == f"test-http-{port}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"ok"
    conn.close()
    serving.stop(5)
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).connect()


def test_server_thread_names_the_address_it_cannot_bind() -> None:
    first = ServerThread.start(lambda addr: ThreadingHTTPServer(addr, _Hello),
                               ("127.0.0.1", 0), name="test-http", error=LabError)
    try:
        with pytest.raises(LabError, match=rf"cannot listen on 127.0.0.1:{first.port}"):
            ServerThread.start(lambda addr: ThreadingHTTPServer(addr, _Hello),
                               ("127.0.0.1", first.port), name="test-http", error=LabError)
    finally:
        first.stop(5)


class _Stuck(ThreadingHTTPServer):
    """A loop that does not notice shutdown() until released: a wedged server."""

    release = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.release.wait(30)


def test_server_thread_stop_keeps_one_deadline() -> None:
    serving = ServerThread.start(lambda addr: _Stuck(addr, _Hello), ("127.0.0.1", 0),
                                 name="stuck-http", error=LabError)
    started = time.monotonic()
    try:
        with pytest.raises(LabError, match=r"stuck-http-\d+ did not stop within 0.3 s"):
            serving.stop(0.3)
        assert time.monotonic() - started < 0.5
    finally:
        _Stuck.release.set()


def test_boot_http_stop_waits_at_most_its_timeout(monkeypatch) -> None:
    """Regression: stop(timeout=T) used to wait for shutdown() and then for the loop thread,
    T each, so a wedged loop held the caller for 2 T."""
    from provision.bootserver import http as boot_http
    from provision.bootserver.interfaces import BootServerError

    release = threading.Event()
    monkeypatch.setattr(boot_http._Server, "serve_forever",
                        lambda self, poll_interval=0.5: release.wait(30))
    server = boot_http.BootHttpServer("127.0.0.1", 0, installer_dir=Path("/nonexistent"),
                                      images_dir=Path("/nonexistent"), provider=None,
                                      tokens=None, callbacks=None)  # type: ignore[arg-type]
    server.start()
    started = time.monotonic()
    try:
        with pytest.raises(BootServerError, match=r"did not stop within 0\.4 s"):
            server.stop(timeout=0.4)
        assert time.monotonic() - started < 0.7
    finally:
        release.set()


def test_content_key_ignores_key_order_and_sees_every_value():
    assert content_key({"a": 1, "b": [2]}) == content_key({"b": [2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    # The cache keys of images already built must not change: the key of a fixed document.
    assert content_key({"golden": "g", "build_version": 1}) == "66d1023eb4fdc9f0"

"""The HTTP servers under the attacks of issue 13, on real sockets (127.0.0.0/8, ports 20400-20419).

- One client holding 64 idle sockets to the boot server must not stop another client's
  installer requests (before the per-client cap: 16 of 23 failed with 503).
- A reader taking one byte now and then holds a slot forever unless the answer has a
  whole-response deadline with a minimum rate: it is cut within that deadline, while a reader
  at a sane rate gets the whole file.
- 150 idle clients to the mirror must not start 150 threads, and are cut at the header
  deadline; the same for the receiver of ``metalchain serve``.

Deadlines are configured short so the module takes seconds; the defaults are in
``HttpLimits``, ``configure.mirror_server.DEFAULT_LIMITS`` and ``ReceiverLimits``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from configure.mirror_server import MirrorServer
from inventory.state import StateStore
from monitor.ingest import Ingestor
from monitor.receiver import Receiver, ReceiverLimits
from provision import contract
from provision.bootserver import BootHttpServer, BootNode, BootNodes, HttpLimits, NodeConfig
from runtime.httpserver import ConnectionLimits
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

HOST = "127.0.0.1"
ATTACKER = "127.0.0.1"
VICTIM = "127.0.0.2"
BOOT_PORT, SLOW_PORT, MIRROR_PORT, MIRROR_ONE_PORT, RECEIVER_PORT = 20401, 20402, 20403, 20404, \
    20405
MAC = "52:54:00:4d:13:01"
TOKEN = "tok-" + "A" * 40
FIGURES: dict[str, str] = {}


# -- raw HTTP from a chosen source address -------------------------------------------------------

def connect(port: int, source: str, *, rcvbuf: int | None = None,
            timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if rcvbuf is not None:  # before connect, so the window the server sees is small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect((HOST, port))
    return sock


def request(port: int, method: str, path: str, *, source: str = VICTIM, body: bytes = b"",
            headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """One request on its own connection: (status, body); (0, b"") if closed unanswered."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with connect(port, source, timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                buf += chunk
    if not buf.startswith(b"HTTP/1."):
        return 0, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (reading whatever it sent), or None."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if not sock.recv(1 << 16):
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def handler_threads() -> int:
    # socketserver's ThreadingMixIn names them "Thread-N (process_request_thread)".
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


# -- the boot server with fakes for the caller's side ----------------------------------------------

@dataclass
class Tokens:
    spent: set[str] = field(default_factory=set)

    def check_deploy_token(self, name: str, token: str) -> bool:
        return token == TOKEN and name not in self.spent

    def spend_deploy_token(self, name: str, token: str) -> bool:
        if not self.check_deploy_token(name, token):
            return False
        self.spent.add(name)
        return True


class Provider:
    def install_token(self, node: str) -> str | None:
        return TOKEN

    def node_config(self, node: str) -> NodeConfig | None:
        return NodeConfig(hostname=node, image_url="/images/golden.raw", image_sha256="ab" * 32,
                          image_size=1, authorized_keys="ssh-ed25519 AAAA op\n", host_key="k",
                          host_key_pub="p", mac=MAC, ipv4="10.77.0.11/24")


class Callbacks:
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_progress(self, node: str, stage: str, message: str) -> None:
        self.events.append("progress")

    def on_done(self, node: str) -> None:
        self.events.append("done")

    def on_failed(self, node: str, stage: str, message: str, log: str) -> None:
        self.events.append("failed")


@contextlib.contextmanager
def boot_server(tmp: Path, port: int, limits: HttpLimits,
                image_bytes: int = 1 << 20) -> Iterator[tuple[BootHttpServer, Callbacks]]:
    installer, images = tmp / f"installer{port}", tmp / f"images{port}"
    installer.mkdir()
    images.mkdir()
    (installer / "vmlinuz").write_bytes(b"kernel" * 1000)
    (installer / "initrd.img").write_bytes(b"initrd" * 1000)
    (images / "golden.raw").write_bytes(os.urandom(image_bytes))
    (images / "golden.raw.sha256").write_text("ab" * 32 + "  golden.raw\n")
    callbacks = Callbacks()
    server = BootHttpServer(HOST, port, installer_dir=installer, images_dir=images,
                            provider=Provider(), tokens=Tokens(), callbacks=callbacks,
                            nodes=BootNodes.of([BootNode("node1", MAC, VICTIM)]), limits=limits)
    server.start()
    try:
        yield server, callbacks
    finally:
        server.stop()


def installer_requests(port: int) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """What one install asks for, 23 requests: script, kernel, initrd, config, 16 progress
    reports, the image's checksum, the image, done."""
    tok = {contract.TOKEN_HEADER: TOKEN}
    form = {**tok, "Content-Type": "application/x-www-form-urlencoded"}
    stages = [contract.INSTALL_STAGES[i % len(contract.INSTALL_STAGES)] for i in range(16)]
    return [("GET", contract.IPXE_SCRIPT.format(mac_hyphens=MAC.replace(":", "-")), b"", {}),
            ("GET", contract.INSTALLER_KERNEL, b"", {}),
            ("GET", contract.INSTALLER_INITRD, b"", {}),
            ("GET", contract.NODE_CONFIG.format(node="node1"), b"", tok),
            *[("POST", contract.NODE_PROGRESS.format(node="node1"),
               urllib.parse.urlencode({"stage": s, "message": "m"}).encode(), form)
              for s in stages],
            ("GET", contract.IMAGE_SHA256.format(name="golden"), b"", {}),
            ("GET", contract.IMAGE.format(name="golden"), b"", {}),
            ("POST", contract.NODE_DONE.format(node="node1"), b"", form)]


def test_64_idle_sockets_from_one_client_leave_another_clients_installer_alone(
        tmp_path: Path) -> None:
    limits = HttpLimits()  # the defaults: 64 in all, 16 per address, 10 s for the request
    with boot_server(tmp_path, BOOT_PORT, limits) as (server, callbacks):
        idle = [connect(BOOT_PORT, ATTACKER) for _ in range(64)]
        try:
            # The attacker holds what the per-client cap lets it hold, no more.
            wait_for(lambda: server._server is not None
                     and server._server.open_connections() == limits.max_per_client, 5,
                     "the boot server to accept the attacker's sockets")
            steps = installer_requests(BOOT_PORT)
            statuses = [request(BOOT_PORT, m, p, body=b, headers=h)[0] for m, p, b, h in steps]
        finally:
            for sock in idle:
                sock.close()
    ok = sum(s == 200 for s in statuses)
    FIGURES["boot_idle"] = f"second client's {len(steps)} requests: {ok}/{len(steps)} OK " \
                           f"while 64 idle sockets were held by one client"
    print(f"\n{FIGURES['boot_idle']}")
    assert statuses == [200] * len(steps), statuses
    assert callbacks.events == ["progress"] * 16 + ["done"]


def test_a_reader_taking_a_byte_now_and_then_is_cut_within_the_response_deadline(
        tmp_path: Path) -> None:
    image = 16 << 20
    limits = HttpLimits(response_grace=1.0, min_rate=1 << 20)
    whole = limits.connection_limits().response_deadline(image)  # 17 s for 16 MiB
    with boot_server(tmp_path, SLOW_PORT, limits, image_bytes=image) as (server, _):
        assert server._server is not None
        capped = server._server
        sock = connect(SLOW_PORT, ATTACKER, rcvbuf=4096)
        with sock:
            sock.sendall(f"GET {contract.IMAGE.format(name='golden')} HTTP/1.0\r\n\r\n"
                         .encode())
            started, got, freed = time.monotonic(), 0, None
            sock.settimeout(0.5)
            wait_for(lambda: capped.open_connections() == 1, 5, "the reader's connection")
            while time.monotonic() - started < whole + 5:
                if capped.open_connections() == 0:
                    freed = time.monotonic() - started
                    break
                with contextlib.suppress(TimeoutError):
                    got += len(sock.recv(1))
                time.sleep(0.5)  # the slowloris reader: one byte every half second
            # What the kernels still hold for it, then the end (a reset or EOF).
            sock.settimeout(2.0)
            ended = "no"
            try:
                while chunk := sock.recv(1 << 16):
                    got += len(chunk)
                ended = "EOF"
            except TimeoutError:
                ended = "no (still open after 2 s of silence)"
            except OSError as exc:
                ended = exc.__class__.__name__
        # A reader at a sane rate (well above min_rate) still gets the whole image.
        fast_started = time.monotonic()
        status, body = request(SLOW_PORT, "GET", contract.IMAGE.format(name="golden"),
                               timeout=30)
        fast = time.monotonic() - fast_started
    FIGURES["slow_reader"] = (f"1-byte-per-0.5 s reader of a 16 MiB image: its slot freed "
                              f"after {freed:.1f} s (grace 1 s, min rate 1 MiB/s, "
                              f"whole-response deadline {whole:.0f} s), it got {got} bytes in "
                              f"all, then {ended}; a normal reader got the image in {fast:.2f} s"
                              if freed is not None else f"reader not cut within {whole + 5} s")
    print(f"\n{FIGURES['slow_reader']}")
    assert freed is not None and freed < whole, FIGURES["slow_reader"]
    assert ended in ("EOF", "ConnectionResetError") and got < image // 2, FIGURES["slow_reader"]
    assert status == 200 and len(body) == image


@dataclass
class IdleCrowd:
    sockets: list[socket.socket]
    peak_threads: int
    peak_open: int
    opened_at: float


def hold_idle(port: int, sources: list[str], count: int,
              server_open: Callable[[], int]) -> IdleCrowd:
    """Open ``count`` idle connections round-robin from ``sources``; the peak of handler
    threads and tracked connections seen while they are held."""
    before = handler_threads()
    opened_at = time.monotonic()
    socks = [connect(port, sources[i % len(sources)]) for i in range(count)]
    peak_threads, peak_open = 0, 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        peak_threads = max(peak_threads, handler_threads() - before)
        peak_open = max(peak_open, server_open())
        time.sleep(0.02)
    return IdleCrowd(socks, peak_threads, peak_open, opened_at)


def test_150_idle_clients_to_the_mirror_start_no_150_threads_and_are_cut_at_the_header_deadline(
        tmp_path: Path) -> None:
    root = tmp_path / "mirror" / "current"
    root.mkdir(parents=True)
    (root / "Packages").write_text("Package: a\n")
    limits = ConnectionLimits(max_connections=32, max_per_client=8, header_timeout=1.5)
    sources = [f"127.0.13.{i}" for i in range(1, 11)]
    with MirrorServer(root, HOST, MIRROR_PORT, limits=limits) as mirror:
        crowd = hold_idle(MIRROR_PORT, sources, 150, lambda: mirror.server.open_connections())
        try:
            closed = [closed_within(s, limits.header_timeout + 3.0) for s in crowd.sockets]
            all_closed = time.monotonic() - crowd.opened_at
            # After the cut, a client is served again.
            status, body = request(MIRROR_PORT, "GET", "/Packages")
        finally:
            for sock in crowd.sockets:
                sock.close()
    FIGURES["mirror_idle"] = (f"150 idle clients (10 addresses) to the mirror: peak "
                              f"{crowd.peak_threads} handler threads, {crowd.peak_open} open "
                              f"(cap 32, 8 per address); all closed {all_closed:.1f} s after "
                              f"connecting (header deadline 1.5 s)")
    print(f"\n{FIGURES['mirror_idle']}")
    assert crowd.peak_open <= 32 and crowd.peak_threads <= 32, FIGURES["mirror_idle"]
    assert all(c is not None for c in closed), FIGURES["mirror_idle"]
    assert all_closed < limits.header_timeout + 1.5, FIGURES["mirror_idle"]
    assert status == 200 and body == b"Package: a\n"


def test_one_mirror_client_cannot_take_the_slots_of_another(tmp_path: Path) -> None:
    root = tmp_path / "mirror" / "current"
    root.mkdir(parents=True)
    (root / "Packages").write_text("Package: a\n")
    limits = ConnectionLimits(max_connections=32, max_per_client=8, header_timeout=5.0)
    with MirrorServer(root, HOST, MIRROR_ONE_PORT, limits=limits) as mirror:
        crowd = hold_idle(MIRROR_ONE_PORT, [ATTACKER], 150,
                          lambda: mirror.server.open_connections())
        try:
            statuses = [request(MIRROR_ONE_PORT, "GET", "/Packages")[0] for _ in range(23)]
        finally:
            for sock in crowd.sockets:
                sock.close()
    print(f"\nmirror: 150 idle sockets from one address held {crowd.peak_open} slots; "
          f"another client's 23 requests: {statuses.count(200)}/23 OK")
    assert crowd.peak_open == 8 and statuses == [200] * 23


def test_the_receiver_gets_the_same_limits(tmp_path: Path) -> None:
    state = StateStore.open_file(tmp_path / "state.db")
    limits = ReceiverLimits(max_connections=32, max_per_client=8, header_timeout=1.5)
    receiver = Receiver(HOST, RECEIVER_PORT, ingestor=Ingestor(state), webhook_token="w" * 32,
                        limits=limits)
    receiver.start()
    try:
        assert receiver._serving is not None
        server = receiver._serving.server
        crowd = hold_idle(RECEIVER_PORT, [ATTACKER], 64, server.open_connections)
        try:
            statuses = [request(RECEIVER_PORT, "GET", "/healthz")[0] for _ in range(23)]
            closed = [closed_within(s, limits.header_timeout + 3.0) for s in crowd.sockets]
        finally:
            for sock in crowd.sockets:
                sock.close()
    finally:
        receiver.stop()
        state.close()
    print(f"\nreceiver: 64 idle sockets from one address held {crowd.peak_open} slots; another "
          f"client's 23 requests: {statuses.count(200)}/23 OK; all idle closed: "
          f"{all(c is not None for c in closed)}")
    assert crowd.peak_open == 8 and crowd.peak_threads <= 8
    assert statuses == [200] * 23
    assert all(c is not None for c in closed)


def test_the_sha256_of_what_a_normal_reader_gets_is_the_file(tmp_path: Path) -> None:
    # sendfile in steps must not drop or repeat a byte at the step boundaries.
    image = (3 << 20) + 12345
    with boot_server(tmp_path, BOOT_PORT + 10, HttpLimits(), image_bytes=image) as (server, _):
        status, body = request(BOOT_PORT + 10, "GET", contract.IMAGE.format(name="golden"))
        want = hashlib.sha256((server.images_dir / "golden.raw").read_bytes()).hexdigest()
    assert status == 200 and hashlib.sha256(body).hexdigest() == want

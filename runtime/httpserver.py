"""A ``socketserver`` (e.g. ``ThreadingHTTPServer``) bound, served in a thread, and stopped
within a deadline: what the mirror server and the boot server's HTTP side both need."""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO, Generic, TypeVar

from runtime.errors import ErrorFactory, MechanismError

S = TypeVar("S", bound=socketserver.BaseServer)

POLL_INTERVAL_S = 0.2
SENDFILE_CHUNK = 256 * 1024  # progress is counted per chunk (see ConnectionLimits.min_rate)


class ServerThread(Generic[S]):
    """One bound server and the thread running its ``serve_forever`` loop.

    Example::

        serving = ServerThread.start(lambda addr: _Server(root, addr), ("127.0.0.1", 0),
                                     name="mirror-http", error=MirrorError)
        print(serving.port)
        serving.stop(timeout=5)
    """

    def __init__(self, server: S, *, name: str, error: ErrorFactory = MechanismError) -> None:
        self.server = server
        self.error = error
        self.name = f"{name}-{self.port}"
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": POLL_INTERVAL_S},
                                        name=self.name, daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, make: Callable[[tuple[str, int]], S], address: tuple[str, int], *,
              name: str, error: ErrorFactory = MechanismError) -> ServerThread[S]:
        """Bind with ``make(address)`` and serve; a bind failure raises ``error`` naming it."""
        try:
            server = make(address)
        except OSError as exc:
            raise error(f"cannot listen on {address[0]}:{address[1]}: "
                        f"{exc.strerror or exc}") from exc
        return cls(server, name=name, error=error)

    @property
    def port(self) -> int:
        """The bound port (the real one when port 0 was asked for)."""
        return int(self.server.server_address[1])  # type: ignore[index]

    def stop(self, timeout: float, *, after_shutdown: Callable[[], None] | None = None) -> None:
        """Stop accepting, close the socket and join the loop, all within ``timeout`` s.

        ``shutdown()`` blocks until the loop notices, so it runs in a helper thread and is
        waited for with the deadline. ``after_shutdown`` runs before the socket is closed
        (e.g. to cut connections that are still open). Raises ``error`` if the loop is still
        running at the deadline.
        """
        stopper = threading.Thread(target=self.server.shutdown, daemon=True,
                                   name=f"{self.name}-stop")
        deadline = time.monotonic() + timeout
        stopper.start()
        stopper.join(timeout)
        if after_shutdown is not None:
            after_shutdown()
        self.server.server_close()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            raise self.error(f"{self.name} did not stop within {timeout:g} s")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold of a :class:`CappedHTTPServer`, and for how long.

    - ``max_connections``: open connections in all (503 and close beyond it).
    - ``max_per_client``: open connections from one source address (503 beyond it), so one
      client holding idle sockets cannot take the slots everyone else needs.
    - ``header_timeout``: from accepting (or from the previous answer, on a kept-alive
      connection) to the end of the request's headers; however slowly they trickle in.
    - ``response_grace`` and ``min_rate``: an answer of N bytes must be taken by the client at
      ``min_rate`` bytes/s on average after the first ``response_grace`` seconds, so it is cut
      at the latest ``response_grace + N / min_rate`` s after it began (the whole-response
      deadline), and a reader that falls behind the rate (a byte now and then) is cut as soon
      as it does.
    """

    max_connections: int = 64
    max_per_client: int = 16
    header_timeout: float = 10.0
    response_grace: float = 30.0
    min_rate: float = 512 * 1024

    def response_deadline(self, length: int) -> float:
        """Seconds an answer of ``length`` bytes may take in all.

        >>> ConnectionLimits(response_grace=10, min_rate=1000).response_deadline(5000)
        15.0
        """
        return self.response_grace + length / self.min_rate


@dataclass
class _Tracked:
    """One open connection: who, the deadline of what it is doing, and an answer's progress."""

    client: str
    deadline: float
    sending_since: float | None = None
    sent: int = 0


class CappedHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` with what metalchain's HTTP services need: the
    :class:`ConnectionLimits` (open connections in all and per source address, 503 and close
    beyond either; a deadline for the request line and headers; a whole-response deadline with
    a minimum transfer rate), every open connection tracked with the monotonic time by which
    its current step must be done (:meth:`set_deadline`, :meth:`begin_response`,
    :meth:`sent`), and overdue ones cut by the serving loop itself (:meth:`service_actions`
    runs :meth:`cut_overdue` at least every poll interval; ``everyone=True`` cuts all of them
    when stopping). Also: no FQDN lookup when binding (a DNS query that can hang on an isolated
    network) and one log line instead of a traceback for a connection that ended with an
    error. ``status_line`` is the protocol of the 503 answer.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    # The stdlib's backlog of 5 drops the SYNs of everyone else while a crowd connects (their
    # connect() then waits 1, 3, 7 s for retransmissions): accept fast and refuse with 503.
    request_queue_size = 128
    status_line = b"HTTP/1.0"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 limits: ConnectionLimits, log: logging.Logger) -> None:
        self.limits = limits
        self.log = log
        self.tracked: dict[socket.socket, _Tracked] = {}
        self.per_client: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        with self.lock:
            if self.per_client[client] >= self.limits.max_per_client:
                refused = f"{self.limits.max_per_client} connections from this address"
            elif len(self.tracked) >= self.limits.max_connections:
                refused = f"{self.limits.max_connections} connections"
            else:
                refused = ""
                self.tracked[request] = _Tracked(
                    client, time.monotonic() + self.limits.header_timeout)
                self.per_client[client] += 1
        if refused:
            self._refuse(request)
            self.log.warning("%s: connection refused, %s already open", client, refused)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def _refuse(self, request: Any) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(self.status_line + b" 503 Service Unavailable\r\n"
                            b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self.lock:
            entry = self.tracked.pop(request, None)
            if entry is not None:
                self.per_client[entry.client] -= 1
                if self.per_client[entry.client] <= 0:
                    del self.per_client[entry.client]

    def open_connections(self) -> int:
        """How many connections are open (accepted and not yet released)."""
        with self.lock:
            return len(self.tracked)

    def set_deadline(self, request: socket.socket, seconds: float) -> None:
        """The connection's current step must be done ``seconds`` from now (ends an answer's
        rate check: a kept-alive connection waiting for its next request line)."""
        with self.lock:
            entry = self.tracked.get(request)
            if entry is not None:
                entry.deadline = time.monotonic() + seconds
                entry.sending_since = None

    def begin_response(self, request: socket.socket, length: int) -> None:
        """An answer of ``length`` bytes starts now: the whole-response deadline and the
        minimum rate apply until the next :meth:`set_deadline`."""
        now = time.monotonic()
        with self.lock:
            entry = self.tracked.get(request)
            if entry is not None:
                entry.deadline = now + self.limits.response_deadline(length)
                entry.sending_since = now
                entry.sent = 0

    def sent(self, request: socket.socket, count: int) -> None:
        """``count`` more bytes of the current answer are with the kernel."""
        with self.lock:
            entry = self.tracked.get(request)
            if entry is not None:
                entry.sent += count

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; the client is answered or gone.
        self.log.warning("%s: connection ended with an error", client_address[0])

    def service_actions(self) -> None:
        # serve_forever calls this after every select() (at most POLL_INTERVAL_S apart).
        self.cut_overdue()

    def _is_late(self, entry: _Tracked, now: float) -> bool:
        if now >= entry.deadline:
            return True
        if entry.sending_since is None:
            return False
        owed = self.limits.min_rate * (now - entry.sending_since - self.limits.response_grace)
        return entry.sent < owed

    def cut_overdue(self, *, everyone: bool = False) -> None:
        """Shut down connections past their deadline or behind the minimum rate (all of them
        with ``everyone``); their handler threads then end on the closed socket."""
        now = time.monotonic()
        with self.lock:
            late = [(s, e.client) for s, e in self.tracked.items()
                    if everyone or self._is_late(e, now)]
        for sock, client in late:
            if not everyone:
                self.log.info("%s: connection cut (deadline or minimum rate)", client)
            try:
                # Reset when the handler closes it: what the client did not take is dropped
                # rather than kept in the kernel for a reader that never reads it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DispatchingHandler(BaseHTTPRequestHandler):
    """A request handler whose methods all go to ``_dispatch(method)``, that logs nothing by
    itself (the subclass logs one line per request, without secrets: ``_answered(status)``)
    and answers the stdlib's own refusals (a malformed request line or headers) without the
    explanation page, recording them like every other answer."""

    server: CappedHTTPServer

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def handle_one_request(self) -> None:
        # Waiting for the (next) request line: it and the headers must be in within this.
        self.server.set_deadline(self.connection, self._request_wait())
        super().handle_one_request()

    def _request_wait(self) -> float:
        """Seconds the (next) request line and headers may take (the header deadline)."""
        return self.server.limits.header_timeout

    def _begin_response(self, length: int) -> None:
        """Start the whole-response deadline for an answer of ``length`` bytes."""
        self.server.begin_response(self.connection, length)

    def _send_file(self, handle: BinaryIO, length: int) -> None:
        """Send ``length`` bytes of ``handle`` with ``socket.sendfile`` (zero-copy), in chunks
        so that the server sees the progress the minimum rate asks for. The headers must be
        flushed first; an OSError means the client went away or was cut."""
        offset = 0
        while offset < length:
            count = self.connection.sendfile(handle, offset,
                                             min(SENDFILE_CHUNK, length - offset))
            if count <= 0:
                raise ConnectionError("the file ended before its Content-Length")
            offset += count
            self.server.sent(self.connection, count)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _dispatch logs once per request, without anything secret

    def log_error(self, format: str, *args: Any) -> None:
        self.server.log.info("%s: %s", self.client_address[0], format % args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        super().send_error(code, message, None)
        self._answered(code)

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def _answered(self, status: int) -> None:
        raise NotImplementedError

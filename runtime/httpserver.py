"""A ``socketserver`` (e.g. ``ThreadingHTTPServer``) bound, served in a thread, and stopped
within a deadline: what the mirror server and the boot server's HTTP side both need."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

from runtime.errors import ErrorFactory, MechanismError

S = TypeVar("S", bound=socketserver.BaseServer)

POLL_INTERVAL_S = 0.2


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


class CappedHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` with what both of metalchain's HTTP services need: a cap on
    open connections (503 and close beyond it), every open connection tracked with the
    monotonic time by which it must have answered (:meth:`set_deadline`, :meth:`cut_overdue`
    shuts down the late ones, ``everyone=True`` all of them when stopping), no FQDN lookup
    when binding (a DNS query that can hang on an isolated network) and one log line instead
    of a traceback for a connection that ended with an error.

    ``max_connections`` and ``initial_deadline`` (seconds, from accepting) are given by the
    subclass's ``__init__``; ``status_line`` is the protocol of the 503 answer.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    status_line = b"HTTP/1.0"

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 max_connections: int, initial_deadline: float,
                 log: logging.Logger) -> None:
        self.max_connections = max_connections
        self.initial_deadline = initial_deadline
        self.log = log
        self.slots = threading.BoundedSemaphore(max_connections)
        self.deadlines: dict[socket.socket, float] = {}
        self.lock = threading.Lock()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(self.status_line + b" 503 Service Unavailable\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            self.log.warning("%s: connection refused, %d connections already open",
                             client_address[0], self.max_connections)
            return
        with self.lock:
            self.deadlines[request] = time.monotonic() + self.initial_deadline
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self.lock:
            if self.deadlines.pop(request, None) is not None:
                self.slots.release()

    def set_deadline(self, request: socket.socket, seconds: float) -> None:
        with self.lock:
            if request in self.deadlines:
                self.deadlines[request] = time.monotonic() + seconds

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; the client is answered or gone.
        self.log.warning("%s: connection ended with an error", client_address[0])

    def cut_overdue(self, *, everyone: bool = False) -> None:
        """Shut down connections past their deadline (all of them with ``everyone``)."""
        now = time.monotonic()
        with self.lock:
            late = [s for s, d in self.deadlines.items() if everyone or d <= now]
        for sock in late:
            try:
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

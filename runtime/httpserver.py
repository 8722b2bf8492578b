"""A ``socketserver`` (e.g. ``ThreadingHTTPServer``) bound, served in a thread, and stopped
within a deadline: what the mirror server and the boot server's HTTP side both need."""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

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

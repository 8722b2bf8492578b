"""A lossy loopback UDP relay: put it in front of a lab BMC to lose and delay IPMI packets.

::

    with UdpRelay(("127.0.0.1", 6231), listen_port=20801, drop_up=0.3, drop_down=0.3,
                  delay=(0.0, 0.05), seed=7) as relay:
        IpmiBmc("node1", "127.0.0.1", port=relay.port, ...).power_status()
        print(relay.stats)

Each client address gets its own upstream socket, so the BMC sees one source per client (as
it would without the relay) and replies go back to the client they answer. "Up" is client ->
BMC, "down" is BMC -> client; each direction has its own drop fraction. A packet that is not
dropped is sent after a uniform random delay in ``delay`` (so packets may overtake each other,
as on a real network). Everything random comes from one ``random.Random(seed)``: a seed gives
the same drop/delay decisions for the same packet order.

One thread, one selector, a heap of packets due: no asyncio loop to share with the caller.
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

Address = tuple[str, int]


@dataclass
class RelayStats:
    """Packets seen, dropped and forwarded, per direction."""

    up: int = 0
    down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0
    clients: set[Address] = field(default_factory=set)


class UdpRelay:
    """Forward datagrams between clients on ``listen_port`` and ``target``, losing some."""

    def __init__(self, target: Address, *, listen_port: int = 0, listen: str = "127.0.0.1",
                 drop_up: float = 0.0, drop_down: float = 0.0,
                 delay: tuple[float, float] = (0.0, 0.0), seed: int | None = None) -> None:
        for name, value in (("drop_up", drop_up), ("drop_down", drop_down)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value!r}")
        if not 0.0 <= delay[0] <= delay[1]:
            raise ValueError(f"delay must be (low, high) with 0 <= low <= high, got {delay!r}")
        self.target = target
        self.drop_up = drop_up
        self.drop_down = drop_down
        self.delay = delay
        self.stats = RelayStats()
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not crypto
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind((listen, listen_port))
        self._front.setblocking(False)
        self.port: int = self._front.getsockname()[1]
        self._upstream: dict[Address, socket.socket] = {}
        self._client_of: dict[socket.socket, Address] = {}
        self._due: list[tuple[float, int, socket.socket, bytes, Address]] = []
        self._order = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._front, selectors.EVENT_READ)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"udprelay:{self.port}",
                                        daemon=True)

    def __enter__(self) -> UdpRelay:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()

    def set_loss(self, drop_up: float, drop_down: float,
                 delay: tuple[float, float] | None = None) -> None:
        """Change the fault model while running (takes effect for the next packet)."""
        self.drop_up, self.drop_down = drop_up, drop_down
        if delay is not None:
            self.delay = delay

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._selector.close()
        for sock in [self._front, *self._upstream.values()]:
            sock.close()
        self._upstream.clear()
        self._client_of.clear()

    # -- the relay thread --------------------------------------------------------------------

    def _schedule(self, sock: socket.socket, data: bytes, to: Address, drop: float) -> bool:
        if self._random.random() < drop:
            return False
        low, high = self.delay
        wait = self._random.uniform(low, high) if high > 0 else 0.0
        self._order += 1
        heapq.heappush(self._due, (time.monotonic() + wait, self._order, sock, data, to))
        return True

    def _upstream_for(self, client: Address) -> socket.socket:
        sock = self._upstream.get(client)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((self._front.getsockname()[0], 0))
            sock.setblocking(False)
            self._upstream[client] = sock
            self._client_of[sock] = client
            self._selector.register(sock, selectors.EVENT_READ)
            self.stats.clients.add(client)
        return sock

    def _loop(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                _, _, sock, data, to = heapq.heappop(self._due)
                try:
                    sock.sendto(data, to)
                except OSError:
                    pass  # a lost datagram is what this relay is for
            wait = 0.05 if not self._due else max(0.0, min(0.05, self._due[0][0] - now))
            for key, _ in self._selector.select(timeout=wait):
                sock = key.fileobj
                if not isinstance(sock, socket.socket):
                    continue
                try:
                    data, source = sock.recvfrom(65536)
                except (BlockingIOError, ConnectionRefusedError):
                    continue
                except OSError:
                    continue
                if sock is self._front:
                    self.stats.up += 1
                    if not self._schedule(self._upstream_for(source), data, self.target,
                                          self.drop_up):
                        self.stats.dropped_up += 1
                else:
                    self.stats.down += 1
                    if not self._schedule(self._front, data, self._client_of[sock],
                                          self.drop_down):
                        self.stats.dropped_down += 1

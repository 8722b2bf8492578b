"""The latest sample per host, shared between one writer thread and scrapes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar


class _Sample(Protocol):
    @property
    def host(self) -> str: ...


S = TypeVar("S", bound=_Sample)


class LatestByHost(Generic[S]):
    """``record`` keeps a host's newest sample, ``forget`` drops hosts, ``snapshot`` copies;
    thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[str, S] = {}

    def record(self, sample: S) -> None:
        with self._lock:
            self._samples[sample.host] = sample

    def forget(self, hosts: Iterable[str]) -> None:
        with self._lock:
            for host in hosts:
                self._samples.pop(host, None)

    def snapshot(self) -> dict[str, S]:
        with self._lock:
            return dict(self._samples)

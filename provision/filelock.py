"""An exclusive file lock with a deadline, for builds that several processes may start."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from inventory.errors import MetalchainError


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, error: type[MetalchainError] = MetalchainError,
              poll: float = 0.2) -> Iterator[None]:
    """flock ``path``, waiting at most ``timeout`` s; the kernel drops it if the holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise error(f"waited {timeout:.0f} s for the lock {path}") from exc
                time.sleep(poll)
        yield
    finally:
        os.close(fd)

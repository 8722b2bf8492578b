"""An exclusive file lock with a deadline, for work that several processes may start at once."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import ErrorFactory, MechanismError


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, error: ErrorFactory = MechanismError,
              poll: float = 0.2, *, holder: str = "the lock",
              note: str | None = None) -> Iterator[None]:
    """flock ``path``, waiting at most ``timeout`` s (0: try once); the kernel drops it if the
    holder dies.

    On timeout raises ``error("waited N s for <holder> <path>")``, followed by
    ``(held by <note>)`` when the holder left a ``note`` (e.g. its pid) in the file. The lock
    file is created (with its parent directory) and kept: removing it would let two processes
    lock two files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
                if time.monotonic() >= deadline:
                    held = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise error(f"waited {timeout:g} s for {holder} {path}"
                                + (f" (held by {held})" if held else "")) from exc
                time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        if note is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)

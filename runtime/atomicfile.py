"""Replace a file atomically: readers (another process, a crash) see the old or the new file.

A temp file in the same directory (rename(2) does not cross file systems), written, fsynced,
given its mode, then ``os.replace``-d over the target. The temp file never outlives a failure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644, *,
                 unchanged_ok: bool = False) -> bool:
    """Write ``data`` (text is UTF-8) to ``path``; return False if nothing was written.

    With ``unchanged_ok``, a file that already holds exactly ``data`` is left alone (its mtime
    and inode too), and the call returns False. Parent directories are created. Raises
    ``OSError`` like the calls it makes; callers convert it to their own error.

    Example::

        if write_atomic(conf, text, unchanged_ok=True):
            reload_daemon()
    """
    path = Path(path)
    body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if unchanged_ok:
        try:
            if path.read_bytes() == body:
                return False
        except FileNotFoundError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True

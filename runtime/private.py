"""Files only the controller's user may read: 0600 in 0700 directories.

The event logs, the state store, process logs and run logs hold host output and run
arguments (and the state store the install tokens' hashes and pinned keys), so they get the
mode secrets.yml has. Files and directories that exist already, from a version that wrote
them 0644/0755, are tightened when they are next opened.

Example::

    with open_private(site.runs_dir / "r1.jsonl") as fh:
        fh.write(line)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 (missing parents get the usual mode: they may be shared, like
    the site's root) or tighten it to 0700 if it exists; returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if not os.stat(path).st_mode & stat.S_ISVTX:    # never a shared one such as /tmp
        tighten(path)
    return path


def tighten(path: Path) -> None:
    """Take group and other permissions away from ``path`` if it exists (a symlink is left
    alone: its target is not ours to change)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)


def open_private(path: Path, mode: str = "a", **kw: Any) -> IO[Any]:
    """``open(path, mode)`` for writing (``a``, ``w``, ``ab``, ``wb``), the file created 0600
    and tightened to 0600 if it existed."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        if "b" not in mode:
            kw.setdefault("encoding", "utf-8")
        return os.fdopen(fd, mode, **kw)
    except BaseException:
        os.close(fd)
        raise

"""The one store object: every concern's methods on one handle."""

from __future__ import annotations

import os
from pathlib import Path

from inventory.state.audit import AuditMixin
from inventory.state.base import StateError, _sqlite_url
from inventory.state.facts import FactsMixin
from inventory.state.incidents import IncidentsMixin
from inventory.state.keys import KeysMixin
from inventory.state.leases import LeasesMixin
from inventory.state.migrate import SchemaMixin
from inventory.state.nodes import NodesMixin
from inventory.state.runs import RunsMixin
from inventory.state.stats import StatsMixin
from inventory.state.tokens import TokensMixin
from runtime.private import FILE_MODE, private_dir, tighten

#: what SQLite keeps beside a database file
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class StateStore(NodesMixin, RunsMixin, KeysMixin, TokensMixin, FactsMixin, AuditMixin,
                 LeasesMixin, IncidentsMixin, StatsMixin, SchemaMixin):
    """One handle on the state store. Safe to share between threads of one process.

    A SQLite file (and its -wal, -shm, -journal files) is 0600 in a 0700 directory, also when
    an older version left it 0644: it holds host output, run arguments and pinned keys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = self._make_engine(url)
        path = sqlite_file(url)
        if path is None:
            self._migrate()
            return
        try:
            make_private_database(path)
        except OSError as exc:
            raise StateError(f"cannot open the state store {path}: "
                             f"{exc.strerror or exc}") from None
        # SQLite creates the -wal/-shm/-journal files with the database file's mode (its unix
        # VFS copies it), and that file is 0600 already: no process-wide umask needed, which
        # other threads of serve would have shared
        self._migrate()
        for suffix in SQLITE_SIDE_FILES:
            tighten(path.with_name(path.name + suffix))

    @classmethod
    def open_file(cls, path: Path) -> StateStore:
        return cls(_sqlite_url(path))

    def close(self) -> None:
        self._engine.dispose()


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL; None for other URLs and in-memory
    databases."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if raw in ("", ":memory:") else Path(raw)


def make_private_database(path: Path) -> None:
    """The database's directory 0700 and the file 0600, created empty if missing (SQLite
    then makes a database of it), tightened with its side files if they exist."""
    private_dir(path.parent)
    if not path.exists():
        # Only a file that does not exist yet is opened here: closing any descriptor of a
        # database this process already has open drops all of its POSIX locks on the file
        # (SQLite's locks included), and another process may then delete the -shm/-wal under
        # a live connection ("disk I/O error"). An existing file is only chmod-ed.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
        except FileExistsError:
            pass
    for p in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        tighten(p)

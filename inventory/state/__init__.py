"""The state store: node lifecycle and its history, the run journal, pinned SSH host keys and
the audit log.

SQLAlchemy Core over a SQLite file by default (WAL, so readers never block the writer and
several processes on one machine can share it) or a PostgreSQL URL when several controllers
share one store. Rows are keyed by surrogate ids: a host's name is a unique, renameable
attribute, and its history follows a rename.

Every write is one transaction. On SQLite it starts with ``BEGIN IMMEDIATE``: the write lock is
taken up front, so two writers queue on ``busy_timeout`` instead of failing when a deferred
transaction tries to upgrade its read lock.

The store is one object, :class:`StateStore`; its methods are grouped by concern in the modules
of this package (nodes, runs, keys, tokens, facts, audit, migrate) on top of ``base``.
"""

from inventory.state.base import BUSY_TIMEOUT_MS
from inventory.state.nodes import NodeRecord, Transition
from inventory.state.runs import JOURNAL_OUTCOMES, JournalEntry
from inventory.state.schema import SCHEMA_VERSION, metadata
from inventory.state.states import NodeState
from inventory.state.store import StateStore

__all__ = [
    "BUSY_TIMEOUT_MS",
    "JOURNAL_OUTCOMES",
    "SCHEMA_VERSION",
    "JournalEntry",
    "NodeRecord",
    "NodeState",
    "StateStore",
    "Transition",
    "metadata",
]

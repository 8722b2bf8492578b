"""The one store object: every concern's methods on one handle."""

from __future__ import annotations

from pathlib import Path

from inventory.state.audit import AuditMixin
from inventory.state.base import _sqlite_url
from inventory.state.facts import FactsMixin
from inventory.state.incidents import IncidentsMixin
from inventory.state.keys import KeysMixin
from inventory.state.leases import LeasesMixin
from inventory.state.migrate import SchemaMixin
from inventory.state.nodes import NodesMixin
from inventory.state.runs import RunsMixin
from inventory.state.stats import StatsMixin
from inventory.state.tokens import TokensMixin


class StateStore(NodesMixin, RunsMixin, KeysMixin, TokensMixin, FactsMixin, AuditMixin,
                 LeasesMixin, IncidentsMixin, StatsMixin, SchemaMixin):
    """One handle on the state store. Safe to share between threads of one process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = self._make_engine(url)
        self._migrate()

    @classmethod
    def open_file(cls, path: Path) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(_sqlite_url(path))

    def close(self) -> None:
        self._engine.dispose()

"""Plumbing shared by every part of the store: the engine, one transaction per write, reads,
and the node-id lookup every table keys on."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inventory.errors import StateError
from inventory.state.integrity import integrity_error
from inventory.state.schema import nodes

BUSY_TIMEOUT_MS = 30_000


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class StoreBase:
    """The engine and transactions; the concern mixins of :class:`StateStore` build on it."""

    url: str
    _engine: Engine

    @staticmethod
    def _make_engine(url: str) -> Engine:
        try:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

                @event.listens_for(engine, "connect")
                def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                    # Take transaction control away from pysqlite so BEGIN IMMEDIATE is ours.
                    dbapi_conn.isolation_level = None
                    cur = dbapi_conn.cursor()
                    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.execute("PRAGMA foreign_keys=ON")
                    cur.close()

                @event.listens_for(engine, "begin")
                def _on_begin(conn: Connection) -> None:
                    mode = "DEFERRED" if conn.get_execution_options().get("readonly") else \
                        "IMMEDIATE"
                    conn.exec_driver_sql(f"BEGIN {mode}")

                return engine
            return create_engine(url, pool_pre_ping=True,
                                 connect_args={"connect_timeout": 10}
                                 if url.startswith("postgresql") else {})
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StateError(f"cannot open the state store {_safe_url(url)}: {exc}") from None

    @contextmanager
    def _write(self, row: str | None = None) -> Iterator[Connection]:
        """One write transaction; ``row`` ("node 'n1'") names what it writes in errors."""
        try:
            with self._engine.begin() as conn:
                yield conn
        except IntegrityError as exc:
            raise integrity_error(row or f"state store {_safe_url(self.url)}", exc) from None
        except SQLAlchemyError as exc:
            raise StateError(f"state store {_safe_url(self.url)}: {exc.__class__.__name__}: "
                             f"{exc.orig if hasattr(exc, 'orig') else exc}") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as raw:
                conn = raw.execution_options(readonly=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise StateError(f"state store {_safe_url(self.url)}: {exc.__class__.__name__}: "
                             f"{exc.orig if hasattr(exc, 'orig') else exc}") from None

    @staticmethod
    def _node_id(conn: Connection, name: str, create: bool) -> int | None:
        row = conn.execute(select(nodes.c.id).where(nodes.c.name == name)).first()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        res = conn.execute(insert(nodes).values(name=name, reason="", created_at=time.time()))
        return int(res.inserted_primary_key[0])


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<state url>"

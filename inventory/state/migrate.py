"""Creating and upgrading the schema: Alembic migrations, run when a store is opened.

They run inside one write transaction (``BEGIN IMMEDIATE`` on SQLite, plus a transaction-level
advisory lock on PostgreSQL), so two processes opening a fresh store at once queue: the second
finds the schema at head and has nothing to do. SQLite and PostgreSQL both roll DDL back, so a
migration that fails leaves the store as it was.

A store made before Alembic has no ``alembic_version`` table; the version it recorded in
``meta`` tells which revision it is at (revision ``NNNN`` is schema version NN), and it is
stamped there before upgrading.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection

from inventory.errors import StateError
from inventory.state.base import StoreBase, _safe_url
from inventory.state.schema import SCHEMA_VERSION, meta

MIGRATIONS = Path(__file__).with_name("migrations")
# The key of the PostgreSQL advisory lock: any number, as long as every metalchain uses it.
_PG_MIGRATION_LOCK = 0x6D6574616C


def alembic_config(conn: Connection | None = None) -> Config:
    """An Alembic configuration for our migrations, bound to ``conn``; no alembic.ini."""
    cfg = Config()
    # Config values go through ConfigParser interpolation: a '%' in the path must be doubled.
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.attributes["connection"] = conn
    return cfg


def revision_of(version: int) -> str:
    """The Alembic revision of schema ``version``."""
    return f"{version:04d}"


class SchemaMixin(StoreBase):
    def _migrate(self) -> None:
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
            cfg = alembic_config(conn)
            current = MigrationContext.configure(conn).get_current_revision()
            recorded = self._recorded_version(conn)
            if recorded is not None and recorded > SCHEMA_VERSION:
                raise self._too_new(str(recorded))
            try:
                known = ScriptDirectory.from_config(cfg)
                if current is None and recorded is not None:
                    command.stamp(cfg, revision_of(recorded))
                elif current is not None and not _known(known, current):
                    raise self._too_new(f"revision {current}")
                command.upgrade(cfg, "head")
            except CommandError as exc:
                raise StateError(f"state store {_safe_url(self.url)}: cannot migrate the "
                                 f"schema: {exc}") from None
            if recorded is None:
                conn.execute(insert(meta).values(key="schema_version",
                                                 value=str(SCHEMA_VERSION)))
            elif recorded != SCHEMA_VERSION:
                # Older metalchains read this: it makes them refuse a store newer than they are.
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(
                    value=str(SCHEMA_VERSION)))

    @staticmethod
    def _recorded_version(conn: Connection) -> int | None:
        if not inspect(conn).has_table("meta"):
            return None
        value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")
                             ).scalar()
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise StateError(f"the state store's meta table records schema version {value!r}, "
                             "not a number") from None

    def _too_new(self, found: str) -> StateError:
        return StateError(f"the state store {_safe_url(self.url)} has schema version {found}, "
                          f"newer than this metalchain ({SCHEMA_VERSION}); upgrade metalchain")

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(meta.c.value).where(
                meta.c.key == "schema_version")).scalar_one())


def _known(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False

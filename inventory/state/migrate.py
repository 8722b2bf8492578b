"""Creating and upgrading the schema: Alembic migrations, run when a store is opened.

They run inside one write transaction (``BEGIN IMMEDIATE`` on SQLite, plus a transaction-level
advisory lock on PostgreSQL), so two processes opening a fresh store at once queue: the second
finds the schema at head and has nothing to do. SQLite and PostgreSQL both roll DDL back, so a
migration that fails leaves the store as it was.

A store made before Alembic has no ``alembic_version`` table; the version it recorded in
``meta`` tells which revision it is at (revision ``NNNN`` is schema version NN), and it is
stamped there before upgrading.

A store already at head (every open but the first after an upgrade) is recognised with two
SELECTs, without importing Alembic: on this project's 2-core machine, importing it added
~0.3 s to every CLI command and loading the scripts ~10 ms to every open.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection

from inventory.errors import StateError
from inventory.state.base import StoreBase, _safe_url
from inventory.state.schema import SCHEMA_VERSION, meta

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).with_name("migrations")
# The key of the PostgreSQL advisory lock: any number, as long as every metalchain uses it.
_PG_MIGRATION_LOCK = 0x6D6574616C


def alembic_config(conn: Connection | None = None) -> Config:
    """An Alembic configuration for our migrations, bound to ``conn``; no alembic.ini."""
    from alembic.config import Config

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
            recorded = _recorded_version(conn)
            if recorded is not None and recorded > SCHEMA_VERSION:
                raise self._too_new(str(recorded))
            current = _current_revisions(conn)
            if current == [revision_of(SCHEMA_VERSION)] and recorded == SCHEMA_VERSION:
                return
            self._upgrade(conn, current, recorded)
            if recorded is None:
                conn.execute(insert(meta).values(key="schema_version",
                                                 value=str(SCHEMA_VERSION)))
            elif recorded != SCHEMA_VERSION:
                # Older metalchains read this: it makes them refuse a store newer than they are.
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(
                    value=str(SCHEMA_VERSION)))

    def _upgrade(self, conn: Connection, current: list[str], recorded: int | None) -> None:
        from alembic import command
        from alembic.script import ScriptDirectory
        from alembic.util import CommandError

        cfg = alembic_config(conn)
        try:
            script = ScriptDirectory.from_config(cfg)
            for revision in current:
                if not _known(script, revision):
                    raise self._too_new(f"revision {revision}")
            if not current and recorded is not None:
                command.stamp(cfg, revision_of(recorded))
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise StateError(f"state store {_safe_url(self.url)}: cannot migrate the "
                             f"schema: {exc}") from None

    def _too_new(self, found: str) -> StateError:
        return StateError(f"the state store {_safe_url(self.url)} has schema version {found}, "
                          f"newer than this metalchain ({SCHEMA_VERSION}); upgrade metalchain")

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(meta.c.value).where(
                meta.c.key == "schema_version")).scalar_one())


def _recorded_version(conn: Connection) -> int | None:
    """The version in ``meta`` (every metalchain writes it; older ones know nothing else)."""
    if not inspect(conn).has_table("meta"):
        return None
    value = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StateError(f"the state store's meta table records schema version {value!r}, "
                         "not a number") from None


def _current_revisions(conn: Connection) -> list[str]:
    """The revisions in Alembic's version table; none for a store made before Alembic."""
    if not inspect(conn).has_table("alembic_version"):
        return []
    return sorted(r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version"))


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False

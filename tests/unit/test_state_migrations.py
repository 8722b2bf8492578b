"""The state store's Alembic migrations: from the first schema to the newest, on SQLite.

``data/state_schemas.sql`` holds the schema each release that introduced a version created
(dumped from a store it made), so these tests upgrade stores exactly as older releases left them.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from inventory.errors import StateError
from inventory.state import SCHEMA_VERSION, StateStore, metadata
from inventory.state.migrate import alembic_config, revision_of

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
VERSIONS = range(1, SCHEMA_VERSION + 1)
# The last schema a release created with create_all (later ones only ever came from Alembic).
LAST_CREATE_ALL = 4


def _schema_sql(version: int) -> str:
    """The statements of every '-- schema N' section of the fixture up to ``version``."""
    sections = re.split(r"^-- schema (\d+)\b.*$", (DATA / "state_schemas.sql").read_text(),
                        flags=re.M)
    found = {int(n): body for n, body in zip(sections[1::2], sections[2::2], strict=True)}
    assert set(found) == set(VERSIONS)
    return "".join(found[v] for v in range(1, version + 1))


def _legacy_store(path: Path, version: int) -> None:
    """A store as the metalchain of schema ``version`` left it, with one node in it."""
    db = sqlite3.connect(path)
    db.executescript(_schema_sql(version))
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    db.execute("INSERT INTO nodes (name, state, reason, state_since, created_at) "
               "VALUES ('n1', 'active', 'before upgrade', 1.0, 1.0)")
    db.commit()
    db.close()


def _shape(url: str) -> dict[str, object]:
    """Tables, columns, keys and indexes as the database reports them (names normalised)."""
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        out: dict[str, object] = {}
        for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
            out[table] = (
                [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                insp.get_pk_constraint(table)["constrained_columns"],
                sorted((tuple(f["constrained_columns"]), f["referred_table"])
                       for f in insp.get_foreign_keys(table)),
                sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)),
                sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            )
        return out
    finally:
        engine.dispose()


def _differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_head_is_the_schema_version():
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == \
        revision_of(SCHEMA_VERSION)


def test_fresh_store_at_head_equals_the_metadata(tmp_path):
    StateStore.open_file(tmp_path / "m.db").close()
    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert _revision(url) == revision_of(SCHEMA_VERSION)
    assert _differences(url) == []


def test_each_revision_reproduces_its_schema(tmp_path):
    """Upgrading step by step from nothing gives, at revision N, what release N created."""
    engine = create_engine(f"sqlite:///{tmp_path / 'stepped.db'}")
    try:
        for version in VERSIONS:
            with engine.begin() as conn:
                command.upgrade(alembic_config(conn), revision_of(version))
            legacy = tmp_path / f"v{version}.db"
            _legacy_store(legacy, version)
            assert _shape(str(engine.url)) == _shape(f"sqlite:///{legacy}"), version
    finally:
        engine.dispose()


@pytest.mark.parametrize("version", VERSIONS)
def test_store_of_an_older_release_upgrades_to_head(tmp_path, version):
    path = tmp_path / "old.db"
    _legacy_store(path, version)
    store = StateStore.open_file(path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.node("n1").state == "active"
        assert store.check_deploy_token("n1", store.issue_deploy_token("n1", ttl=10))
        store.save_drift("n1", [{"role": "r", "resource": "x", "status": "drift"}])
        assert list(store.drift_report()) == ["n1"]
    finally:
        store.close()
    url = f"sqlite:///{path}"
    assert _revision(url) == revision_of(SCHEMA_VERSION)
    assert _differences(url) == []
    StateStore.open_file(path).close()         # opening it again at head changes nothing
    assert _revision(url) == revision_of(SCHEMA_VERSION)


def test_store_left_half_upgraded_by_an_older_release(tmp_path):
    """Older releases created every table, then bumped the version in a second transaction."""
    path = tmp_path / "half.db"
    _legacy_store(path, LAST_CREATE_ALL)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    StateStore.open_file(path).close()
    assert _differences(f"sqlite:///{path}") == []


def test_unknown_revision_is_a_newer_store(tmp_path):
    path = tmp_path / "m.db"
    StateStore.open_file(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE alembic_version SET version_num='9999'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="revision 9999, newer than this metalchain"):
        StateStore.open_file(path)


def test_a_store_at_head_opens_without_running_alembic(tmp_path, monkeypatch):
    from inventory.state.migrate import SchemaMixin

    StateStore.open_file(tmp_path / "m.db").close()

    def _no_upgrade(*_args: object) -> None:
        raise AssertionError("a store at head was handed to Alembic")

    monkeypatch.setattr(SchemaMixin, "_upgrade", _no_upgrade)
    StateStore.open_file(tmp_path / "m.db").close()
    with pytest.raises(AssertionError, match="handed to Alembic"):
        StateStore.open_file(tmp_path / "other.db")

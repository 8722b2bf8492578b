"""Integrity errors from the store are StateErrors naming the row, never the driver's text."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from inventory.errors import StateError
from inventory.state import StateStore

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "m.db")
    yield s
    s.close()


def _other_writer_creates(store: StateStore, table: str, when: str, insert: str) -> None:
    """Emulate another controller winning a race (as on PostgreSQL, where two transactions
    can both find no row): a trigger inserts the same row just before ours."""
    with store._engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TRIGGER other_writer BEFORE INSERT ON {table} "
                             f"WHEN {when} BEGIN {insert}; END")


def test_a_lost_race_creating_a_node_names_the_node(store):
    _other_writer_creates(store, "nodes", "NEW.name = 'node1'",
                          "INSERT INTO nodes (name, reason, created_at) VALUES ('node1', '', 0)")
    with pytest.raises(StateError, match=r"^node 'node1': name already exists$"):
        store.ensure_node("node1")
    with pytest.raises(StateError, match=r"^node 'node1': name already exists$"):
        store.set_node_state("node1", "enrolled", "added")


def test_a_lost_race_pinning_a_key_names_host_and_key_type(store):
    store.ensure_node("h1")
    _other_writer_creates(
        store, "host_keys", "NEW.key_type = 'ssh-ed25519'",
        "INSERT INTO host_keys (node_id, key_type, public_key, source, pinned_at) "
        "VALUES (NEW.node_id, NEW.key_type, 'AAAAother', 'other', 0)")
    with pytest.raises(StateError, match=r"^host key ssh-ed25519 of 'h1': node_id, key_type "
                                         "already exists$"):
        store.pin_host_key("h1", "ssh-ed25519 AAAAC3Nza", "test")


def test_a_drift_row_without_status_names_host_and_resource_and_writes_nothing(store):
    store.save_drift("h1", [{"role": "base", "resource": "file /etc/a", "status": "drift"}])
    with pytest.raises(StateError, match=r"^drift of 'h1', resource 'file /etc/b': status is "
                                         "missing$"):
        store.save_drift("h1", [{"role": "base", "resource": "file /etc/b", "status": None}])
    with pytest.raises(StateError, match=r"^drift of 'h1', resource 'file /etc/c': role is "
                                         "missing$"):
        store.save_drift("h1", [{"resource": "file /etc/c", "status": "drift"}])
    assert [r["resource"] for r in store.drift_report()["h1"]] == ["file /etc/a"]


class _PgError(Exception):
    """What psycopg raises: a SQLSTATE and a message whose DETAIL quotes the values."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate,text,reason", [
    ("23505", 'duplicate key value violates unique constraint "deploy_tokens_token_sha256_key"'
              "\nDETAIL:  Key (token_sha256)=(5ec2e7) already exists.",
     "token_sha256 already exists"),
    ("23505", 'duplicate key value violates unique constraint "host_keys_node_id_key_type_key"'
              "\nDETAIL:  Key (node_id, key_type)=(3, ssh-ed25519) already exists.",
     "node_id, key_type already exists"),
    ("23502", 'null value in column "status" of relation "drift" violates not-null constraint'
              "\nDETAIL:  Failing row contains (1, 2, base, 5ec2e7, null).",
     "status is missing"),
    ("23503", 'insert or update on table "journal" violates foreign key constraint'
              "\nDETAIL:  Key (run_id)=(5ec2e7) is not present in table \"runs\".",
     "refers to a row that does not exist"),
])
def test_postgresql_integrity_errors_name_columns_not_values(sqlstate, text, reason):
    from inventory.state.integrity import integrity_error

    err = integrity_error("row 'x'", IntegrityError("INSERT ...", {}, _PgError(sqlstate, text)))
    assert str(err) == f"row 'x': {reason}"
    assert "5ec2e7" not in str(err)

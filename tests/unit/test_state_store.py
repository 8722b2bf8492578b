"""The state store: transitions, rename, journal, host keys, schema version."""

from __future__ import annotations

import pytest

from inventory.errors import InputError, StateError
from inventory.state import SCHEMA_VERSION, NodeState, StateStore

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "state" / "m.db")
    yield s
    s.close()


def test_transitions_and_compare_and_set(store):
    store.set_node_state("n1", "enrolled", "added")
    store.set_node_state("n1", "powering_on", "go", expect=("enrolled",))
    with pytest.raises(StateError, match="is powering_on, expected enrolled"):
        store.set_node_state("n1", "powering_on", "again", expect=("enrolled",))
    assert [t.to_state for t in store.transitions("n1")] == ["enrolled", "powering_on"]
    assert store.node("n1").state == "powering_on"


def test_history_survives_rename(store):
    store.set_node_state("old", "enrolled")
    store.pin_host_key("old", "ssh-ed25519 AAAAC3Nza", "test")
    run = store.start_run("run", "pb")
    store.journal_outcome(store.journal_intent(run, "old", 0, "s"), "ok")
    node_id = store.node("old").id
    store.rename_node("old", "new")
    assert store.node("old") is None
    assert store.node("new").id == node_id
    assert len(store.transitions("new")) == 1
    assert store.host_keys_of("new") == ["ssh-ed25519 AAAAC3Nza"]
    assert store.journal_entries(host="new")[0].status == "ok"
    store.set_node_state("other", "enrolled")
    with pytest.raises(InputError, match="taken"):
        store.rename_node("new", "other")


def test_journal_intent_then_outcome(store):
    run = store.start_run("run", "pb", {"limit": "x"})
    e = store.journal_intent(run, "h", 3, "apply base")
    assert store.journal_entries(run)[0].status == "intent"
    store.journal_outcome(e, "changed", {"changed": 2})
    entry = store.journal_entries(run)[0]
    assert (entry.status, entry.step_index, entry.detail) == ("changed", 3, {"changed": 2})
    with pytest.raises(ValueError):
        store.journal_outcome(e, "bogus")


def test_schema_version_guard(tmp_path):
    path = tmp_path / "m.db"
    s = StateStore.open_file(path)
    assert s.schema_version() == SCHEMA_VERSION
    with s._engine.begin() as conn:
        conn.exec_driver_sql("UPDATE meta SET value='999' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StateError, match="newer than this metalchain"):
        StateStore.open_file(path)


def test_unopenable_store_is_a_clean_error(tmp_path):
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StateError, match="state store"):
        StateStore.open_file(tmp_path / "dir.db")


def test_deploy_tokens_one_time(store):
    t1 = store.issue_deploy_token("n1", ttl=60)
    assert store.check_deploy_token("n1", t1)
    assert not store.check_deploy_token("n2", t1)          # another node's token
    assert not store.check_deploy_token("n1", t1 + "x")
    t2 = store.issue_deploy_token("n1", ttl=60)             # a new deployment revokes t1
    assert not store.check_deploy_token("n1", t1)
    assert store.check_deploy_token("n1", t2)
    assert not store.spend_deploy_token("n2", t2)
    assert store.spend_deploy_token("n1", t2)
    assert not store.spend_deploy_token("n1", t2)           # replay after done
    assert not store.check_deploy_token("n1", t2)
    expired = store.issue_deploy_token("n1", ttl=-1)
    assert not store.check_deploy_token("n1", expired)
    with store._read() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_sha256 FROM deploy_tokens")]
    assert t2 not in stored and len(stored) == 3


def test_unknown_state_is_refused_naming_it(store):
    with pytest.raises(StateError, match="node 'n1': unknown state 'enroled'"):
        store.set_node_state("n1", "enroled", "typo")
    with pytest.raises(StateError, match="node 'n1': unknown state 'bogus'"):
        store.set_node_state("n1", "enrolled", "cas", expect=(None, "bogus"))
    assert store.node("n1") is None
    assert store.transitions("n1") == []


def test_states_read_back_as_enum_members(store):
    store.set_node_state("n1", "enrolled", "added")
    store.set_node_state("n1", NodeState.POWERING_ON, "go", expect=(NodeState.ENROLLED,))
    assert type(store.node("n1").state) is NodeState
    assert store.node("n1").state is NodeState.POWERING_ON == "powering_on"
    assert [type(n.state) for n in store.list_nodes()] == [NodeState]
    first, second = store.transitions("n1")
    assert (first.from_state, type(first.to_state)) == (None, NodeState)
    assert second.from_state is NodeState.ENROLLED and second.to_state is NodeState.POWERING_ON


def test_unknown_stored_state_is_a_clean_error(store):
    store.set_node_state("n1", "enrolled", "added")
    with store._engine.begin() as conn:
        conn.exec_driver_sql("UPDATE nodes SET state='warp_speed' WHERE name='n1'")
    with pytest.raises(StateError, match="node 'n1': unknown state 'warp_speed'"):
        store.node("n1")

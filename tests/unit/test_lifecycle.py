from __future__ import annotations

import pytest

from inventory.errors import InputError, StateError
from inventory.state import NodeState, StateStore
from provision import lifecycle as lc

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("current,to,ok", [
    (None, lc.ENROLLED, True), (lc.ENROLLED, lc.POWERING_ON, True),
    (lc.POWERING_ON, lc.PXE_BOOTING, True), (lc.PXE_BOOTING, lc.INSTALLING, True),
    (lc.INSTALLING, lc.INSTALLED, True), (lc.INSTALLED, lc.REBOOTING, True),
    (lc.REBOOTING, lc.ACTIVE, True), (lc.FAILED, lc.POWERING_ON, True),
    (lc.ACTIVE, lc.POWERING_ON, True), (lc.MAINTENANCE, lc.ENROLLED, True),
    (lc.ENROLLED, lc.ACTIVE, False), (lc.PXE_BOOTING, lc.ACTIVE, False),
    (lc.ACTIVE, lc.FAILED, False), (lc.FAILED, lc.ACTIVE, False),
    (lc.MAINTENANCE, lc.POWERING_ON, False),
] + [(s, lc.FAILED, True) for s in lc.IN_PROGRESS]
  + [(s, lc.MAINTENANCE, True) for s in lc.IN_PROGRESS])
def test_transitions(current, to, ok):
    if ok:
        lc.check_transition(current, to)
    else:
        with pytest.raises(StateError):
            lc.check_transition(current, to)


def test_states_are_enum_members_equal_to_their_strings():
    assert lc.ACTIVE is NodeState.ACTIVE and lc.ACTIVE == "active"
    assert lc.FAILED == "provision_failed" and f"{lc.POWERING_ON}" == "powering_on"
    assert set(lc.STATES) == set(NodeState)
    assert all(type(s) is NodeState for s in (*lc.STATES, *lc.IN_PROGRESS))
    assert lc.DEFAULT_TIMEOUTS["installing"] == lc.DEFAULT_TIMEOUTS[lc.INSTALLING]


def test_every_in_progress_state_has_a_timeout_and_a_way_out():
    for s in lc.IN_PROGRESS:
        assert lc.DEFAULT_TIMEOUTS[s] > 0
        assert lc.FAILED in lc.ALLOWED[s]
    assert lc.POWERING_ON in lc.ALLOWED[lc.FAILED]


def test_overdue():
    t = {**lc.DEFAULT_TIMEOUTS, lc.INSTALLING: 10}
    nodes = [("a", lc.INSTALLING, 100.0), ("b", lc.INSTALLING, 95.0), ("c", lc.ACTIVE, 0.0),
             ("d", lc.REBOOTING, None)]
    assert [o.node for o in lc.overdue(nodes, 106.0, t)] == ["b"]


def test_parse_timeouts():
    assert lc.parse_timeouts({"installing": 5}, "m.yml")[lc.INSTALLING] == 5.0
    with pytest.raises(InputError, match="not a timed state"):
        lc.parse_timeouts({"active": 5}, "m.yml")
    with pytest.raises(InputError, match="positive number"):
        lc.parse_timeouts({"installing": -1}, "m.yml")


def test_lifecycle_records_and_fails_once(tmp_path):
    store = StateStore.open_file(tmp_path / "s.db")
    life = lc.Lifecycle(store)
    life.enroll("n1")
    life.move("n1", lc.POWERING_ON, "power on")
    token = store.issue_deploy_token("n1", 60)
    assert life.fail("n1", "timed out")
    assert not life.fail("n1", "again")              # already failed: nothing recorded
    assert not store.check_deploy_token("n1", token)  # failing revokes the token
    assert [t.to_state for t in store.transitions("n1")] == [
        lc.ENROLLED, lc.POWERING_ON, lc.FAILED]
    assert life.state("n1") is NodeState.FAILED
    with pytest.raises(StateError):
        life.move("n1", lc.ACTIVE, "nope")

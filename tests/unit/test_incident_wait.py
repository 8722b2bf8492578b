"""`incidents wait`: the first incident on a host since a time, followed until it ends."""

from __future__ import annotations

import pytest

from inventory.state.incidents import IncidentRecord
from orchestrate.incident_wait import IncidentWaitTimeout, first_incident, wait_incident

pytestmark = pytest.mark.unit


def rec(id_: int, state: str, created: float, alert: str = "VmDown", target: str = "vm1"
        ) -> IncidentRecord:
    return IncidentRecord(id_, f"f{id_}", "2026-12-01T00:00:00Z", "alertmanager", alert,
                          target, {}, {}, "firing", state, 0, "vm-down", 1, created, created,
                          None if state in ("open", "acting") else created + 30)


class Store:
    """A store whose incidents change as the wait polls it (one list per poll)."""

    def __init__(self, *polls: list[IncidentRecord]) -> None:
        self.polls = list(polls)

    def list_incidents(self, states=None, target=None, limit=100):
        found = self.polls.pop(0) if len(self.polls) > 1 else self.polls[0]
        return sorted((i for i in found if target is None or i.target == target),
                      key=lambda i: -i.id)


def test_the_oldest_matching_incident_since_the_time():
    store = Store([rec(1, "healed", 90.0), rec(2, "open", 110.0), rec(3, "open", 120.0),
                   rec(4, "open", 130.0, alert="ExporterDown")])
    assert first_incident(store, "vm1", 100.0).id == 2
    assert first_incident(store, "vm1", 125.0, "ExporterDown").id == 4
    assert first_incident(store, "node1", 0.0) is None


def test_waits_until_it_ends():
    store = Store([], [rec(2, "open", 110.0)], [rec(2, "acting", 110.0)],
                  [rec(2, "healed", 110.0)])
    now = [0.0]
    got = wait_incident(store, "vm1", since=100.0, timeout=60, clock=lambda: now[0],
                        sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert got.state == "healed" and now[0] == 1.5


def test_a_timeout_says_what_it_saw():
    now = [0.0]
    kw = {"clock": lambda: now[0], "sleep": lambda s: now.__setitem__(0, now[0] + s)}
    with pytest.raises(IncidentWaitTimeout, match="none arrived"):
        wait_incident(Store([]), "vm1", since=0.0, timeout=2, **kw)
    with pytest.raises(IncidentWaitTimeout, match="incident 7 is still acting"):
        wait_incident(Store([rec(7, "acting", 5.0)]), "vm1", since=0.0, timeout=2, **kw)

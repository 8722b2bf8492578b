"""The state store's group commit (``ingest_batch``): several notifications in one transaction
with exactly the outcome of ingesting them one by one, in order."""

from __future__ import annotations

import pytest

from inventory.state import StateStore
from inventory.state.incidents import IncidentInput

pytestmark = pytest.mark.unit


def _alert(fp: str, status: str = "firing", starts: str = "2026-12-01T10:00:00Z"
           ) -> IncidentInput:
    return IncidentInput(fingerprint=fp, starts_at=starts, status=status, alertname="A",
                         target="web1", labels={"alertname": "A"})


@pytest.fixture
def stores(tmp_path):
    one, batch = StateStore.open_file(tmp_path / "one.db"), StateStore.open_file(tmp_path / "b.db")
    yield one, batch
    one.close()
    batch.close()


def _snapshot(store: StateStore) -> list[tuple]:
    out = []
    for inc in sorted(store.list_incidents(limit=1000), key=lambda i: i.id):
        out.append((inc.id, inc.fingerprint, inc.starts_at, inc.alert_status, inc.state,
                    inc.deliveries, inc.ended_at is not None,
                    [(e["kind"], e["detail"]) for e in store.incident_timeline(inc.id)]))
    return out


def test_a_batch_is_the_same_as_its_notifications_one_by_one(stores):
    one, batch = stores
    for store in stores:     # history before the batch: one open, one being acted on
        store.ingest([_alert("known"), _alert("acting")], "alertmanager")
        assert store.update_incident(2, event="acting", state="acting", expect=["open"])
    notifications = [
        ([_alert("a"), _alert("known")], "alertmanager", {"client": "10.0.0.1"}),
        ([_alert("a"), _alert("b", "resolved")], "alertmanager", {"client": "10.0.0.2"}),
        ([_alert("a", "resolved"), _alert("acting", "resolved")], "event", None),
        ([_alert("a", "resolved"), _alert("a"), _alert("a", starts="2026-12-01T11:00:00Z")],
         "alertmanager", {}),
    ]
    singles = [one.ingest(items, source, received) for items, source, received in notifications]
    grouped = batch.ingest_batch(notifications)
    assert grouped == singles
    assert _snapshot(batch) == _snapshot(one)
    a = batch.incident(grouped[0][0].incident_id)
    assert a is not None and a.deliveries == 5 and a.state == "resolved"
    acting = batch.incident(2)
    assert acting is not None and acting.state == "acting" and acting.alert_status == "resolved"


def test_one_key_replayed_in_a_batch_is_one_incident(stores):
    _one, store = stores
    results = store.ingest_batch([([_alert("r")], "alertmanager", {})] * 100)
    assert sum(r[0].new for r in results) == 1 and len({r[0].incident_id for r in results}) == 1
    inc = store.incident(results[0][0].incident_id)
    assert inc is not None and inc.deliveries == 100
    assert [e["kind"] for e in store.incident_timeline(inc.id)] == \
        ["received"] + ["duplicate"] * 99


def test_many_keys_span_several_lookups(stores):
    _one, store = stores
    items = [_alert(f"k{i:04d}") for i in range(1200)]
    first = store.ingest_batch([(items, "alertmanager", {})])[0]
    again = store.ingest_batch([(items, "alertmanager", {})])[0]
    assert all(r.new for r in first) and not any(r.new for r in again)
    assert [r.incident_id for r in first] == [r.incident_id for r in again]

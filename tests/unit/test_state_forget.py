"""`state forget HOST`: a host that left the inventory leaves the state store with its keys,
facts, drift, owed handlers and tokens; its journal stays readable; a held lease or an
inventory entry (without --force) refuses."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import insert, select

from inventory.errors import InputError
from inventory.site import Site
from inventory.state import StateStore
from inventory.state.nodes import LeaseHeld
from inventory.state.schema import leases, nodes
from orchestrate.forget import forget_host
from tests.conftest import write_site

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _populate(store: StateStore, name: str) -> str:
    store.set_node_state(name, "enrolled", "test")
    store.pin_host_key(name, KEY, "test")
    store.save_facts(name, {"os": "debian"})
    store.set_owed_handlers(name, {("base", "restart ssh")})
    store.save_drift(name, [{"role": "base", "resource": "file /etc/hosts",
                             "status": "changed", "changes": ["content"]}])
    store.issue_deploy_token(name, 600)
    uid = store.start_run("run", "p.yml")
    entry = store.journal_intent(uid, name, 0, "command")
    store.journal_outcome(entry, "ok")
    store.end_run(uid, "ok")
    return uid


def _lease(store: StateStore, name: str, expires_in: float = 60) -> None:
    now = time.time()
    with store._write() as conn:
        node_id = conn.execute(select(nodes.c.id).where(nodes.c.name == name)).scalar_one()
        conn.execute(insert(leases).values(
            node_id=node_id, holder="run-1234", owner_host="ctl1", pid=4242, pid_start="9",
            command="metalchain apply --role base", acquired_at=now, heartbeat_at=now,
            expires_at=now + expires_in))


@pytest.fixture
def store(tmp_path):
    s = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    yield s
    s.close()


def test_forget_removes_the_host_and_keeps_its_journal_readable(store):
    uid = _populate(store, "web7")
    _populate(store, "web8")
    done = store.forget_node("web7", actor="alice")
    assert done.deleted == {"host keys": 1, "fact sets": 1, "owed handlers": 1,
                            "drift rows": 1, "deploy tokens": 1}
    assert done.kept_as.startswith("web7~forgotten-") and done.journal_rows == 1
    assert done.transitions == 1
    assert store.node("web7") is None and store.host_keys_of("web7") == []
    assert "web7" not in store.all_facts() and "web7" not in store.drift_report()
    assert store.owed_handlers("web7") == set()
    assert [n.name for n in store.list_nodes()] == ["web8"]
    assert [n.name for n in store.list_nodes(forgotten=True)] == ["web7" + done.kept_as[4:],
                                                                  "web8"]
    # The journal of the old run still reads, under the kept name.
    assert [(e.host, e.status) for e in store.journal_entries(uid)] == [(done.kept_as, "ok")]
    assert len(store.transitions(done.kept_as)) == 1
    # web8 is untouched.
    assert store.host_keys_of("web8") and "web8" in store.all_facts()
    # An audit row says who and what.
    row = store.audit_log(target="web7")[0]  # newest first
    assert row["actor"] == "alice" and row["action"] == "forget_node"
    assert row["detail"]["kept_as"] == done.kept_as and row["detail"]["journal_rows"] == 1
    # The name is free: a new host web7 starts with no history.
    store.ensure_node("web7")
    assert store.node("web7").state is None and store.journal_entries(host="web7") == []


def test_forget_refuses_a_held_lease_and_changes_nothing(store):
    _populate(store, "web7")
    _lease(store, "web7")
    with pytest.raises(LeaseHeld, match=r"cannot forget 'web7': held by run run-1234 \(pid "
                                        r"4242 on ctl1, `metalchain apply --role base`\)"):
        store.forget_node("web7", actor="alice")
    assert store.host_keys_of("web7") and store.node("web7") is not None
    assert [a["action"] for a in store.audit_log(target="web7")] == ["pin_host_key"]


def test_forget_takes_an_expired_lease_with_the_node(store):
    """A lease nobody renews any more (its run died on another controller) does not keep a
    departed host in the store forever: it goes with the node."""
    _populate(store, "web7")
    _lease(store, "web7", expires_in=-1)
    store.forget_node("web7", actor="alice")
    assert store.list_leases() == [] and store.host_keys_of("web7") == []


def test_forget_an_unknown_or_forgotten_node_is_input_error(store):
    with pytest.raises(InputError, match="no node named 'ghost' in the state store"):
        store.forget_node("ghost", actor="a")
    _populate(store, "web7")
    kept = store.forget_node("web7", actor="a").kept_as
    with pytest.raises(InputError, match="already forgotten"):
        store.forget_node(kept, actor="a")
    with pytest.raises(InputError, match="no node named 'web7'"):
        store.forget_node("web7", actor="a")


INVENTORY = "hosts:\n  web1: {address: 10.0.0.1}\n"


@pytest.fixture
def site(tmp_path):
    root = write_site(tmp_path / "site", INVENTORY)
    s = Site.open(root)
    _populate(s.state, "web1")
    _populate(s.state, "web7")  # left the inventory
    yield s
    s.close()


def test_a_host_still_in_the_inventory_needs_force(site):
    with pytest.raises(InputError, match=r"'web1' is still in the inventory \(.*inventory.yml:2"
                                         r"\); remove it there first, or pass --force"):
        forget_host(site, "web1")
    assert site.state.host_keys_of("web1")
    done = forget_host(site, "web1", force=True)
    assert site.state.host_keys_of("web1") == []
    assert site.state.audit_log(target="web1")[0]["detail"]["forced"] is True
    assert done.name == "web1"


def _main(capsys, *args: str) -> tuple[int, str, str]:
    from orchestrate.cli import main

    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_state_forget_command(site, capsys):
    root = str(site.root)
    rc, out, err = _main(capsys, "--site", root, "state", "forget", "web1")
    assert rc == 2 and "'web1' is still in the inventory" in err
    rc, out, err = _main(capsys, "--site", root, "state", "forget", "web7")
    assert rc == 0, err
    assert out.startswith("forgot web7: removed 1 host key, 1 fact set, 1 owed handler, "
                          "1 drift row, 1 deploy token; 1 journal row and 1 transition kept "
                          "as web7~forgotten-")
    rc, out, err = _main(capsys, "--site", root, "state", "show", "--json")
    assert [n["host"] for n in json.loads(out)["nodes"]] == ["web1"]
    rc, out, err = _main(capsys, "--site", root, "state", "forget", "web7")
    assert rc == 2 and "no node named 'web7' in the state store" in err
    _lease(site.state, "web1")
    rc, out, err = _main(capsys, "--site", root, "state", "forget", "web1", "--force")
    assert rc == 1 and "held by run run-1234" in err

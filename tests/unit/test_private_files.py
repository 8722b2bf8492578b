"""What metalchain writes under a site that holds host output, run arguments or secrets is
0600 in 0700 directories (issue 13), also when an older version left it 0644/0755."""

from __future__ import annotations

import os
import stat

import pytest

from inventory.site import Site
from inventory.state import StateStore
from orchestrate.events import EventLog
from runtime.private import open_private, private_dir, tighten
from tests.conftest import write_site

pytestmark = pytest.mark.unit


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_new_event_log_is_0600_in_a_0700_directory(tmp_path):
    log = EventLog(tmp_path / "site" / "runs" / "r1.jsonl", "r1")
    log.emit("run_start", argv=["metalchain", "run", "-e", "x=1"])
    log.close()
    assert mode(tmp_path / "site" / "runs") == 0o700
    assert mode(tmp_path / "site" / "runs" / "r1.jsonl") == 0o600


def test_an_old_event_log_and_its_directory_are_tightened_when_opened(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o755)
    os.chmod(runs, 0o755)
    (runs / "r1.jsonl").write_text("{}\n")
    os.chmod(runs / "r1.jsonl", 0o644)
    EventLog(runs / "r1.jsonl", "r1").close()
    assert (mode(runs), mode(runs / "r1.jsonl")) == (0o700, 0o600)
    assert (runs / "r1.jsonl").read_text() == "{}\n"         # appended to, not truncated


def test_a_new_state_store_and_its_wal_files_are_0600(tmp_path):
    db = tmp_path / "state" / "metalchain.db"
    store = StateStore.open_file(db)
    store.issue_deploy_token("n1", ttl=60)                 # a write: -wal and -shm exist
    side = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
    assert all(p.exists() for p in side)
    assert {str(p): mode(p) for p in (db, *side)} == {str(p): 0o600 for p in (db, *side)}
    assert mode(db.parent) == 0o700
    store.close()


def test_an_old_state_store_is_tightened_on_the_next_open(tmp_path):
    db = tmp_path / "state" / "metalchain.db"
    StateStore.open_file(db).close()
    for p in (db.parent, *db.parent.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    journal = db.with_name(db.name + "-journal")
    journal.write_bytes(b"")
    os.chmod(journal, 0o644)
    store = StateStore.open_file(db)
    assert mode(db.parent) == 0o700
    assert {p.name: mode(p) for p in db.parent.iterdir()} == \
        {p.name: 0o600 for p in db.parent.iterdir()}
    store.close()


def test_the_sites_state_store_is_private(tmp_path):
    root = write_site(tmp_path / "site", "hosts: {h1: {address: 127.0.0.1}}\n")
    site = Site.open(root)
    site.state.issue_deploy_token("h1", ttl=60)
    assert mode(root / "state") == 0o700
    assert mode(root / "state" / "metalchain.db") == 0o600
    assert mode(root / "secrets.yml") == 0o600
    site.close()


def test_open_private_creates_and_tightens_and_a_shared_directory_is_left_alone(tmp_path):
    f = tmp_path / "server.log"
    f.write_text("old\n")
    os.chmod(f, 0o644)
    with open_private(f, "ab") as fh:
        fh.write(b"new\n")
    assert mode(f) == 0o600 and f.read_text() == "old\nnew\n"
    with open_private(tmp_path / "fresh.log", "w") as fh:
        fh.write("x")
    assert mode(tmp_path / "fresh.log") == 0o600
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    private_dir(shared)
    assert mode(shared) == 0o1777                            # like /tmp: never taken over
    link = tmp_path / "link"
    link.symlink_to(f)
    os.chmod(f, 0o644)
    tighten(link)
    assert mode(f) == 0o644                                  # a symlink's target is left

"""Processes sharing one SQLite state store: opening a fresh one at once, writing at once.

Lab tier: these start processes.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from inventory.state import SCHEMA_VERSION, NodeState, StateStore, metadata
from inventory.state.migrate import revision_of

pytestmark = pytest.mark.lab

WRITES = 200
STATES = list(NodeState)


def _writer(path: str, who: str, start: mp.Event) -> None:
    store = StateStore.open_file(Path(path))
    run = store.start_run("run", who)
    start.wait(10)
    for i in range(WRITES):
        store.set_node_state(f"{who}-n{i % 5}", STATES[i % len(STATES)], who)
        store.set_node_state("shared", STATES[(i + len(who)) % len(STATES)], f"{who}{i}")
        store.journal_outcome(store.journal_intent(run, "shared", i, f"step {i}"), "ok")
        store.record_audit(who, "write", "shared", {"i": i})
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "state.db"
    StateStore.open_file(path).close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), who, start)) for who in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    try:
        assert [p.exitcode for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    store = StateStore.open_file(path)
    assert len(store.transitions("shared")) == 2 * WRITES
    for who in ("a", "b"):
        assert sum(len(store.transitions(f"{who}-n{k}")) for k in range(5)) == WRITES
    entries = store.journal_entries(host="shared")
    assert len(entries) == 2 * WRITES and all(e.status == "ok" for e in entries)
    assert len(store.audit_log(target="shared", limit=10_000)) == 2 * WRITES
    # Each transition's from_state is the previous one's to_state: no interleaved lost update.
    ts = store.transitions("shared")
    assert all(a.to_state == b.from_state for a, b in itertools.pairwise(ts))
    store.close()


OPENERS = 4


def _opener(path: str, who: int, start: mp.Event) -> None:
    start.wait(10)
    store = StateStore.open_file(Path(path))
    store.set_node_state(f"n{who}", "enrolled", "opened a fresh store")
    store.close()


def _join_all(procs: list, timeout: float) -> list[int | None]:
    try:
        for p in procs:
            p.join(timeout)
        return [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def test_processes_opening_a_fresh_store_at_once_migrate_it_once(tmp_path):
    path = tmp_path / "fresh" / "state.db"
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_opener, args=(str(path), i, start)) for i in range(OPENERS)]
    for p in procs:
        p.start()
    start.set()
    assert _join_all(procs, 120) == [0] * OPENERS
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
            metas = conn.exec_driver_sql("SELECT value FROM meta").all()
            assert versions == [(revision_of(SCHEMA_VERSION),)]
            assert metas == [(str(SCHEMA_VERSION),)]
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            assert conn.exec_driver_sql("SELECT count(*) FROM nodes").scalar() == OPENERS
    finally:
        engine.dispose()

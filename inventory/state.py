"""The state store: node lifecycle and its history, the run journal, pinned SSH host keys and
the audit log.

SQLAlchemy Core over a SQLite file by default (WAL, so readers never block the writer and
several processes on one machine can share it) or a PostgreSQL URL when several controllers
share one store. Rows are keyed by surrogate ids: a host's name is a unique, renameable
attribute, and its history follows a rename.

Every write is one transaction. On SQLite it starts with ``BEGIN IMMEDIATE``: the write lock is
taken up front, so two writers queue on ``busy_timeout`` instead of failing when a deferred
transaction tries to upgrade its read lock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inventory.errors import InputError, StateError

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 30_000

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

nodes = Table(
    "nodes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(253), nullable=False, unique=True),
    # None for hosts outside the lifecycle (unmanaged hosts with a pinned key).
    Column("state", String(32)),
    Column("reason", Text, nullable=False, default=""),
    Column("state_since", Float),
    Column("created_at", Float, nullable=False),
)

node_transitions = Table(
    "node_transitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False, index=True),
    Column("from_state", String(32)),
    Column("to_state", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("at", Float, nullable=False),
)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(36), nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    Column("name", Text, nullable=False),
    Column("args", Text, nullable=False, default="{}"),
    Column("status", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
)

journal = Table(
    "journal", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False, index=True),
    Column("step_index", Integer, nullable=False),
    Column("step", Text, nullable=False),
    # 'intent' until the outcome is written: ok, changed, failed, unreachable, skipped.
    Column("status", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("detail", Text, nullable=False, default="{}"),
)

host_keys = Table(
    "host_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False),
    Column("key_type", String(32), nullable=False),
    Column("public_key", Text, nullable=False),
    Column("source", String(64), nullable=False),
    Column("pinned_at", Float, nullable=False),
    UniqueConstraint("node_id", "key_type"),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", Text, nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
)

# Schema 2: one-time deploy tokens for the install callbacks (only their hashes are stored).
deploy_tokens = Table(
    "deploy_tokens", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False, index=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    # active -> spent (done/failed reported) or revoked (a newer token was issued)
    Column("status", String(16), nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("ended_at", Float),
)

# Schema 3: the last facts gathered from each host.
facts = Table(
    "facts", metadata,
    Column("node_id", Integer, ForeignKey("nodes.id"), primary_key=True),
    Column("data", Text, nullable=False),
    Column("gathered_at", Float, nullable=False),
)

# Schema 4: handlers owed by changes whose handler has not run yet (a killed or failed run
# must not lose a restart), and the latest drift found per host and resource.
owed_handlers = Table(
    "owed_handlers", metadata,
    Column("node_id", Integer, ForeignKey("nodes.id"), primary_key=True),
    Column("role", String(64), primary_key=True),
    Column("handler", String(200), primary_key=True),
    Column("since", Float, nullable=False),
)

drift = Table(
    "drift", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False, index=True),
    Column("role", String(64), nullable=False),
    Column("resource", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("changes", Text, nullable=False),
    Column("checked_at", Float, nullable=False),
)

JOURNAL_OUTCOMES = ("ok", "changed", "failed", "unreachable", "skipped")


@dataclass(frozen=True)
class NodeRecord:
    id: int
    name: str
    state: str | None
    reason: str
    state_since: float | None


@dataclass(frozen=True)
class Transition:
    from_state: str | None
    to_state: str
    reason: str
    at: float


@dataclass(frozen=True)
class JournalEntry:
    id: int
    run_uid: str
    host: str
    step_index: int
    step: str
    status: str
    started_at: float
    ended_at: float | None
    detail: dict[str, Any]


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


class StateStore:
    """One handle on the state store. Safe to share between threads of one process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = self._make_engine(url)
        self._migrate()

    @classmethod
    def open_file(cls, path: Path) -> StateStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(_sqlite_url(path))

    # -- plumbing -----------------------------------------------------------------------------

    @staticmethod
    def _make_engine(url: str) -> Engine:
        try:
            if url.startswith("sqlite"):
                engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

                @event.listens_for(engine, "connect")
                def _on_connect(dbapi_conn: Any, _record: Any) -> None:
                    # Take transaction control away from pysqlite so BEGIN IMMEDIATE is ours.
                    dbapi_conn.isolation_level = None
                    cur = dbapi_conn.cursor()
                    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                    cur.execute("PRAGMA journal_mode=WAL")
                    cur.execute("PRAGMA synchronous=NORMAL")
                    cur.execute("PRAGMA foreign_keys=ON")
                    cur.close()

                @event.listens_for(engine, "begin")
                def _on_begin(conn: Connection) -> None:
                    mode = "DEFERRED" if conn.get_execution_options().get("readonly") else \
                        "IMMEDIATE"
                    conn.exec_driver_sql(f"BEGIN {mode}")

                return engine
            return create_engine(url, pool_pre_ping=True,
                                 connect_args={"connect_timeout": 10}
                                 if url.startswith("postgresql") else {})
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StateError(f"cannot open the state store {_safe_url(url)}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StateError(f"state store {_safe_url(self.url)}: {exc.__class__.__name__}: "
                             f"{exc.orig if hasattr(exc, 'orig') else exc}") from None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as raw:
                conn = raw.execution_options(readonly=True)
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise StateError(f"state store {_safe_url(self.url)}: {exc.__class__.__name__}: "
                             f"{exc.orig if hasattr(exc, 'orig') else exc}") from None

    def _migrate(self) -> None:
        with self._write() as conn:
            metadata.create_all(conn)
            row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")
                               ).first()
            if row is None:
                conn.execute(insert(meta).values(key="schema_version",
                                                 value=str(SCHEMA_VERSION)))
                return
            found = int(row[0])
        if found > SCHEMA_VERSION:
            raise StateError(f"the state store {_safe_url(self.url)} has schema version "
                             f"{found}, newer than this metalchain ({SCHEMA_VERSION}); "
                             "upgrade metalchain")
        if found < SCHEMA_VERSION:
            with self._write() as conn:
                # create_all above already added the tables new in later versions (1 -> 2:
                # deploy_tokens; 2 -> 3: facts; 3 -> 4: owed_handlers, drift); steps that
                # alter existing tables go here.
                conn.execute(update(meta).where(meta.c.key == "schema_version").values(
                    value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(meta.c.value).where(
                meta.c.key == "schema_version")).scalar_one())

    def close(self) -> None:
        self._engine.dispose()

    # -- nodes --------------------------------------------------------------------------------

    @staticmethod
    def _node_id(conn: Connection, name: str, create: bool) -> int | None:
        row = conn.execute(select(nodes.c.id).where(nodes.c.name == name)).first()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        res = conn.execute(insert(nodes).values(name=name, reason="", created_at=time.time()))
        return int(res.inserted_primary_key[0])

    def ensure_node(self, name: str) -> int:
        """The surrogate id of ``name``, creating its row on first use."""
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
        return int(node_id or 0)

    def node(self, name: str) -> NodeRecord | None:
        with self._read() as conn:
            row = conn.execute(select(nodes).where(nodes.c.name == name)).first()
        return None if row is None else NodeRecord(row.id, row.name, row.state, row.reason,
                                                   row.state_since)

    def list_nodes(self) -> list[NodeRecord]:
        with self._read() as conn:
            rows = conn.execute(select(nodes).order_by(nodes.c.name)).all()
        return [NodeRecord(r.id, r.name, r.state, r.reason, r.state_since) for r in rows]

    def rename_node(self, old: str, new: str) -> None:
        """Rename a node; its history, keys and journal follow (they point at the id)."""
        try:
            with self._write() as conn:
                res = conn.execute(update(nodes).where(nodes.c.name == old).values(name=new))
                if res.rowcount == 0:
                    raise InputError(f"no node named '{old}' in the state store")
        except IntegrityError:
            raise InputError(f"cannot rename '{old}' to '{new}': that name is taken") from None

    def set_node_state(self, name: str, to_state: str, reason: str = "",
                       expect: tuple[str | None, ...] | None = None) -> Transition:
        """Move ``name`` to ``to_state`` and record the transition, atomically.

        With ``expect``, the move happens only if the current state is one of those
        (compare-and-set); otherwise StateError names the state it found.
        """
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            current = conn.execute(select(nodes.c.state).where(nodes.c.id == node_id)
                                   ).scalar_one()
            if expect is not None and current not in expect:
                raise StateError(f"node '{name}' is {current or 'unmanaged'}, expected "
                                 f"{' or '.join(str(e) for e in expect)}")
            conn.execute(update(nodes).where(nodes.c.id == node_id).values(
                state=to_state, reason=reason, state_since=now))
            conn.execute(insert(node_transitions).values(
                node_id=node_id, from_state=current, to_state=to_state, reason=reason, at=now))
        return Transition(current, to_state, reason, now)

    def transitions(self, name: str) -> list[Transition]:
        with self._read() as conn:
            rows = conn.execute(
                select(node_transitions).join(nodes, nodes.c.id == node_transitions.c.node_id)
                .where(nodes.c.name == name).order_by(node_transitions.c.id)).all()
        return [Transition(r.from_state, r.to_state, r.reason, r.at) for r in rows]

    # -- host keys ----------------------------------------------------------------------------

    def pin_host_key(self, name: str, public_key: str, source: str) -> None:
        """Pin ``public_key`` ('TYPE BASE64') for ``name``; replaces a key of the same type."""
        parts = public_key.split()
        if len(parts) < 2:
            raise InputError(f"host '{name}': not an SSH public key line")
        key_type, key_b64 = parts[0], parts[1]
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            existing = conn.execute(select(host_keys.c.id).where(
                host_keys.c.node_id == node_id, host_keys.c.key_type == key_type)).first()
            if existing is None:
                conn.execute(insert(host_keys).values(
                    node_id=node_id, key_type=key_type, public_key=key_b64, source=source,
                    pinned_at=now))
            else:
                conn.execute(update(host_keys).where(host_keys.c.id == existing[0]).values(
                    public_key=key_b64, source=source, pinned_at=now))
            self._audit(conn, "metalchain", "pin_host_key", name,
                        {"key_type": key_type, "source": source})

    def host_keys_of(self, name: str) -> list[str]:
        """Pinned keys of ``name`` as 'TYPE BASE64' lines."""
        with self._read() as conn:
            rows = conn.execute(
                select(host_keys.c.key_type, host_keys.c.public_key)
                .join(nodes, nodes.c.id == host_keys.c.node_id)
                .where(nodes.c.name == name).order_by(host_keys.c.key_type)).all()
        return [f"{t} {k}" for t, k in rows]

    # -- runs and the journal -----------------------------------------------------------------

    def start_run(self, kind: str, name: str, args: dict[str, Any] | None = None) -> str:
        uid = uuid.uuid4().hex[:12]
        with self._write() as conn:
            conn.execute(insert(runs).values(uid=uid, kind=kind, name=name,
                                             args=json.dumps(args or {}), status="running",
                                             started_at=time.time()))
        return uid

    def end_run(self, uid: str, status: str) -> None:
        with self._write() as conn:
            conn.execute(update(runs).where(runs.c.uid == uid).values(
                status=status, ended_at=time.time()))

    def get_run(self, uid: str) -> dict[str, Any] | None:
        with self._read() as conn:
            r = conn.execute(select(runs).where(runs.c.uid == uid)).first()
        if r is None:
            return None
        return {"uid": r.uid, "kind": r.kind, "name": r.name, "status": r.status,
                "started_at": r.started_at, "ended_at": r.ended_at, "args": json.loads(r.args)}

    def reopen_run(self, uid: str) -> None:
        """Mark a run as running again (``--resume``)."""
        with self._write() as conn:
            res = conn.execute(update(runs).where(runs.c.uid == uid).values(
                status="running", ended_at=None))
            if res.rowcount == 0:
                raise InputError(f"no run '{uid}' in the state store (see: metalchain runs "
                                 "list)")

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(runs).order_by(runs.c.id.desc()).limit(limit)).all()
        return [{"uid": r.uid, "kind": r.kind, "name": r.name, "status": r.status,
                 "started_at": r.started_at, "ended_at": r.ended_at,
                 "args": json.loads(r.args)} for r in rows]

    def journal_intent(self, run_uid: str, host: str, step_index: int, step: str) -> int:
        """Record that ``step`` is about to run on ``host``; returns the entry id."""
        with self._write() as conn:
            run_id = conn.execute(select(runs.c.id).where(runs.c.uid == run_uid)).scalar()
            if run_id is None:
                raise StateError(f"no run '{run_uid}' in the state store")
            node_id = self._node_id(conn, host, create=True)
            res = conn.execute(insert(journal).values(
                run_id=run_id, node_id=node_id, step_index=step_index, step=step,
                status="intent", started_at=time.time(), detail="{}"))
            return int(res.inserted_primary_key[0])

    def journal_outcome(self, entry_id: int, status: str,
                        detail: dict[str, Any] | None = None) -> None:
        if status not in JOURNAL_OUTCOMES:
            raise ValueError(f"unknown journal outcome {status!r}")
        with self._write() as conn:
            conn.execute(update(journal).where(journal.c.id == entry_id).values(
                status=status, ended_at=time.time(), detail=json.dumps(detail or {})))

    def journal_entries(self, run_uid: str | None = None, host: str | None = None
                        ) -> list[JournalEntry]:
        q = (select(journal, runs.c.uid, nodes.c.name)
             .join(runs, runs.c.id == journal.c.run_id)
             .join(nodes, nodes.c.id == journal.c.node_id))
        if run_uid is not None:
            q = q.where(runs.c.uid == run_uid)
        if host is not None:
            q = q.where(nodes.c.name == host)
        with self._read() as conn:
            rows = conn.execute(q.order_by(journal.c.id)).all()
        return [JournalEntry(r.id, r.uid, r.name, r.step_index, r.step, r.status,
                             r.started_at, r.ended_at, json.loads(r.detail)) for r in rows]

    # -- deploy tokens ------------------------------------------------------------------------

    def issue_deploy_token(self, name: str, ttl: float) -> str:
        """A fresh one-time token for ``name``'s next deployment; earlier ones are revoked.

        Only the token's SHA-256 is stored: a copy of the database does not let anyone
        impersonate an installer.
        """
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.node_id == node_id, deploy_tokens.c.status == "active"
            ).values(status="revoked", ended_at=now))
            conn.execute(insert(deploy_tokens).values(
                node_id=node_id, token_sha256=_sha256(token), status="active", issued_at=now,
                expires_at=now + ttl))
        return token

    def check_deploy_token(self, name: str, token: str) -> bool:
        """True if ``token`` is ``name``'s active, unexpired token."""
        with self._read() as conn:
            row = conn.execute(select(deploy_tokens.c.token_sha256, deploy_tokens.c.expires_at)
                               .join(nodes, nodes.c.id == deploy_tokens.c.node_id)
                               .where(nodes.c.name == name,
                                      deploy_tokens.c.status == "active")).first()
        if row is None or row.expires_at < time.time():
            return False
        return hmac.compare_digest(row.token_sha256, _sha256(token))

    def spend_deploy_token(self, name: str, token: str) -> bool:
        """Spend ``token`` (done or failed was reported); False if it was not active."""
        with self._write() as conn:
            res = conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.token_sha256 == _sha256(token),
                deploy_tokens.c.status == "active",
                deploy_tokens.c.expires_at >= time.time(),
                deploy_tokens.c.node_id == select(nodes.c.id).where(
                    nodes.c.name == name).scalar_subquery(),
            ).values(status="spent", ended_at=time.time()))
            return res.rowcount == 1

    def revoke_deploy_tokens(self, name: str) -> None:
        with self._write() as conn:
            conn.execute(update(deploy_tokens).where(
                deploy_tokens.c.status == "active",
                deploy_tokens.c.node_id == select(nodes.c.id).where(
                    nodes.c.name == name).scalar_subquery(),
            ).values(status="revoked", ended_at=time.time()))

    # -- facts --------------------------------------------------------------------------------

    def save_facts(self, name: str, data: dict[str, Any]) -> None:
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(facts.delete().where(facts.c.node_id == node_id))
            conn.execute(insert(facts).values(node_id=node_id, data=json.dumps(data),
                                              gathered_at=now))

    def all_facts(self) -> dict[str, dict[str, Any]]:
        """host name -> its last gathered facts (with ``gathered_at``)."""
        with self._read() as conn:
            rows = conn.execute(select(nodes.c.name, facts.c.data, facts.c.gathered_at)
                                .join(facts, facts.c.node_id == nodes.c.id)).all()
        return {r.name: {**json.loads(r.data), "gathered_at": r.gathered_at} for r in rows}

    # -- owed handlers and drift ----------------------------------------------------------------

    def owed_handlers(self, name: str) -> set[tuple[str, str]]:
        with self._read() as conn:
            rows = conn.execute(select(owed_handlers.c.role, owed_handlers.c.handler)
                                .join(nodes, nodes.c.id == owed_handlers.c.node_id)
                                .where(nodes.c.name == name)).all()
        return {(r.role, r.handler) for r in rows}

    def set_owed_handlers(self, name: str, owed: set[tuple[str, str]]) -> None:
        """Replace the set of handlers ``name`` is owed (written before acting)."""
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(owed_handlers.delete().where(owed_handlers.c.node_id == node_id))
            for role, handler in sorted(owed):
                conn.execute(insert(owed_handlers).values(node_id=node_id, role=role,
                                                          handler=handler, since=now))

    def save_drift(self, name: str, rows: list[dict[str, Any]]) -> None:
        """The drift found on ``name`` by its latest check (replaces the previous one)."""
        now = time.time()
        with self._write() as conn:
            node_id = self._node_id(conn, name, create=True)
            conn.execute(drift.delete().where(drift.c.node_id == node_id))
            for r in rows:
                conn.execute(insert(drift).values(
                    node_id=node_id, role=r["role"], resource=r["resource"],
                    status=r["status"], changes=json.dumps(r.get("changes", [])),
                    checked_at=now))

    def drift_report(self) -> dict[str, list[dict[str, Any]]]:
        """host -> its drifted resources from the latest check (monitor/ exports these)."""
        with self._read() as conn:
            rows = conn.execute(select(nodes.c.name, drift).join(
                drift, drift.c.node_id == nodes.c.id).order_by(drift.c.id)).all()
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r.name, []).append({
                "role": r.role, "resource": r.resource, "status": r.status,
                "changes": json.loads(r.changes), "checked_at": r.checked_at})
        return out

    # -- audit --------------------------------------------------------------------------------

    @staticmethod
    def _audit(conn: Connection, actor: str, action: str, target: str,
               detail: dict[str, Any]) -> None:
        conn.execute(insert(audit).values(at=time.time(), actor=actor, action=action,
                                          target=target, detail=json.dumps(detail)))

    def record_audit(self, actor: str, action: str, target: str,
                     detail: dict[str, Any] | None = None) -> None:
        with self._write() as conn:
            self._audit(conn, actor, action, target, detail or {})

    def audit_log(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if target is not None:
            q = q.where(audit.c.target == target)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [{"at": r.at, "actor": r.actor, "action": r.action, "target": r.target,
                 "detail": json.loads(r.detail)} for r in rows]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "<state url>"

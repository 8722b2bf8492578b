"""The state store's tables (SQLAlchemy Core metadata)."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 6


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
    # Schema 5: who runs it, so a run whose process is gone shows as interrupted.
    Column("owner_host", String(253)),
    Column("pid", Integer),
    Column("pid_start", String(32)),
    Column("command", Text),
    Column("heartbeat_at", Float),
    # What the run planned and how it ended (hosts not run, stopped, counts): JSON.
    Column("outcome", Text),
)

journal = Table(
    "journal", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False, index=True),
    Column("node_id", Integer, ForeignKey("nodes.id"), nullable=False, index=True),
    Column("step_index", Integer, nullable=False),
    Column("step", Text, nullable=False),
    # 'intent' until the outcome is written: ok, changed, failed, unreachable, skipped;
    # 'superseded' when a resumed run ran the step again without its outcome.
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

# Schema 5: per-host leases. Every command that changes a host holds its lease while it does;
# a lease whose heartbeat stops (a killed process) expires and may be taken over.
leases = Table(
    "leases", metadata,
    Column("node_id", Integer, ForeignKey("nodes.id"), primary_key=True),
    Column("holder", String(64), nullable=False),  # a run uid or another unique owner id
    Column("owner_host", String(253), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("pid_start", String(32)),
    Column("command", Text, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Schema 6: monitoring. An incident is one alert (or pushed event) occurrence, keyed by
# (fingerprint, startsAt) so retries, resends and the second Alertmanager's copy are the same
# row; its timeline, the remediation actions taken for it and remediation's switches (kill
# switch, dry run). Pushed events' per-host tokens are derived, not stored (monitor/events.py).
incidents = Table(
    "incidents", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", String(40), nullable=False),
    Column("source", String(16), nullable=False),       # alertmanager | event
    Column("alertname", String(200), nullable=False),
    Column("target", String(253), nullable=False),       # host name ('' if none)
    Column("labels", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("alert_status", String(16), nullable=False),  # firing | resolved (latest seen)
    Column("state", String(16), nullable=False),
    Column("step", Integer, nullable=False, default=0),
    Column("rule", String(200)),
    Column("deliveries", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ended_at", Float),
    UniqueConstraint("fingerprint", "starts_at"),
)

incident_events = Table(
    "incident_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, ForeignKey("incidents.id"), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
)

remediation_actions = Table(
    "remediation_actions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", Integer, ForeignKey("incidents.id"), nullable=False, index=True),
    Column("target", String(253), nullable=False),
    Column("action", String(64), nullable=False),
    Column("step", Integer, nullable=False),
    Column("groups", Text, nullable=False, default=""),   # ",a,b,"
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    # running -> ok | failed | interrupted (its process died)
    Column("outcome", String(16), nullable=False),
    Column("run_uid", String(36)),
    Column("detail", Text, nullable=False, default="{}"),
)

remediation_settings = Table(
    "remediation_settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)

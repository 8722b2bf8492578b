-- The state store's schema as each release created it: inventory/state.py at the commit
-- named, run against an empty SQLite file, dumped from sqlite_master. Schema N is every
-- section up to and including '-- schema N' (one statement a line; tests build the stores
-- older releases left).

-- schema 1 (3af0269)
CREATE TABLE meta ("key" VARCHAR(64) NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE nodes (id INTEGER NOT NULL, name VARCHAR(253) NOT NULL, state VARCHAR(32), reason TEXT NOT NULL, state_since FLOAT, created_at FLOAT NOT NULL, PRIMARY KEY (id), UNIQUE (name));
CREATE TABLE runs (id INTEGER NOT NULL, uid VARCHAR(36) NOT NULL, kind VARCHAR(32) NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL, status VARCHAR(16) NOT NULL, started_at FLOAT NOT NULL, ended_at FLOAT, PRIMARY KEY (id), UNIQUE (uid));
CREATE TABLE audit (id INTEGER NOT NULL, at FLOAT NOT NULL, actor VARCHAR(64) NOT NULL, action VARCHAR(64) NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (id));
CREATE TABLE node_transitions (id INTEGER NOT NULL, node_id INTEGER NOT NULL, from_state VARCHAR(32), to_state VARCHAR(32) NOT NULL, reason TEXT NOT NULL, at FLOAT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(node_id) REFERENCES nodes (id));
CREATE INDEX ix_node_transitions_node_id ON node_transitions (node_id);
CREATE TABLE journal (id INTEGER NOT NULL, run_id INTEGER NOT NULL, node_id INTEGER NOT NULL, step_index INTEGER NOT NULL, step TEXT NOT NULL, status VARCHAR(16) NOT NULL, started_at FLOAT NOT NULL, ended_at FLOAT, detail TEXT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(run_id) REFERENCES runs (id), FOREIGN KEY(node_id) REFERENCES nodes (id));
CREATE INDEX ix_journal_run_id ON journal (run_id);
CREATE INDEX ix_journal_node_id ON journal (node_id);
CREATE TABLE host_keys (id INTEGER NOT NULL, node_id INTEGER NOT NULL, key_type VARCHAR(32) NOT NULL, public_key TEXT NOT NULL, source VARCHAR(64) NOT NULL, pinned_at FLOAT NOT NULL, PRIMARY KEY (id), UNIQUE (node_id, key_type), FOREIGN KEY(node_id) REFERENCES nodes (id));
-- schema 2 (839e2b6)
CREATE TABLE deploy_tokens (id INTEGER NOT NULL, node_id INTEGER NOT NULL, token_sha256 VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, issued_at FLOAT NOT NULL, expires_at FLOAT NOT NULL, ended_at FLOAT, PRIMARY KEY (id), FOREIGN KEY(node_id) REFERENCES nodes (id), UNIQUE (token_sha256));
CREATE INDEX ix_deploy_tokens_node_id ON deploy_tokens (node_id);
-- schema 3 (4738182)
CREATE TABLE facts (node_id INTEGER NOT NULL, data TEXT NOT NULL, gathered_at FLOAT NOT NULL, PRIMARY KEY (node_id), FOREIGN KEY(node_id) REFERENCES nodes (id));
-- schema 4 (aebdfbc)
CREATE TABLE owed_handlers (node_id INTEGER NOT NULL, role VARCHAR(64) NOT NULL, handler VARCHAR(200) NOT NULL, since FLOAT NOT NULL, PRIMARY KEY (node_id, role, handler), FOREIGN KEY(node_id) REFERENCES nodes (id));
CREATE TABLE drift (id INTEGER NOT NULL, node_id INTEGER NOT NULL, role VARCHAR(64) NOT NULL, resource TEXT NOT NULL, status VARCHAR(16) NOT NULL, changes TEXT NOT NULL, checked_at FLOAT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(node_id) REFERENCES nodes (id));
CREATE INDEX ix_drift_node_id ON drift (node_id);
-- schema 5 (Alembic revision 0005: the first schema no release created with create_all)
CREATE TABLE leases (node_id INTEGER NOT NULL, holder VARCHAR(64) NOT NULL, owner_host VARCHAR(253) NOT NULL, pid INTEGER NOT NULL, pid_start VARCHAR(32), command TEXT NOT NULL, acquired_at FLOAT NOT NULL, heartbeat_at FLOAT NOT NULL, expires_at FLOAT NOT NULL, PRIMARY KEY (node_id), FOREIGN KEY(node_id) REFERENCES nodes (id));
ALTER TABLE runs ADD COLUMN owner_host VARCHAR(253);
ALTER TABLE runs ADD COLUMN pid INTEGER;
ALTER TABLE runs ADD COLUMN pid_start VARCHAR(32);
ALTER TABLE runs ADD COLUMN command TEXT;
ALTER TABLE runs ADD COLUMN heartbeat_at FLOAT;
ALTER TABLE runs ADD COLUMN outcome TEXT;
-- schema 6 (Alembic revision 0006: incidents, remediation actions, remediation settings)
CREATE TABLE incidents ( id INTEGER NOT NULL, fingerprint VARCHAR(64) NOT NULL, starts_at VARCHAR(40) NOT NULL, source VARCHAR(16) NOT NULL, alertname VARCHAR(200) NOT NULL, target VARCHAR(253) NOT NULL, labels TEXT NOT NULL, annotations TEXT NOT NULL, alert_status VARCHAR(16) NOT NULL, state VARCHAR(16) NOT NULL, step INTEGER NOT NULL, rule VARCHAR(200), deliveries INTEGER NOT NULL, created_at FLOAT NOT NULL, updated_at FLOAT NOT NULL, ended_at FLOAT, PRIMARY KEY (id), UNIQUE (fingerprint, starts_at) );
CREATE TABLE incident_events ( id INTEGER NOT NULL, incident_id INTEGER NOT NULL, at FLOAT NOT NULL, kind VARCHAR(32) NOT NULL, detail TEXT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(incident_id) REFERENCES incidents (id) );
CREATE INDEX ix_incident_events_incident_id ON incident_events (incident_id);
CREATE TABLE remediation_actions ( id INTEGER NOT NULL, incident_id INTEGER NOT NULL, target VARCHAR(253) NOT NULL, action VARCHAR(64) NOT NULL, step INTEGER NOT NULL, groups TEXT NOT NULL, started_at FLOAT NOT NULL, ended_at FLOAT, outcome VARCHAR(16) NOT NULL, run_uid VARCHAR(36), detail TEXT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(incident_id) REFERENCES incidents (id) );
CREATE INDEX ix_remediation_actions_incident_id ON remediation_actions (incident_id);
CREATE TABLE remediation_settings ( name VARCHAR(64) NOT NULL, value TEXT NOT NULL, actor VARCHAR(64) NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (name) );

-- The state store's schema 1 as commit 3af0269 created it (inventory/state.py at that
-- commit, run against an empty SQLite file, dumped from sqlite_master).

CREATE TABLE meta (
	"key" VARCHAR(64) NOT NULL,
	value TEXT NOT NULL,
	PRIMARY KEY ("key")
);

CREATE TABLE nodes (
	id INTEGER NOT NULL,
	name VARCHAR(253) NOT NULL,
	state VARCHAR(32),
	reason TEXT NOT NULL,
	state_since FLOAT,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (name)
);

CREATE TABLE runs (
	id INTEGER NOT NULL,
	uid VARCHAR(36) NOT NULL,
	kind VARCHAR(32) NOT NULL,
	name TEXT NOT NULL,
	args TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	started_at FLOAT NOT NULL,
	ended_at FLOAT,
	PRIMARY KEY (id),
	UNIQUE (uid)
);

CREATE TABLE audit (
	id INTEGER NOT NULL,
	at FLOAT NOT NULL,
	actor VARCHAR(64) NOT NULL,
	action VARCHAR(64) NOT NULL,
	target TEXT NOT NULL,
	detail TEXT NOT NULL,
	PRIMARY KEY (id)
);

CREATE TABLE node_transitions (
	id INTEGER NOT NULL,
	node_id INTEGER NOT NULL,
	from_state VARCHAR(32),
	to_state VARCHAR(32) NOT NULL,
	reason TEXT NOT NULL,
	at FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(node_id) REFERENCES nodes (id)
);

CREATE INDEX ix_node_transitions_node_id ON node_transitions (node_id);

CREATE TABLE journal (
	id INTEGER NOT NULL,
	run_id INTEGER NOT NULL,
	node_id INTEGER NOT NULL,
	step_index INTEGER NOT NULL,
	step TEXT NOT NULL,
	status VARCHAR(16) NOT NULL,
	started_at FLOAT NOT NULL,
	ended_at FLOAT,
	detail TEXT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(run_id) REFERENCES runs (id),
	FOREIGN KEY(node_id) REFERENCES nodes (id)
);

CREATE INDEX ix_journal_run_id ON journal (run_id);

CREATE INDEX ix_journal_node_id ON journal (node_id);

CREATE TABLE host_keys (
	id INTEGER NOT NULL,
	node_id INTEGER NOT NULL,
	key_type VARCHAR(32) NOT NULL,
	public_key TEXT NOT NULL,
	source VARCHAR(64) NOT NULL,
	pinned_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (node_id, key_type),
	FOREIGN KEY(node_id) REFERENCES nodes (id)
);

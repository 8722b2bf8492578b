"""Alembic migrations of the state store's schema.

Revision ``NNNN`` is schema version NN (``SCHEMA_VERSION`` names the newest); the first one is
the first schema, the next ones are the steps older metalchains took with ``create_all``.
To change the schema: change ``inventory/state/schema.py``, add ``versions/NNNN_what.py``
(down_revision the previous one, ``op.batch_alter_table`` for altered SQLite tables), bump
``SCHEMA_VERSION``; ``tests/unit/test_state_migrations.py`` checks that a fresh store at head
equals the metadata. There is no alembic.ini: ``inventory.state.migrate`` runs them.
"""

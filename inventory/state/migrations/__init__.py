"""Alembic migrations of the state store's schema.

Revision ``NNNN`` is schema version NN (``SCHEMA_VERSION`` names the newest); the first one is
the first schema, the next ones are the steps older metalchains took with ``create_all``.
To change the schema: change ``inventory/state/schema.py``, add ``versions/NNNN_what.py``
(down_revision the previous one, ``op.batch_alter_table`` for altered SQLite tables), bump
``SCHEMA_VERSION``; ``tests/unit/test_state_migrations.py`` checks that a fresh store at head
equals the metadata. There is no alembic.ini: ``inventory.state.migrate`` runs them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_missing_table(name: str, *columns: sa.Column, index: tuple[str, ...] = ()) -> None:
    """``op.create_table`` (and an index on each of ``index``) unless the table exists.

    For revisions 0002-0004 only: metalchains before Alembic created every table first and
    bumped ``meta`` in a second transaction, so a store they left at version N-1 may already
    hold version N's tables.
    """
    if sa.inspect(op.get_bind()).has_table(name):
        return
    op.create_table(name, *columns)
    for column in index:
        op.create_index(f"ix_{name}_{column}", name, [column])

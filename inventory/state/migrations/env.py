"""Alembic's environment: run on the connection the state store hands over, inside its write
transaction (``inventory.state.migrate``). There is no URL and no offline mode here."""

from alembic import context

from inventory.errors import StateError
from inventory.state.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise StateError("state store migrations run when a store is opened "
                     "(inventory.state.StateStore), not from the alembic command line")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

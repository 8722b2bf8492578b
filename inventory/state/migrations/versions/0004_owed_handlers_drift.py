"""Schema 4: handlers owed by changes whose handler has not run yet, and the latest drift.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # See 0002: a store left at schema 3 by an older metalchain may already have them.
    existing = sa.inspect(op.get_bind())
    if not existing.has_table("owed_handlers"):
        op.create_table(
            "owed_handlers",
            sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), primary_key=True),
            sa.Column("role", sa.String(64), primary_key=True),
            sa.Column("handler", sa.String(200), primary_key=True),
            sa.Column("since", sa.Float, nullable=False),
        )
    if not existing.has_table("drift"):
        op.create_table(
            "drift",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), nullable=False),
            sa.Column("role", sa.String(64), nullable=False),
            sa.Column("resource", sa.Text, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("changes", sa.Text, nullable=False),
            sa.Column("checked_at", sa.Float, nullable=False),
        )
        op.create_index("ix_drift_node_id", "drift", ["node_id"])


def downgrade() -> None:
    op.drop_table("drift")
    op.drop_table("owed_handlers")

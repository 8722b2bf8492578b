"""Schema 4: handlers owed by changes whose handler has not run yet, and the latest drift."""

import sqlalchemy as sa
from alembic import op

from inventory.state.migrations import create_missing_table

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    create_missing_table(
        "owed_handlers",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("role", sa.String(64), primary_key=True),
        sa.Column("handler", sa.String(200), primary_key=True),
        sa.Column("since", sa.Float, nullable=False),
    )
    create_missing_table(
        "drift",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changes", sa.Text, nullable=False),
        sa.Column("checked_at", sa.Float, nullable=False),
        index=("node_id",),
    )


def downgrade() -> None:
    op.drop_table("drift")
    op.drop_table("owed_handlers")

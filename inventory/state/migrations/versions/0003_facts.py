"""Schema 3: the last facts gathered from each host."""

import sqlalchemy as sa
from alembic import op

from inventory.state.migrations import create_missing_table

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    create_missing_table(
        "facts",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("gathered_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("facts")

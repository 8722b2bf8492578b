"""Schema 3: the last facts gathered from each host.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # See 0002: a store left at schema 2 by an older metalchain may already have it.
    if sa.inspect(op.get_bind()).has_table("facts"):
        return
    op.create_table(
        "facts",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("gathered_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("facts")

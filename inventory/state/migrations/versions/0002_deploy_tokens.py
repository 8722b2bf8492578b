"""Schema 2: one-time deploy tokens for the install callbacks (only their hashes are stored)."""

import sqlalchemy as sa
from alembic import op

from inventory.state.migrations import create_missing_table

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    create_missing_table(
        "deploy_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        index=("node_id",),
    )


def downgrade() -> None:
    op.drop_table("deploy_tokens")

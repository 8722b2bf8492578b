"""Schema 2: one-time deploy tokens for the install callbacks (only their hashes are stored).

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Metalchains before Alembic created every table first and bumped the version in a second
    # transaction: a store they left at an older version may already have this table.
    if sa.inspect(op.get_bind()).has_table("deploy_tokens"):
        return
    op.create_table(
        "deploy_tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issued_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
    )
    op.create_index("ix_deploy_tokens_node_id", "deploy_tokens", ["node_id"])


def downgrade() -> None:
    op.drop_table("deploy_tokens")

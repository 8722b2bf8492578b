"""Schema 5: per-host leases, and the process that owns each run and its outcome."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

RUN_COLUMNS = (
    ("owner_host", sa.String(253)),
    ("pid", sa.Integer),
    ("pid_start", sa.String(32)),
    ("command", sa.Text),
    ("heartbeat_at", sa.Float),
    ("outcome", sa.Text),
)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("owner_host", sa.String(253), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("pid_start", sa.String(32)),
        sa.Column("command", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("runs") as batch:
        for name, kind in RUN_COLUMNS:
            batch.add_column(sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name, _ in reversed(RUN_COLUMNS):
            batch.drop_column(name)
    op.drop_table("leases")

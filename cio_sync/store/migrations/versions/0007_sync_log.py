"""Sync log: one row per person per run whenever something other than "unchanged" was decided
(`cio-sync explain`), and per-attribute digests of what Customer.io last accepted (the dry
run's old → new).

Revision ID: 0007
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sync_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("logged_at", TZ, nullable=False),
        sa.Column("hull_id", sa.String(64), nullable=False),
        sa.Column("cio_id", sa.String(255)),
        sa.Column("email_hash", sa.String(64)),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("changed", sa.JSON),
        sa.Column("attribute_values", sa.JSON),
        sa.Column("calls", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("writeback", sa.String(16)),
        sa.Column("writeback_at", TZ),
        sa.Column("writeback_error", sa.Text),
    )
    op.create_index("ix_sync_log_hull_id", "sync_log", ["hull_id"])
    op.create_index("ix_sync_log_logged_at", "sync_log", ["logged_at"])
    with op.batch_alter_table("user_state") as batch:
        batch.add_column(sa.Column("attribute_digests", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("user_state") as batch:
        batch.drop_column("attribute_digests")
    op.drop_table("sync_log")

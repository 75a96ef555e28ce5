"""Initial schema: user state, cursors, event state, webhook inbox, failed batches, leases.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "user_state",
        sa.Column("hull_id", sa.String(64), primary_key=True),
        sa.Column("cio_id", sa.String(255)),
        sa.Column("attributes_hash", sa.String(64)),
        sa.Column("segment_ids", sa.JSON),
        sa.Column("created_at", TZ),
        sa.Column("synced_at", TZ),
        sa.Column("deleted_at", TZ),
        sa.Column("last_decision", sa.String(16)),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", TZ),
        sa.Column("writeback_pending", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_user_state_writeback_pending", "user_state", ["writeback_pending"])
    op.create_table(
        "sync_cursor",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.String(64)),
        sa.Column("seen_ids", sa.JSON),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "event_state",
        sa.Column("hull_event_id", sa.String(128), primary_key=True),
        sa.Column("cio_event_id", sa.String(26), nullable=False),
        sa.Column("hull_user_id", sa.String(64)),
        sa.Column("event_name", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "webhook_inbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("claimed_at", TZ),
        sa.Column("processed_at", TZ),
    )
    op.create_index("ix_webhook_inbox_status", "webhook_inbox", ["status"])
    op.create_table(
        "failed_batches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_failed_batches_status", "failed_batches", ["status"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "failed_batches", "webhook_inbox", "event_state", "sync_cursor", "user_state"):
        op.drop_table(table)

"""Watermarks and leases: `sync_meta` (per-installation values such as `events_start`), the
lease holder's identity (host, pid, process start, flow run) for instant take-over after a
crash, `failed_batches.transient` for the automatic retry of transient failures, and
`user_state.rejected_hash` (a user Customer.io rejected is not tried again unchanged, however
often the users overlap re-reads it).

Revision ID: 0003
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sync_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.add_column(sa.Column("pid", sa.Integer))
        batch.add_column(sa.Column("process_start", sa.String(32)))
        batch.add_column(sa.Column("flow_run_id", sa.String(64)))
        batch.add_column(sa.Column("acquired_at", TZ))
        batch.add_column(sa.Column("renewed_at", TZ))
    with op.batch_alter_table("failed_batches") as batch:
        # Every batch recorded so far was recorded for a transient failure.
        batch.add_column(sa.Column("transient", sa.Boolean, nullable=False, server_default=sa.true()))
    with op.batch_alter_table("user_state") as batch:
        batch.add_column(sa.Column("rejected_hash", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("user_state") as batch:
        batch.drop_column("rejected_hash")
    with op.batch_alter_table("failed_batches") as batch:
        batch.drop_column("transient")
    with op.batch_alter_table("leases") as batch:
        for column in ("renewed_at", "acquired_at", "flow_run_id", "process_start", "pid", "host"):
            batch.drop_column(column)
    op.drop_table("sync_meta")

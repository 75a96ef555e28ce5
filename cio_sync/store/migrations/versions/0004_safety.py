"""Safety: planned deletions and deletion plans (the deletion guard), settings in use (one
identity setting for sync and drain), an index on user_state.cio_id (`duplicate_id`).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_user_state_cio_id", "user_state", ["cio_id"])
    op.create_table(
        "planned_deletions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hull_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("cio_id", sa.String(255), nullable=False),
        sa.Column("email", sa.String(255)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("plan_id", sa.Integer),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("planned_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_planned_deletions_hull_id", "planned_deletions", ["hull_id"])
    op.create_index("ix_planned_deletions_status", "planned_deletions", ["status"])
    op.create_index("ix_planned_deletions_plan_id", "planned_deletions", ["plan_id"])
    op.create_table(
        "deletion_plans",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("decided_at", TZ),
        sa.Column("decided_by", sa.String(255)),
    )
    op.create_index("ix_deletion_plans_status", "deletion_plans", ["status"])
    op.create_table(
        "settings_in_use",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON),
        sa.Column("flow_run_id", sa.String(64)),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("settings_in_use", "deletion_plans", "planned_deletions"):
        op.drop_table(table)
    op.drop_index("ix_user_state_cio_id", table_name="user_state")

"""Resync requests: people `cio-sync resync` asked to be sent again by the next sync run.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resync_requests",
        sa.Column("hull_id", sa.String(64), primary_key=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(255)),
    )


def downgrade() -> None:
    op.drop_table("resync_requests")

"""Webhook retries with backoff: `webhook_inbox.next_attempt_at` and `first_failed_at`.

A row that failed transiently waits until `next_attempt_at` before a drain claims it again;
it is given up once it has been failing (since `first_failed_at`) for WEBHOOK_RETRY_HOURS.
Existing rows get NULL in both: due at once, and their retry window starts at their next
failure.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("webhook_inbox", sa.Column("next_attempt_at", TZ, nullable=True))
    op.add_column("webhook_inbox", sa.Column("first_failed_at", TZ, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_inbox") as batch:
        batch.drop_column("first_failed_at")
        batch.drop_column("next_attempt_at")

"""Source digest: the digest of the Hull fields and mapping settings that gave a user's
`attributes_hash`, sealed with it; equal again on a later run means unchanged without mapping.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"  # the head on this branch; rechained on merge if another revision lands first
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows keep NULL: their next run maps them as before and writes the digest.
    with op.batch_alter_table("user_state") as batch:
        batch.add_column(sa.Column("source_digest", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("user_state") as batch:
        batch.drop_column("source_digest")

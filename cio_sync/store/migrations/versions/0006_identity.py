"""Identity as Customer.io holds it: per user, the mapping its Customer.io id was sent under,
the names of the attributes Customer.io last accepted and when it was suppressed; per users
stream, the `user_id_mapping` in force at its last run (a change of it is a migration).

Revision ID: 0006
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("user_state") as batch:
        batch.add_column(sa.Column("cio_id_mapping", sa.String(255)))
        batch.add_column(sa.Column("attribute_names", sa.JSON))
        batch.add_column(sa.Column("suppressed_at", TZ))
    op.create_table(
        "stream_identity",
        sa.Column("stream", sa.String(64), primary_key=True),
        sa.Column("user_id_mapping", sa.String(255), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("stream_identity")
    with op.batch_alter_table("user_state") as batch:
        batch.drop_column("suppressed_at")
        batch.drop_column("attribute_names")
        batch.drop_column("cio_id_mapping")

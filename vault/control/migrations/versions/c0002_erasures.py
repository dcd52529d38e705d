"""The erasure ledger.

Revision ID: c0002
Revises: c0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "c0002"
down_revision = "c0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("subject_id", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(8), nullable=False),
        sa.Column("key_mount", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.BigInteger(), nullable=False),
        sa.Column("destroy_after", sa.BigInteger(), nullable=False),
        sa.Column("destroyed_at", sa.BigInteger(), nullable=True),
        sa.Column("claimed_at", sa.BigInteger(), nullable=True),
        sa.Column("receipt", sa.String(8192), nullable=True),
    )
    op.create_index("ix_erasures_destroyed_at", "erasures", ["destroyed_at"])


def downgrade() -> None:
    op.drop_index("ix_erasures_destroyed_at", table_name="erasures")
    op.drop_table("erasures")

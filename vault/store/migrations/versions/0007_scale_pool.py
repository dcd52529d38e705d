"""The subject-key pool of a cell (``subject_pool``, ``subject_pool_fills``).

``subject_pool`` holds subject ids minted ahead of sign-up with their Transit
key's location and their data key wrapped under it; no personal data.
``subject_pool_fills`` logs each batch the filler added (time, size, duration).

Revision ID: 0007_scale_pool
Revises: 0006_rotation
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_scale_pool"
down_revision = "0006_rotation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_pool",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key_mount", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("wrapped_dek", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subject_pool"),
    )
    op.create_table(
        "subject_pool_fills",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("entries", sa.Integer, nullable=False),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subject_pool_fills"),
    )
    op.create_index("ix_subject_pool_fills_at_us", "subject_pool_fills", ["at_us"])


def downgrade() -> None:
    op.drop_index("ix_subject_pool_fills_at_us", table_name="subject_pool_fills")
    op.drop_table("subject_pool_fills")
    op.drop_table("subject_pool")

"""Blind-index lookups, wrapped cell keys, record retention.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lookups",
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("kind", "digest", "subject_id", name="pk_lookups"),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_lookups_subject_id_subjects"
        ),
    )
    op.create_index("ix_lookups_subject_id", "lookups", ["subject_id"])
    op.create_table(
        "cell_keys",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("key_mount", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_cell_keys"),
    )
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("expires_at", sa.BigInteger(), nullable=True))
        batch.create_index("ix_records_expires_at", ["expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_index("ix_records_expires_at")
        batch.drop_column("expires_at")
    op.drop_table("cell_keys")
    op.drop_index("ix_lookups_subject_id", table_name="lookups")
    op.drop_table("lookups")

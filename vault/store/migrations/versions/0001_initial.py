"""Initial cell schema: subjects and records.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("region", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("minor", sa.Boolean(), nullable=False),
        sa.Column("key_mount", sa.String(128), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("wrapped_dek", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subjects"),
        sa.UniqueConstraint("idempotency_key", name="uq_subjects_idempotency_key"),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("idempotency_key", sa.String(128), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_records"),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_records_subject_id_subjects"
        ),
        sa.UniqueConstraint("subject_id", "idempotency_key", name="uq_records_subject_idempotency"),
    )
    op.create_index("ix_records_subject_id_id", "records", ["subject_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_records_subject_id_id", table_name="records")
    op.drop_table("records")
    op.drop_table("subjects")

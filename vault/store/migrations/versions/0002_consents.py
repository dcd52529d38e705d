"""Consent records per subject and purpose.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consents",
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", "purpose", name="pk_consents"),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_consents_subject_id_subjects"
        ),
    )


def downgrade() -> None:
    op.drop_table("consents")

"""The cross-border transfer log of a cell (``transfers``).

One row per transfer decision about this region's data: when, from and to
which region, direction, operation, basis, purpose, calling service, token id,
subject and record ids, categories, allowed or not and the rule. No personal
data, no token.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer, nullable=False, autoincrement=True),
        sa.Column("at_us", sa.BigInteger, nullable=False),
        sa.Column("from_region", sa.String(8), nullable=False),
        sa.Column("to_region", sa.String(8), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("basis", sa.String(32), nullable=True),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("service", sa.String(128), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(64), nullable=True),
        sa.Column("categories", sa.String(1024), nullable=False),
        sa.Column("allowed", sa.Boolean, nullable=False),
        sa.Column("rule", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_transfers"),
    )
    op.create_index("ix_transfers_subject_id_id", "transfers", ["subject_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_transfers_subject_id_id", table_name="transfers")
    op.drop_table("transfers")

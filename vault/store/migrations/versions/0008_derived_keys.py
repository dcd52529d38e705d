"""Derived subject keys: whether a subject's Transit key uses key derivation.

``subjects.key_derived`` and ``subject_pool.key_derived``: true for a subject
key created with ``derived=true``, whose wrapped data key is bound to the
subject by the derivation context (so key rotation re-wraps it inside OpenBao
with Transit ``rewrap``). Existing rows: false, legacy keys whose wrap is bound
by associated data (re-wrapped by decrypt and encrypt).

Revision ID: 0008_derived_keys
Revises: 0007_scale_pool
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_derived_keys"
down_revision = "0007_scale_pool"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (a constant default fills the existing rows), not a batch
    # operation: on SQLite a batch would copy and drop ``subjects``, which the
    # foreign keys of ``records`` refuse once the cell holds data.
    for table in ("subjects", "subject_pool"):
        op.add_column(
            table, sa.Column("key_derived", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    # DROP COLUMN (SQLite >= 3.35, as the subject-key pool's claim already needs).
    for table in ("subject_pool", "subjects"):
        op.drop_column(table, "key_derived")

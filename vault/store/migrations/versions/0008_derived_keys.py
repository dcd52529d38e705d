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
    with op.batch_alter_table("subjects") as batch:
        batch.add_column(
            sa.Column("key_derived", sa.Boolean, nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("subject_pool") as batch:
        batch.add_column(
            sa.Column("key_derived", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("subject_pool") as batch:
        batch.drop_column("key_derived")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("key_derived")

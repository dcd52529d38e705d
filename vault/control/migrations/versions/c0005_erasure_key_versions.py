"""The erasure ledger notes the key versions an erasure is about to destroy.

A retried erasure whose first attempt destroyed the key (and died before its
receipt) finds no key left to list: the receipt now names the versions noted
before the destroy. Existing rows: NULL (nothing noted).

Revision ID: c0005
Revises: c0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "c0005"
down_revision = "c0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("erasures", sa.Column("key_versions", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("erasures") as batch:
        batch.drop_column("key_versions")

"""Blind-index key versions and sealed lookup values.

``lookups.key_version`` (existing rows: 1), ``index_keys`` (one row per index
key version; version 1, the existing cell key "lookup-index", is active) and
``lookup_values`` (each lookup value sealed under the subject's data key).

Revision ID: 0009_index_versions
Revises: 0008_derived_keys
Create Date: 2026-11-29
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0009_index_versions"
down_revision = "0008_derived_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lookups") as batch:
        batch.add_column(sa.Column("key_version", sa.Integer(), nullable=False, server_default="1"))
        batch.create_index("ix_lookups_key_version_subject_id", ["key_version", "subject_id"])
    op.create_table(
        "lookup_values",
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("value_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", "value_id", name="pk_lookup_values"),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name="fk_lookup_values_subject_id_subjects"
        ),
    )
    index_keys = op.create_table(
        "index_keys",
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("retired_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("version", name="pk_index_keys"),
    )
    # Version 1: the key every existing digest was made with (or will be, on
    # first use). Its age counts from this upgrade.
    op.bulk_insert(
        index_keys, [{"version": 1, "state": "active", "created_at": time.time_ns() // 1000}]
    )


def downgrade() -> None:
    op.drop_table("index_keys")
    op.drop_table("lookup_values")
    with op.batch_alter_table("lookups") as batch:
        batch.drop_index("ix_lookups_key_version_subject_id")
        batch.drop_column("key_version")

"""Revocations in the order the database assigns them: ``revoked_tokens.seq``.

Nodes poll for revocations by ``seq`` (autoincrement, assigned by the
database) rather than by ``revoked_at`` (the revoking node's wall clock, taken
before commit). ``jti`` stays unique; ``revoked_at`` stays for the record and
loses its index. The table is rebuilt (SQLite cannot add an autoincrement
column); existing rows are numbered in ``revoked_at`` order.

Revision ID: c0004
Revises: c0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "c0004"
down_revision = "c0003"
branch_labels = None
depends_on = None

# INTEGER on SQLite, so that the column is the rowid (AUTOINCREMENT: never reused).
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "revoked_tokens_c0004",
        sa.Column("seq", _SEQ, nullable=False, autoincrement=True),
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_revoked_tokens"),
        sa.UniqueConstraint("jti", name="uq_revoked_tokens_jti"),
        sqlite_autoincrement=True,
    )
    op.execute(
        "INSERT INTO revoked_tokens_c0004 (jti, expires_at, revoked_at) "
        "SELECT jti, expires_at, revoked_at FROM revoked_tokens ORDER BY revoked_at, jti"
    )
    op.drop_index("ix_revoked_tokens_revoked_at", table_name="revoked_tokens")
    op.drop_table("revoked_tokens")
    op.rename_table("revoked_tokens_c0004", "revoked_tokens")


def downgrade() -> None:
    op.create_table(
        "revoked_tokens_c0003",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO revoked_tokens_c0003 (jti, expires_at, revoked_at) "
        "SELECT jti, expires_at, revoked_at FROM revoked_tokens"
    )
    op.drop_table("revoked_tokens")
    op.rename_table("revoked_tokens_c0003", "revoked_tokens")
    op.create_index("ix_revoked_tokens_revoked_at", "revoked_tokens", ["revoked_at"])

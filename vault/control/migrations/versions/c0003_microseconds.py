"""Token expiry in microseconds, like every other timestamp column.

``revoked_tokens.expires_at`` and ``token_events.expires_at`` held seconds;
they now hold microseconds since the epoch.

Revision ID: c0003
Revises: c0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "c0003"
down_revision = "c0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("revoked_tokens", "token_events"):
        op.execute(f"UPDATE {table} SET expires_at = expires_at * 1000000")  # noqa: S608


def downgrade() -> None:
    for table in ("revoked_tokens", "token_events"):
        op.execute(f"UPDATE {table} SET expires_at = expires_at / 1000000")  # noqa: S608

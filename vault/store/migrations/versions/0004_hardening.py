"""Idempotency digests and the state a subject had before an erasure request.

``records.request_digest`` / ``subjects.request_digest``: a keyed digest of the
request an idempotency key was first used for, so that a replay with other
content is refused. ``subjects.prior_state``: the state to restore when an
erasure is cancelled.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subjects") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("prior_state", sa.String(16), nullable=True))
    with op.batch_alter_table("records") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("records") as batch:
        batch.drop_column("request_digest")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("prior_state")
        batch.drop_column("request_digest")

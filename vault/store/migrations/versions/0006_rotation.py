"""Subject key rotation: the wrap's key version, rotation claims, the job cursor.

``subjects.key_version``: the Transit key version that wrapped the subject's
data key (existing rows: 1, no key was ever rotated before this revision).
``subjects.key_rotated_at`` (µs): when the subject's key was last rotated.
``subjects.rotation_claim`` / ``rotation_claimed_until`` (µs): a rotation
job's claim on the subject, so two jobs never process it at once.
``key_jobs``: one row per rotation job, with its cursor (the last subject id
done) and its counts, so a job that stopped resumes where it was.

Revision ID: 0006_rotation
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_rotation"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subjects") as batch:
        batch.add_column(sa.Column("key_version", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("key_rotated_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("rotation_claim", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rotation_claimed_until", sa.BigInteger, nullable=True))
    op.create_table(
        "key_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("cutoff_us", sa.BigInteger, nullable=False),
        sa.Column("cursor", sa.String(64), nullable=False, server_default=""),
        sa.Column("rotated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("key_jobs")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("rotation_claimed_until")
        batch.drop_column("rotation_claim")
        batch.drop_column("key_rotated_at")
        batch.drop_column("key_version")

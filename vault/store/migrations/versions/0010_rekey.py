"""Data-key generations, for rekeying a subject (``pdvault keys rekey``).

``subjects.dek_generation``: the generation of the data key in ``wrapped_dek``
(existing rows: 1). ``subjects.wrapped_dek_next``: while a rekey runs, the
next generation's data key, wrapped like ``wrapped_dek``. ``records.dek_generation``:
the generation a record's envelope is sealed under (existing rows: 1, the only
data key their subject ever had). ``subjects.pseudonym_seal``: the subject's
audit pseudonym key carried over a rekey, sealed under the current data key
(NULL: derived from the data key, as before).

Revision ID: 0010_rekey
Revises: 0009_index_versions
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_rekey"
down_revision = "0009_index_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subjects") as batch:
        batch.add_column(
            sa.Column("dek_generation", sa.Integer, nullable=False, server_default="1")
        )
        batch.add_column(sa.Column("wrapped_dek_next", sa.Text, nullable=True))
        batch.add_column(sa.Column("pseudonym_seal", sa.LargeBinary, nullable=True))
    with op.batch_alter_table("records") as batch:
        batch.add_column(
            sa.Column("dek_generation", sa.Integer, nullable=False, server_default="1")
        )
    # A sealed lookup value names the generation of the data key it is sealed
    # under, like a record (a rekey seals it again under the next one).
    op.add_column(
        "lookup_values",
        sa.Column("dek_generation", sa.Integer, nullable=False, server_default="1"),
    )


def downgrade() -> None:
    with op.batch_alter_table("lookup_values") as batch:
        batch.drop_column("dek_generation")
    with op.batch_alter_table("records") as batch:
        batch.drop_column("dek_generation")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("pseudonym_seal")
        batch.drop_column("wrapped_dek_next")
        batch.drop_column("dek_generation")

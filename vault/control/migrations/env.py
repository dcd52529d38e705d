"""Alembic environment of the control-plane database."""

from __future__ import annotations

from alembic import context

from vault.control._models import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    version_table="alembic_version_control",
)
with context.begin_transaction():
    context.run_migrations()

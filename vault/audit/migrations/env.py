"""Alembic environment of an audit database (its own version table, so an
audit log may share a PostgreSQL database with a cell)."""

from __future__ import annotations

from alembic import context

from vault.audit._models import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    version_table="alembic_version_audit",
)
with context.begin_transaction():
    context.run_migrations()

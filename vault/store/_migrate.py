from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from vault import db

_MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(engine: Engine) -> str:
    """Brings a cell database to the newest schema (idempotent); returns its revision."""
    return db.migrate(engine, _MIGRATIONS)

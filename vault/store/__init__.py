"""Cell storage: SQLAlchemy schema (no plaintext columns), migrations, repository."""

from vault.store._cellstore import CellStore, DuplicateKey, RecordRow, SubjectRow
from vault.store._engine import make_engine, migrate
from vault.store._models import consents, metadata, records, subjects

__all__ = [
    "CellStore",
    "DuplicateKey",
    "RecordRow",
    "SubjectRow",
    "consents",
    "make_engine",
    "metadata",
    "migrate",
    "records",
    "subjects",
]

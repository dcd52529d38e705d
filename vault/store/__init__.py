"""Cell storage: SQLAlchemy schema (no plaintext columns), migrations, repository."""

from vault.db import DuplicateKey, make_engine
from vault.store._cellstore import (
    GONE_STATES,
    LIVE_STATES,
    CellStore,
    RecordRow,
    SubjectRow,
    SubjectState,
)
from vault.store._migrate import migrate
from vault.store._models import consents, metadata, records, subjects
from vault.store._pool import PoolEntry, PoolStatus, PoolStore
from vault.store._rekey import RekeyStore, SwitchExtras
from vault.store._rotation import Coverage, RotationStore
from vault.store._transfers import CellTransferLog, TransferEntry

__all__ = [
    "GONE_STATES",
    "LIVE_STATES",
    "CellStore",
    "CellTransferLog",
    "Coverage",
    "DuplicateKey",
    "PoolEntry",
    "PoolStatus",
    "PoolStore",
    "RecordRow",
    "RekeyStore",
    "RotationStore",
    "SubjectRow",
    "SubjectState",
    "SwitchExtras",
    "TransferEntry",
    "consents",
    "make_engine",
    "metadata",
    "migrate",
    "records",
    "subjects",
]

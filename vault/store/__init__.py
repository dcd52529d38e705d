"""Cell storage: SQLAlchemy schema (no plaintext columns), migrations, repository."""

from vault.db import DuplicateKey, make_engine
from vault.store._cellstore import (
    GONE_STATES,
    LIVE_STATES,
    CellStore,
    DataKeyChanged,
    IndexVersion,
    IndexVersionsChanged,
    LookupWrite,
    RecordRow,
    SealedLookup,
    SubjectRow,
    SubjectState,
)
from vault.store._index import IndexStore, LiveSubject, Retirement
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
    "DataKeyChanged",
    "DuplicateKey",
    "IndexStore",
    "IndexVersion",
    "IndexVersionsChanged",
    "LiveSubject",
    "LookupWrite",
    "PoolEntry",
    "PoolStatus",
    "PoolStore",
    "RecordRow",
    "RekeyStore",
    "Retirement",
    "RotationStore",
    "SealedLookup",
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

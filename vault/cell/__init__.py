"""Cells: one region's data plane — its store, its key service, its operations.

A cell is built by the composition root (:mod:`vault.server`) with every
collaborator passed in; nothing outside this package reaches into it.
"""

from vault.cell._cell import Cell
from vault.cell._lookup import KINDS, BlindIndex, normalise
from vault.cell._pool import KeyPool, key_name_for, mint_subject_key, mount_for
from vault.cell._views import (
    ConsentView,
    ErasureTarget,
    RecordPage,
    RecordView,
    ShredResult,
    SubjectView,
)

__all__ = [
    "KINDS",
    "BlindIndex",
    "Cell",
    "ConsentView",
    "ErasureTarget",
    "KeyPool",
    "RecordPage",
    "RecordView",
    "ShredResult",
    "SubjectView",
    "key_name_for",
    "mint_subject_key",
    "mount_for",
    "normalise",
]

"""What the cell's operations return: views of rows, never rows themselves."""

from __future__ import annotations

from dataclasses import dataclass

from vault.keys import KeyRef
from vault.store import SubjectRow, SubjectState


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject_id: str
    region: str
    state: SubjectState
    minor: bool
    created_at_us: int

    @classmethod
    def of(cls, row: SubjectRow) -> SubjectView:
        return cls(row.id, row.region, row.state, row.minor, row.created_at)


@dataclass(frozen=True, slots=True)
class RecordView:
    record_id: str
    subject_id: str
    category: str
    fields: dict[str, str]
    version: int
    created_at_us: int
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class ConsentView:
    subject_id: str
    purpose: str
    granted: bool
    source: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordView]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ErasureTarget:
    """What the erasure workflow needs to know of a subject: its key and state."""

    subject_id: str
    region: str
    key: KeyRef
    state: SubjectState


@dataclass(frozen=True, slots=True)
class ShredResult:
    """What destroying a subject's key and data did."""

    key_versions_destroyed: tuple[int, ...]
    evidence: str
    records_affected: int

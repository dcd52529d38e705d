"""The cell's transfer log: one row per cross-border transfer decision.

:class:`TransferEntry` is what is kept (ids and names only: never personal
data, never a token); :class:`CellTransferLog` keeps it in the cell database.
It implements :class:`vault.residency.TransferLog`, the one small interface a
tamper-evident audit log can later implement with the same entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from vault.db import transaction
from vault.errors import StoreUnavailable
from vault.store._models import transfers


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferEntry:
    """One crossing of a region border, allowed or refused."""

    at_us: int
    from_region: str
    to_region: str
    #: ``read`` (home → entry: a reply) or ``write`` (entry → home).
    direction: str
    operation: str
    basis: str | None
    purpose: str
    service: str
    #: The token's ``jti``, never the token.
    token_id: str
    subject_id: str
    record_id: str | None
    categories: tuple[str, ...]
    allowed: bool
    rule: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        # Field by field (``dataclasses.asdict`` deep-copies: slower, and
        # this runs for every forwarded read).
        d = {f: getattr(self, f) for f in _FIELDS}
        d["categories"] = list(self.categories)
        return d


_COLS = (
    transfers.c.at_us,
    transfers.c.from_region,
    transfers.c.to_region,
    transfers.c.direction,
    transfers.c.operation,
    transfers.c.basis,
    transfers.c.purpose,
    transfers.c.service,
    transfers.c.token_id,
    transfers.c.subject_id,
    transfers.c.record_id,
    transfers.c.categories,
    transfers.c.allowed,
    transfers.c.rule,
    transfers.c.reason,
)


_FIELDS = tuple(f.name for f in fields(TransferEntry))
#: Built once: SQLAlchemy reuses its compiled form (one per forwarded read).
_INSERT = insert(transfers)


class CellTransferLog:
    """The transfer log in a cell database (table ``transfers``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(self, entry: TransferEntry) -> None:
        self.record_many([entry])

    def record_many(self, entries: Sequence[TransferEntry]) -> None:
        """Stores entries in one transaction (StoreUnavailable if not)."""
        rows = []
        for entry in entries:
            values = entry.as_dict()
            values["categories"] = ",".join(entry.categories)
            rows.append(values)
        if rows:
            with transaction(self._engine, "cell") as conn:
                conn.execute(_INSERT, rows)

    def for_subject(self, subject_id: str) -> list[TransferEntry]:
        """Every entry about a subject, oldest first."""
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(*_COLS)
                    .where(transfers.c.subject_id == subject_id)
                    .order_by(transfers.c.id)
                ).all()
        except (DBAPIError, SATimeoutError) as e:
            raise StoreUnavailable("cell database unavailable") from e
        return [
            TransferEntry(
                at_us=int(r[0]),
                from_region=r[1],
                to_region=r[2],
                direction=r[3],
                operation=r[4],
                basis=r[5],
                purpose=r[6],
                service=r[7],
                token_id=r[8],
                subject_id=r[9],
                record_id=r[10],
                categories=tuple(c for c in str(r[11]).split(",") if c),
                allowed=bool(r[12]),
                rule=r[13],
                reason=r[14],
            )
            for r in rows
        ]

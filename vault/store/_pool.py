"""The subject-key pool of a cell: entries minted ahead, claimed once.

An entry is a subject id, where its Transit key lives and its data key wrapped
under that key (bound to the id and the region: the derivation context of a
derived key, the associated data of a legacy one) — no personal
data. The claim is one statement that deletes the entry it returns, so two
nodes can never claim the same one: ``DELETE … WHERE id = (SELECT id … LIMIT 1
FOR UPDATE SKIP LOCKED) RETURNING …`` on PostgreSQL (a concurrent claimer skips
the row another holds), the same without the lock clause on SQLite (≥ 3.35),
where a write transaction holds the database alone. The claim runs in the
transaction that inserts the subject: if that insert fails, the entry stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, func, insert, select

from vault.db import transaction
from vault.store._models import subject_pool, subject_pool_fills


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """One minted subject: its id, key location and wrapped data key."""

    id: str
    key_mount: str
    key_name: str
    wrapped_dek: str
    created_at: int
    #: The key is a derived Transit key (every entry minted since revision 0008).
    key_derived: bool = False


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """What the pool holds and how fast it was refilled.

    ``minted`` counts every entry ever added; ``rate_per_second`` is the
    filler's pace over the batches of the last ``window_seconds`` (entries per
    second of minting time, OpenBao's pace), ``None`` with no batch there.
    """

    depth: int
    minted: int
    minted_in_window: int
    rate_per_second: float | None
    window_seconds: int
    oldest_entry_us: int | None


_POOL_COLS = (
    subject_pool.c.id,
    subject_pool.c.key_mount,
    subject_pool.c.key_name,
    subject_pool.c.wrapped_dek,
    subject_pool.c.created_at,
    subject_pool.c.key_derived,
)
_NEXT = select(subject_pool.c.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
_CLAIM = delete(subject_pool).where(subject_pool.c.id == _NEXT).returning(*_POOL_COLS)


def claim(conn: Connection) -> PoolEntry | None:
    """Removes one entry and returns it, in the caller's transaction; None when empty."""
    r = conn.execute(_CLAIM).first()
    return PoolEntry(r[0], r[1], r[2], r[3], int(r[4]), bool(r[5])) if r else None


class PoolStore:
    """Adding to and reading the state of one cell's pool (claims: :func:`claim`)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def add(self, entries: list[PoolEntry], at_us: int, duration_us: int) -> None:
        """Adds a batch of minted entries and logs it, in one transaction."""
        if not entries:
            return
        with transaction(self._engine, "cell") as conn:
            conn.execute(
                insert(subject_pool),
                [
                    {
                        "id": e.id,
                        "key_mount": e.key_mount,
                        "key_name": e.key_name,
                        "wrapped_dek": e.wrapped_dek,
                        "created_at": e.created_at,
                        "key_derived": e.key_derived,
                    }
                    for e in entries
                ],
            )
            conn.execute(
                insert(subject_pool_fills).values(
                    at_us=at_us, entries=len(entries), duration_us=duration_us
                )
            )

    def depth(self) -> int:
        with transaction(self._engine, "cell") as conn:
            return int(conn.execute(select(func.count()).select_from(subject_pool)).scalar_one())

    def status(self, now_us: int, window_seconds: int = 600) -> PoolStatus:
        since = now_us - window_seconds * 1_000_000
        with transaction(self._engine, "cell") as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(subject_pool.c.created_at))
            ).one()
            minted = conn.execute(
                select(func.coalesce(func.sum(subject_pool_fills.c.entries), 0))
            ).scalar_one()
            recent, spent = conn.execute(
                select(
                    func.coalesce(func.sum(subject_pool_fills.c.entries), 0),
                    func.coalesce(func.sum(subject_pool_fills.c.duration_us), 0),
                ).where(subject_pool_fills.c.at_us > since)
            ).one()
        rate = int(recent) / (int(spent) / 1e6) if int(spent) > 0 else None
        return PoolStatus(
            int(depth),
            int(minted),
            int(recent),
            rate,
            window_seconds,
            int(oldest) if oldest is not None else None,
        )

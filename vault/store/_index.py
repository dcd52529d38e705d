"""The cell's side of a blind-index re-index: index key versions, digests
under a new version, and the retirement of the old one.

Every write is idempotent or a compare-and-set, so several re-index jobs (on
several nodes) and the erasure workflow can run against one cell at once:
digests are inserted if missing (``ON CONFLICT DO NOTHING`` on the lookups
primary key) and only while the subject is live; the retirement of a version
happens once (the state moves from active to retired in the transaction that
deletes its digests and its wrapped key).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Insert,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from vault.db import DuplicateKey, transaction
from vault.store._cellstore import (
    SEALED_LOOKUP_COLS,
    IndexVersion,
    SealedLookup,
    SubjectState,
    sealed_lookup,
)
from vault.store._models import cell_keys, index_keys, lookup_values, subjects
from vault.store._models import lookups as lookups_t

#: Subjects whose lookups are re-indexed: every state but erased (a subject
#: whose erasure is pending keeps its data key and lookups until the erasure
#: runs, and gets them back if it is cancelled).
_LIVE = [str(s) for s in SubjectState if s != SubjectState.ERASED]


@dataclass(frozen=True, slots=True)
class LiveSubject:
    """Where a subject's data key is, and the key wrapped (any state but erased)."""

    id: str
    region: str
    key_mount: str
    key_name: str
    wrapped_dek: str
    #: The generation ``wrapped_dek`` holds, and the next one's wrap while a
    #: rekey runs (see vault.rotation._rekey).
    dek_generation: int = 1
    wrapped_dek_next: str | None = None
    #: A derived subject key (its wraps bound by context, see KeyRef.derived).
    key_derived: bool = False

    def wrap_of(self, generation: int) -> str | None:
        """The wrapped data key of ``generation``, if the row holds it."""
        if generation == self.dek_generation:
            return self.wrapped_dek
        if generation == self.dek_generation + 1:
            return self.wrapped_dek_next
        return None


@dataclass(frozen=True, slots=True)
class Retirement:
    """What retiring an index key version did (or why it did not)."""

    retired: bool
    #: Subjects with digests under the old version missing under the new one.
    unsealed_subjects: int
    #: Their digests (deleted with the version when ``retired``).
    unsealed_entries: int
    #: Someone else retired it first.
    already: bool = False
    #: Subjects with fewer digests under the new version than sealed values
    #: (a write that began before the new version existed and committed after
    #: the job passed them): to re-index, then try again. Nothing was retired.
    repair: tuple[str, ...] = ()


class _Refused(Exception):
    """Rolls a retirement back."""

    def __init__(self, result: Retirement) -> None:
        super().__init__()
        self.result = result


class IndexStore:
    """Re-index reads and writes of one cell (the same database as CellStore)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.url.get_backend_name() != "sqlite"

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "cell")

    # -- versions ------------------------------------------------------------

    def versions(self) -> list[IndexVersion]:
        """Every index key version, oldest first."""
        with self._tx() as conn:
            rows = conn.execute(select(index_keys).order_by(index_keys.c.version)).all()
        return [
            IndexVersion(int(r.version), str(r.state), int(r.created_at), r.retired_at)
            for r in rows
        ]

    def active(self) -> list[int]:
        return [v.version for v in self.versions() if v.state == "active"]

    def wrapped(self, name: str) -> str | None:
        """The wrapped index key of a cell key name, if it exists."""
        with self._tx() as conn:
            r = conn.execute(select(cell_keys.c.wrapped).where(cell_keys.c.name == name)).first()
        return str(r[0]) if r else None

    def add_version(
        self, version: int, name: str, mount: str, key_name: str, wrapped: str, now: int
    ) -> bool:
        """Adds an active index key version and its wrapped key in one
        transaction; False if that version exists (another job made it)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(index_keys).values(version=version, state="active", created_at=now)
                )
                conn.execute(
                    insert(cell_keys).values(
                        name=name, key_mount=mount, key_name=key_name, wrapped=wrapped
                    )
                )
        except DuplicateKey:
            return False
        return True

    # -- subjects ------------------------------------------------------------

    def candidates(self, version: int, after: str, limit: int) -> list[str]:
        """Subjects after ``after`` (id order) with a digest under ``version``."""
        with self._tx() as conn:
            rows = conn.execute(
                select(lookups_t.c.subject_id)
                .where(and_(lookups_t.c.key_version == version, lookups_t.c.subject_id > after))
                .group_by(lookups_t.c.subject_id)
                .order_by(lookups_t.c.subject_id)
                .limit(limit)
            ).all()
        return [str(r[0]) for r in rows]

    def count_candidates(self, version: int) -> int:
        with self._tx() as conn:
            n = conn.execute(
                select(func.count(func.distinct(lookups_t.c.subject_id))).where(
                    lookups_t.c.key_version == version
                )
            ).scalar_one()
        return int(n)

    def live_subject(self, subject_id: str) -> LiveSubject | None:
        with self._tx() as conn:
            r = conn.execute(
                select(
                    subjects.c.id,
                    subjects.c.region,
                    subjects.c.key_mount,
                    subjects.c.key_name,
                    subjects.c.wrapped_dek,
                    subjects.c.dek_generation,
                    subjects.c.wrapped_dek_next,
                    subjects.c.key_derived,
                ).where(and_(subjects.c.id == subject_id, subjects.c.state.in_(_LIVE)))
            ).first()
        if r is None:
            return None
        return LiveSubject(r[0], r[1], r[2], r[3], r[4], int(r[5]), r[6], bool(r[7]))

    def sealed_values(self, subject_id: str) -> list[SealedLookup]:
        with self._tx() as conn:
            rows = conn.execute(
                select(*SEALED_LOOKUP_COLS)
                .where(lookup_values.c.subject_id == subject_id)
                .order_by(lookup_values.c.value_id)
            ).all()
        return [sealed_lookup(r) for r in rows]

    def _insert_if_missing(self) -> Insert:
        cols = ("kind", "digest", "subject_id", "key_version")
        live = (
            select(subjects.c.id)
            .where(and_(subjects.c.id == bindparam("subject_id"), subjects.c.state.in_(_LIVE)))
            .exists()
        )
        rows = select(
            bindparam("kind", type_=lookups_t.c.kind.type),
            bindparam("digest", type_=lookups_t.c.digest.type),
            bindparam("sid", type_=lookups_t.c.subject_id.type),
            bindparam("key_version", type_=lookups_t.c.key_version.type),
        ).where(live)
        stmt = (pg_insert if self._pg else sqlite_insert)(lookups_t).from_select(list(cols), rows)
        return stmt.on_conflict_do_nothing().execution_options(preserve_rowcount=True)

    def add_digests(
        self, subject_id: str, version: int, entries: list[tuple[str, str]]
    ) -> int | None:
        """Inserts the (kind, digest) entries under ``version`` that are
        missing, only while the subject is not erased (its row share-locked on
        PostgreSQL, as record writes do: an erasure updates it first); how many
        were new, None if the subject is erased (nothing written)."""
        stmt = self._insert_if_missing()
        with self._tx() as conn:
            q = select(subjects.c.id).where(
                and_(subjects.c.id == subject_id, subjects.c.state.in_(_LIVE))
            )
            if conn.execute(q.with_for_update(read=True) if self._pg else q).first() is None:
                return None
            added = 0
            for kind, digest in sorted(set(entries)):
                added += conn.execute(
                    stmt,
                    {
                        "kind": kind,
                        "digest": digest,
                        "sid": subject_id,
                        "subject_id": subject_id,
                        "key_version": version,
                    },
                ).rowcount
        return added

    def counts(self, subject_id: str, old: int, new: int) -> tuple[int, int]:
        """The subject's digests under ``old`` and under ``new``."""
        with self._tx() as conn:
            row = conn.execute(self._count_by_version(old, new, subject_id)).first()
        return (int(row[1]), int(row[2])) if row else (0, 0)

    @staticmethod
    def _count_by_version(old: int, new: int, subject_id: str | None = None) -> Select[Any]:
        n_old = func.sum(case((lookups_t.c.key_version == old, 1), else_=0))
        n_new = func.sum(case((lookups_t.c.key_version == new, 1), else_=0))
        q = select(lookups_t.c.subject_id, n_old, n_new).where(
            lookups_t.c.key_version.in_([old, new])
        )
        if subject_id is not None:
            q = q.where(lookups_t.c.subject_id == subject_id)
        return q.group_by(lookups_t.c.subject_id)

    def shortfall(
        self, old: int, new: int, conn: Connection | None = None
    ) -> list[tuple[str, int]]:
        """Subjects with fewer digests under ``new`` than under ``old``, and how
        many fewer (id order): not re-indexed yet, or lookups without a sealed value."""
        q = self._count_by_version(old, new)
        q = q.having(
            func.sum(case((lookups_t.c.key_version == old, 1), else_=0))
            > func.sum(case((lookups_t.c.key_version == new, 1), else_=0))
        ).order_by(lookups_t.c.subject_id)
        if conn is not None:
            return [(str(r[0]), int(r[1]) - int(r[2])) for r in conn.execute(q)]
        with self._tx() as c:
            return [(str(r[0]), int(r[1]) - int(r[2])) for r in c.execute(q)]

    def retire(
        self, old: int, new: int, old_name: str, now: int, *, drop_unsealed: bool
    ) -> Retirement:
        """Retires index key version ``old`` in one transaction: deletes its
        digests and its wrapped key and marks it retired — unless a subject
        still lacks digests under ``new`` (and ``drop_unsealed`` is not given),
        then nothing changes.

        On PostgreSQL the old version's row is locked first: a write that
        checked the active versions (share lock, see CellStore) commits before,
        and one arriving later waits and finds the version retired."""
        try:
            with self._tx() as conn:
                # The state changes first: the write takes SQLite's write lock
                # and PostgreSQL's row lock before anything is read.
                res = conn.execute(
                    update(index_keys)
                    .where(and_(index_keys.c.version == old, index_keys.c.state == "active"))
                    .values(state="retired", retired_at=now)
                )
                if res.rowcount != 1:
                    return Retirement(False, 0, 0, already=True)
                short = self.shortfall(old, new, conn)
                repair = []
                for sid, _ in short:
                    n_sealed = conn.execute(
                        select(func.count()).where(lookup_values.c.subject_id == sid)
                    ).scalar_one()
                    n_new = conn.execute(
                        select(func.count()).where(
                            and_(lookups_t.c.subject_id == sid, lookups_t.c.key_version == new)
                        )
                    ).scalar_one()
                    if int(n_new) < int(n_sealed):
                        repair.append(sid)
                subjects_short = len(short)
                entries_short = sum(n for _, n in short)
                if repair:
                    raise _Refused(Retirement(False, 0, 0, repair=tuple(repair)))
                if short and not drop_unsealed:
                    raise _Refused(Retirement(False, subjects_short, entries_short))
                conn.execute(delete(lookups_t).where(lookups_t.c.key_version == old))
                conn.execute(delete(cell_keys).where(cell_keys.c.name == old_name))
        except _Refused as refused:  # rolled back: the version stays active
            return refused.result
        return Retirement(True, subjects_short, entries_short)


__all__ = ["IndexStore", "LiveSubject", "Retirement"]

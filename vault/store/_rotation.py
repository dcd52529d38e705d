"""The cell's side of subject key rotation: claims, the re-wrapped key, the job cursor.

Every write is a compare-and-set, so several rotation jobs (on several nodes)
and the erasure workflow can run against one cell at once:

- a subject is *claimed* (``rotation_claim``) by one job until
  ``rotation_claimed_until``; another job skips it (an expired claim, left by
  a job that died, may be taken over);
- the new wrap is written only if the subject is still live, still claimed by
  this job and still holds the wrap that was re-wrapped; an erasure or another
  writer in between makes the write a no-op, reported to the caller.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from vault.db import transaction
from vault.store._cellstore import LIVE_STATES, SubjectState
from vault.store._models import key_jobs, subjects

_LIVE = [str(s) for s in LIVE_STATES]
_CANDIDATE = (
    subjects.c.id,
    subjects.c.key_mount,
    subjects.c.key_name,
    subjects.c.wrapped_dek,
    subjects.c.key_version,
    subjects.c.wrapped_dek_next,
    subjects.c.key_derived,
)
#: When a subject's key was last rotated, or created if never.
_LAST_ROTATION = func.coalesce(subjects.c.key_rotated_at, subjects.c.created_at)


def claim_subject(
    conn: Connection, subject_id: str, owner: str, now: int, until: int, *also: Any
) -> bool:
    """Takes (or renews) the key-job claim of a live subject — the one claim
    rotations and rekeys share — unless another job holds a live claim; ``also``:
    further conditions. Compare-and-set: True if taken."""
    res = conn.execute(
        update(subjects)
        .where(
            and_(
                subjects.c.id == subject_id,
                subjects.c.state.in_(_LIVE),
                or_(
                    subjects.c.rotation_claim.is_(None),
                    subjects.c.rotation_claim == owner,
                    subjects.c.rotation_claimed_until < now,
                ),
                *also,
            )
        )
        .values(rotation_claim=owner, rotation_claimed_until=until)
    )
    return res.rowcount == 1


def release_subject(conn: Connection, subject_id: str, owner: str) -> None:
    """Gives up ``owner``'s claim of the subject (none held: nothing happens)."""
    conn.execute(
        update(subjects)
        .where(and_(subjects.c.id == subject_id, subjects.c.rotation_claim == owner))
        .values(rotation_claim=None, rotation_claimed_until=None)
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A subject whose key is due for rotation."""

    id: str
    key_mount: str
    key_name: str
    wrapped_dek: str
    key_version: int
    #: The next generation's data key while a rekey of the subject is unfinished.
    wrapped_dek_next: str | None = None
    #: A derived key: re-wrapped by OpenBao itself (Transit rewrap, with context).
    key_derived: bool = False


def _candidate(r: Any) -> Candidate:
    return Candidate(r[0], r[1], r[2], r[3], int(r[4]), r[5], bool(r[6]))


@dataclass(frozen=True, slots=True)
class Job:
    """A rotation job's row: its cutoff (µs: subjects whose key was last rotated,
    or created, before it are due), cursor and counts."""

    id: str
    cutoff_us: int
    cursor: str
    rotated: int
    skipped: int
    failed: int
    finished: bool


@dataclass(frozen=True, slots=True)
class Coverage:
    """How far a cell's subject keys are rotated."""

    subjects: int
    on_latest: int
    oldest_version: int | None
    newest_version: int | None
    oldest_rotation_us: int | None


class RotationStore:
    """Rotation reads and writes of one cell (the same database as CellStore)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "cell")

    # -- jobs -------------------------------------------------------------

    def open_job(self, kind: str, cutoff_us: int, now: int) -> Job:
        """The unfinished job of ``kind`` (resumed, its cutoff kept), or a new one."""
        with self._tx() as conn:
            row = conn.execute(
                select(key_jobs)
                .where(and_(key_jobs.c.kind == kind, key_jobs.c.finished_at.is_(None)))
                .order_by(key_jobs.c.started_at)
                .limit(1)
            ).first()
            if row is None:
                job_id = uuid.uuid4().hex
                conn.execute(
                    insert(key_jobs).values(
                        id=job_id, kind=kind, cutoff_us=cutoff_us, cursor="", started_at=now
                    )
                )
                return Job(job_id, cutoff_us, "", 0, 0, 0, False)
        return Job(row.id, row.cutoff_us, row.cursor, row.rotated, row.skipped, row.failed, False)

    def job(self, job_id: str) -> Job:
        with self._tx() as conn:
            row = conn.execute(select(key_jobs).where(key_jobs.c.id == job_id)).one()
        return Job(
            row.id,
            row.cutoff_us,
            row.cursor,
            row.rotated,
            row.skipped,
            row.failed,
            row.finished_at is not None,
        )

    def advance(
        self, job_id: str, cursor: str, *, rotated: int = 0, skipped: int = 0, failed: int = 0
    ) -> None:
        """Moves the cursor forward (never back: jobs on several nodes share it)."""
        with self._tx() as conn:
            conn.execute(
                update(key_jobs)
                .where(key_jobs.c.id == job_id)
                .values(
                    cursor=func.max(key_jobs.c.cursor, cursor)
                    if self.engine.url.get_backend_name() == "sqlite"
                    else func.greatest(key_jobs.c.cursor, cursor),
                    rotated=key_jobs.c.rotated + int(rotated),
                    skipped=key_jobs.c.skipped + int(skipped),
                    failed=key_jobs.c.failed + int(failed),
                )
            )

    def finish(self, job_id: str, now: int) -> None:
        with self._tx() as conn:
            conn.execute(
                update(key_jobs)
                .where(and_(key_jobs.c.id == job_id, key_jobs.c.finished_at.is_(None)))
                .values(finished_at=now)
            )

    # -- subjects ---------------------------------------------------------

    def due(self, after: str, cutoff_us: int, limit: int) -> list[Candidate]:
        """Live subjects after ``after`` (id order) whose key was last rotated
        (or, never rotated, created) before ``cutoff_us``."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*_CANDIDATE)
                .where(
                    and_(
                        subjects.c.id > after,
                        subjects.c.state.in_(_LIVE),
                        cutoff_us > _LAST_ROTATION,
                    )
                )
                .order_by(subjects.c.id)
                .limit(limit)
            ).all()
        return [_candidate(r) for r in rows]

    def claim(self, subject_id: str, owner: str, cutoff_us: int, now: int, until: int) -> bool:
        """Claims a live subject still due, unless another job holds a live claim."""
        with self._tx() as conn:
            return claim_subject(conn, subject_id, owner, now, until, cutoff_us > _LAST_ROTATION)

    def is_due(self, subject_id: str, cutoff_us: int) -> bool:
        """Live, and its key last rotated (or created) before ``cutoff_us``."""
        with self._tx() as conn:
            row = conn.execute(
                select(subjects.c.id).where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state.in_(_LIVE),
                        cutoff_us > _LAST_ROTATION,
                    )
                )
            ).first()
        return row is not None

    def current(self, subject_id: str) -> Candidate | None:
        """The subject's key and wrap now, if it is live."""
        with self._tx() as conn:
            row = conn.execute(
                select(*_CANDIDATE).where(
                    and_(subjects.c.id == subject_id, subjects.c.state.in_(_LIVE))
                )
            ).first()
        if row is None:
            return None
        return _candidate(row)

    def store_rewrap(
        self,
        subject_id: str,
        owner: str,
        old: str,
        new: str,
        version: int,
        now: int,
        old_next: str | None = None,
        new_next: str | None = None,
    ) -> bool:
        """Replaces the wrap ``old`` by ``new`` (made by key ``version``) — and
        the next generation's wrap ``old_next`` by ``new_next``, for a subject
        whose rekey is unfinished — if the subject is still live, claimed by
        ``owner`` and holding ``old`` (and ``old_next``)."""
        same_next = (
            subjects.c.wrapped_dek_next.is_(None)
            if old_next is None
            else subjects.c.wrapped_dek_next == old_next
        )
        with self._tx() as conn:
            res = conn.execute(
                update(subjects)
                .where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state.in_(_LIVE),
                        subjects.c.rotation_claim == owner,
                        subjects.c.wrapped_dek == old,
                        same_next,
                    )
                )
                .values(
                    wrapped_dek=new,
                    wrapped_dek_next=new_next,
                    key_version=version,
                    key_rotated_at=now,
                )
            )
        return res.rowcount == 1

    def release(self, subject_id: str, owner: str) -> None:
        with self._tx() as conn:
            release_subject(conn, subject_id, owner)

    def coverage(self) -> Coverage:
        """Subjects (live), and how many data keys are on their key's newest
        version as far as the cell knows (the version of its last rotation)."""
        with self._tx() as conn:
            row = conn.execute(
                select(
                    func.count(),
                    func.min(subjects.c.key_version),
                    func.max(subjects.c.key_version),
                    func.min(_LAST_ROTATION),
                ).where(subjects.c.state.in_(_LIVE))
            ).one()
            behind = conn.execute(
                select(func.count()).where(
                    and_(
                        subjects.c.state.in_(_LIVE),
                        subjects.c.rotation_claim.is_not(None),
                    )
                )
            ).scalar_one()
        total = int(row[0])
        # A subject whose rotation is claimed but not finished may have a newer
        # key version than its wrap; every other subject's wrap is on its key's
        # latest version (rotation re-wraps in the same claim).
        return Coverage(total, total - int(behind), row[1], row[2], row[3])


__all__ = ["Candidate", "Coverage", "Job", "RotationStore", "SubjectState"]

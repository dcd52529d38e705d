"""The cell's side of a subject's rekey: the next data key, record by record
re-encryption, the switch of generations (see :mod:`vault.rotation._rekey`).

Every write is a compare-and-set, so a rekey runs beside the subject's readers
and writers, the erasure workflow, and another rekey or rotation job:

- the subject is *claimed* with the rotation claim (``rotation_claim``): a
  rotation and a rekey of one subject never run at once, nor two rekeys;
- the next data key (``wrapped_dek_next``) is stored only while the subject is
  live, claimed by this job and has none;
- a record is re-encrypted only if it is still what was read (id, version,
  envelope, generation) and its subject still live, at the same generation,
  with the same next key;
- the switch (``wrapped_dek`` := ``wrapped_dek_next``, generation + 1) happens
  in one transaction holding the subject's row exclusively, only if no record
  of the old generation is left.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from vault.db import transaction
from vault.store._cellstore import _RECORD_COLS as RECORD_COLS
from vault.store._cellstore import _SUBJECT_COLS as SUBJECT_COLS
from vault.store._cellstore import (
    LIVE_STATES,
    SEALED_LOOKUP_COLS,
    RecordRow,
    SealedLookup,
    SubjectRow,
    _record_row,
    _subject_row,
    sealed_lookup,
    wrap_key_version,
)
from vault.store._models import lookup_values, records, subjects
from vault.store._rotation import claim_subject, release_subject

_LIVE = [str(s) for s in LIVE_STATES]


@dataclass(frozen=True, slots=True)
class SwitchExtras:
    """What the switch of generations writes beside the new wrap: the subject's
    secrets re-sealed under the new data key (see ``_reseal_extras``), and its
    lookup values of the old generation sealed again under the new one, by the
    id of the value they replace."""

    pseudonym_seal: bytes
    lookup_values: tuple[tuple[str, SealedLookup], ...] = ()


class _NoSwitch(Exception):
    """The switch's conditions do not hold: its transaction is rolled back."""


class RekeyStore:
    """Rekey reads and writes of one cell (the same database as CellStore)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._row_locks = engine.url.get_backend_name() != "sqlite"

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "cell")

    def subject(self, subject_id: str) -> SubjectRow | None:
        """The subject's row, in any state."""
        with self._tx() as conn:
            r = conn.execute(select(*SUBJECT_COLS).where(subjects.c.id == subject_id)).first()
        return _subject_row(r) if r else None

    def claim(self, subject_id: str, owner: str, now: int, until: int) -> bool:
        """Claims a live subject unless a job (rotation or rekey) holds a live claim."""
        with self._tx() as conn:
            return claim_subject(conn, subject_id, owner, now, until)

    def release(self, subject_id: str, owner: str) -> None:
        with self._tx() as conn:
            release_subject(conn, subject_id, owner)

    def start(self, subject_id: str, owner: str, generation: int, wrapped_next: str) -> bool:
        """Stores the next data key if the subject is live, claimed by ``owner``,
        at ``generation`` and without a next key. (Its row is updated: record
        writes in flight, holding it FOR SHARE, commit first; later ones see
        the next generation and seal under it.)"""
        with self._tx() as conn:
            res = conn.execute(
                update(subjects)
                .where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state.in_(_LIVE),
                        subjects.c.rotation_claim == owner,
                        subjects.c.dek_generation == generation,
                        subjects.c.wrapped_dek_next.is_(None),
                    )
                )
                .values(wrapped_dek_next=wrapped_next)
            )
        return res.rowcount == 1

    def old_records(
        self, subject_id: str, generation: int, after: str, limit: int
    ) -> list[RecordRow]:
        """Up to ``limit`` records of the subject still sealed under ``generation``,
        after ``after`` in id order."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*RECORD_COLS)
                .where(
                    and_(
                        records.c.subject_id == subject_id,
                        records.c.dek_generation == generation,
                        records.c.id > after,
                    )
                )
                .order_by(records.c.id)
                .limit(limit)
            ).all()
        return [_record_row(r) for r in rows]

    def record(self, record_id: str) -> RecordRow | None:
        with self._tx() as conn:
            r = conn.execute(select(*RECORD_COLS).where(records.c.id == record_id)).first()
        return _record_row(r) if r else None

    def reseal(self, rec: RecordRow, wrapped_next: str, envelope: bytes) -> bool:
        """Replaces the record's envelope by ``envelope`` (the same content under
        the next generation's key) if the record is still ``rec`` (version,
        envelope, generation) and its subject still live at that generation
        with ``wrapped_next`` as its next key."""
        subject_at = (
            select(subjects.c.id)
            .where(
                and_(
                    subjects.c.id == rec.subject_id,
                    subjects.c.state.in_(_LIVE),
                    subjects.c.dek_generation == rec.dek_generation,
                    subjects.c.wrapped_dek_next == wrapped_next,
                )
            )
            .exists()
        )
        with self._tx() as conn:
            res = conn.execute(
                update(records)
                .where(
                    and_(
                        records.c.id == rec.id,
                        records.c.version == rec.version,
                        records.c.dek_generation == rec.dek_generation,
                        records.c.envelope == rec.envelope,
                        subject_at,
                    )
                )
                .values(envelope=envelope, dek_generation=rec.dek_generation + 1)
            )
        return res.rowcount == 1

    def switch(
        self,
        subject_id: str,
        owner: str,
        generation: int,
        wrapped_next: str,
        extras: SwitchExtras,
    ) -> bool:
        """In one transaction holding the subject's row exclusively: if the
        subject is live, claimed by ``owner``, at ``generation`` with
        ``wrapped_next``, and no record of ``generation`` is left, the next
        data key becomes the current one (generation + 1) with ``extras``.
        False (nothing written) otherwise."""
        try:
            with self._tx() as conn:
                if self._row_locks:
                    # Writers hold the row FOR SHARE while they write; this waits
                    # for them, and the record check below sees what they wrote.
                    conn.execute(
                        select(subjects.c.id).where(subjects.c.id == subject_id).with_for_update()
                    )
                self._replace_lookup_values(conn, subject_id, generation, extras.lookup_values)
                old_left = exists().where(
                    and_(
                        records.c.subject_id == subject_id,
                        records.c.dek_generation == generation,
                    )
                )
                old_values_left = exists().where(
                    and_(
                        lookup_values.c.subject_id == subject_id,
                        lookup_values.c.dek_generation == generation,
                    )
                )
                res = conn.execute(
                    update(subjects)
                    .where(
                        and_(
                            subjects.c.id == subject_id,
                            subjects.c.state.in_(_LIVE),
                            subjects.c.rotation_claim == owner,
                            subjects.c.dek_generation == generation,
                            subjects.c.wrapped_dek_next == wrapped_next,
                            ~old_left,
                            ~old_values_left,
                        )
                    )
                    .values(
                        wrapped_dek=wrapped_next,
                        key_version=wrap_key_version(wrapped_next),
                        dek_generation=generation + 1,
                        wrapped_dek_next=None,
                        pseudonym_seal=extras.pseudonym_seal,
                    )
                )
                if res.rowcount != 1:
                    raise _NoSwitch  # nothing of it stays (lookup values included)
        except _NoSwitch:
            return False
        return True

    @staticmethod
    def _replace_lookup_values(
        conn: Connection,
        subject_id: str,
        generation: int,
        values: tuple[tuple[str, SealedLookup], ...],
    ) -> None:
        """Each lookup value of ``generation`` that was re-sealed is replaced by
        its new sealing (unless a writer stored the same value under the new
        generation meanwhile; an empty ``value_id``: dropped); one left out (set
        after it was read) keeps the switch from happening."""
        for old_id, new in values:
            conn.execute(
                delete(lookup_values).where(
                    and_(
                        lookup_values.c.subject_id == subject_id,
                        lookup_values.c.value_id == old_id,
                        lookup_values.c.dek_generation == generation,
                    )
                )
            )
            if not new.value_id:
                continue  # did not open under the old key: dropped
            there = conn.execute(
                select(lookup_values.c.value_id).where(
                    and_(
                        lookup_values.c.subject_id == subject_id,
                        lookup_values.c.value_id == new.value_id,
                    )
                )
            ).first()
            if there is None:
                conn.execute(
                    insert(lookup_values).values(
                        subject_id=subject_id,
                        value_id=new.value_id,
                        kind=new.kind,
                        sealed=new.sealed,
                        dek_generation=new.generation,
                    )
                )

    def lookup_values(self, subject_id: str, generation: int) -> list[SealedLookup]:
        """The subject's sealed lookup values of ``generation``."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*SEALED_LOOKUP_COLS).where(
                    and_(
                        lookup_values.c.subject_id == subject_id,
                        lookup_values.c.dek_generation == generation,
                    )
                )
            ).all()
        return [sealed_lookup(r) for r in rows]

    def old_left(self, subject_id: str, generation: int) -> int:
        """How many records and lookup values of the subject are still sealed
        under ``generation``."""
        with self._tx() as conn:
            n = 0
            for table in (records, lookup_values):
                n += int(
                    conn.execute(
                        select(func.count())
                        .select_from(table)
                        .where(
                            and_(
                                table.c.subject_id == subject_id,
                                table.c.dek_generation == generation,
                            )
                        )
                    ).scalar_one()
                )
            return n


__all__ = ["RekeyStore", "SwitchExtras"]

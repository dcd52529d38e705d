"""Rekey of one subject: its records re-encrypted under a fresh data key
(``pdvault keys rekey``), for a data key that may have leaked.

A subject's data key has a *generation* (``subjects.dek_generation``); each
record names the generation it is sealed under. The job:

1. **claims** the subject (the rotation claim: a rotation and a rekey of one
   subject never run at once, nor two rekeys);
2. **starts**, unless a rekey is already under way: a new data key, wrapped by
   the subject's Transit key with the same associated data, stored as the next
   generation's (``wrapped_dek_next``; compare-and-set: live, none yet). From
   then on every write seals under the next generation (the writers check it
   in their write transaction, and seal again if a rekey started meanwhile);
3. **re-encrypts** every record of the old generation, one by one: opened with
   the old key, sealed with the new one (same associated data and version: the
   content does not change), written only if the record is still what was
   read (compare-and-set; on a miss the record is read again and retried, or
   left if a writer sealed it under the new generation meanwhile);
4. **re-seals** what else is sealed under the data key (:meth:`SubjectRekey._reseal_extras`):
   the subject's audit pseudonym key, so its access report still finds the
   entries written before;
5. **switches**, in one transaction holding the subject's row: if no record of
   the old generation is left, the next data key becomes the current one and
   the old wrap is overwritten; else back to 3.

Resumable: a job that stops leaves the next key in place, and running it again
(once the claim of a dead job expires) continues with it. An erasure racing a
rekey wins: nothing is written for a subject no longer live.

The old data key existed only wrapped in ``wrapped_dek``; after the switch the
cell no longer holds it. A backup of the cell still holds the old wrap, which
the subject's Transit key still opens: a rotation of that key with its old
versions trimmed (``--rotate``, or ``pdvault keys rotate``) ends that too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vault import audit
from vault.crypto import (
    PSEUDONYM_SEAL,
    RecordContext,
    dek_associated_data,
    lookup_value_id,
    new_data_key,
    open_fields,
    open_lookup_value,
    open_subject_secret,
    seal_fields,
    seal_lookup_value,
    seal_subject_secret,
)
from vault.errors import Conflict, DecryptionFailed, Erased, KeyServiceUnavailable, NotFound
from vault.keys import KeyRef
from vault.store import RecordRow, SealedLookup, SubjectRow
from vault.store._rekey import RekeyStore, SwitchExtras

#: Tries per record before the job gives the record up for this pass.
_RECORD_TRIES = 5
#: Passes over the old generation's records before the run gives up (each
#: pass after the first only meets records that changed during the previous).
_MAX_PASSES = 20


class KeyWrapper(Protocol):
    """The key service as a rekey uses it (:class:`vault.keys.TransitKeyRotator`)."""

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes: ...

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str: ...


class SubjectRotation(Protocol):
    """A rotation of the subject's Transit key under the rekey's claim
    (:meth:`vault.rotation.SubjectKeyRotation.rotate_claimed`)."""

    owner: str

    def rotate_claimed(self, subject_id: str) -> str: ...


class AuditLog(Protocol):
    """The region's audit log (:class:`vault.audit.AuditStore`)."""

    def append(self, batch: Sequence[Mapping[str, Any]]) -> tuple[int, bytes]: ...


class RekeyHeld(Conflict):
    """Another key job (a rekey or a rotation) holds the subject's claim."""

    reason = "KEY_JOB_RUNNING"


@dataclass
class RekeySummary:
    """What one run did: records re-encrypted by it, compare-and-set misses
    retried, records a writer re-sealed first, passes over the records."""

    region: str
    resumed: bool = False
    generation: int = 0
    reencrypted: int = 0
    retries: int = 0
    by_writers: int = 0
    passes: int = 0
    rotated: str | None = None
    seconds: float = 0.0


class SubjectRekey:
    """Rekeys subjects of one cell (see the module docstring)."""

    def __init__(
        self,
        store: RekeyStore,
        keys: KeyWrapper,
        region: str,
        *,
        claim_seconds: float = 60.0,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
        audit_log: AuditLog | None = None,
        node: str = "pdvault keys rekey",
    ) -> None:
        self._store = store
        self._audit_log = audit_log
        self._node = node
        self._keys = keys
        self._region = region
        self._claim_us = int(claim_seconds * 1_000_000)
        self._clock = clock
        #: This run's claims carry this id.
        self.owner = uuid.uuid4().hex

    def run(
        self,
        subject_id: str,
        *,
        rotation: SubjectRotation | None = None,
        progress: Callable[[int], None] | None = None,
        batch: int = 100,
    ) -> RekeySummary:
        """Rekeys the subject (resuming an unfinished rekey of it); with
        ``rotation``, rotates its Transit key and trims the old versions at the
        end. ``progress(records done)`` is called after each record.

        Raises NotFound (no such subject), Erased (erased, or being erased),
        RekeyHeld (another job holds the subject) and the key service's errors
        (the job may then be run again)."""
        started = time.monotonic()
        summary = RekeySummary(self._region)
        self._claim(subject_id)
        try:
            row = self._live(subject_id)
            ref = KeyRef(row.key_mount, row.key_name, row.key_derived)
            aad = dek_associated_data(row.id, row.region)
            old_dek = self._keys.unwrap(ref, row.wrapped_dek, aad)
            if row.wrapped_dek_next is None:
                new_dek = new_data_key()
                wrapped_next = self._keys.wrap(ref, new_dek, aad)
                if not self._store.start(row.id, self.owner, row.dek_generation, wrapped_next):
                    self._live(subject_id)
                    raise Conflict("the subject changed during the rekey; run it again")
            else:
                summary.resumed = True
                wrapped_next = row.wrapped_dek_next
                new_dek = self._keys.unwrap(ref, wrapped_next, aad)
            generation = row.dek_generation
            while True:
                summary.passes += 1
                self._reencrypt_all(
                    row, generation, wrapped_next, old_dek, new_dek, summary, progress, batch
                )
                extras = self._reseal_extras(row, old_dek, new_dek)
                if self._store.switch(row.id, self.owner, generation, wrapped_next, extras):
                    break
                self._live(subject_id)
                self._claim(subject_id)
                if self._store.old_left(row.id, generation) == 0 or summary.passes >= _MAX_PASSES:
                    # Live, claimed and nothing left, yet no switch (not ours),
                    # or records that keep changing: stop, resumable.
                    raise Conflict("the subject changed during the rekey; run it again")
            summary.generation = generation + 1
            self._audit(row, old_dek, summary)
            if rotation is not None:
                rotation.owner = self.owner
                summary.rotated = rotation.rotate_claimed(row.id)
        except (KeyServiceUnavailable, DecryptionFailed):
            self._live(subject_id)  # erased meanwhile (its key destroyed): say so
            raise
        finally:
            self._store.release(subject_id, self.owner)
        summary.seconds = time.monotonic() - started
        return summary

    def _claim(self, subject_id: str) -> None:
        now = self._clock()
        if not self._store.claim(subject_id, self.owner, now, now + self._claim_us):
            self._live(subject_id)
            raise RekeyHeld("another key job (rekey or rotation) holds this subject; try later")

    def _live(self, subject_id: str) -> SubjectRow:
        row = self._store.subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        if row.state.gone:
            raise Erased("subject has been erased")
        return row

    def _reencrypt_all(
        self,
        row: SubjectRow,
        generation: int,
        wrapped_next: str,
        old_dek: bytes,
        new_dek: bytes,
        summary: RekeySummary,
        progress: Callable[[int], None] | None,
        batch: int,
    ) -> None:
        after = ""
        while recs := self._store.old_records(row.id, generation, after, batch):
            self._claim(row.id)  # renewed each batch: a long rekey keeps it
            for rec in recs:
                self._reencrypt(rec, wrapped_next, old_dek, new_dek, summary)
                if progress is not None:
                    progress(summary.reencrypted + summary.by_writers)
            after = recs[-1].id

    def _reencrypt(
        self,
        rec: RecordRow,
        wrapped_next: str,
        old_dek: bytes,
        new_dek: bytes,
        summary: RekeySummary,
    ) -> None:
        generation = rec.dek_generation
        for _ in range(_RECORD_TRIES):
            ctx = RecordContext(rec.id, rec.subject_id, self._region, rec.category, rec.version)
            fields = open_fields(old_dek, ctx, rec.envelope)
            sealed = seal_fields(new_dek, ctx, fields)
            if self._store.reseal(rec, wrapped_next, sealed):
                summary.reencrypted += 1
                return
            summary.retries += 1
            fresh = self._store.record(rec.id)
            if fresh is None or fresh.dek_generation != generation:
                summary.by_writers += int(fresh is not None)
                return  # deleted, or sealed under the new generation by a writer
            self._live(rec.subject_id)
            rec = fresh
        # Still changing: the switch finds it and the job makes another pass.

    def _audit(self, row: SubjectRow, old_dek: bytes, summary: RekeySummary) -> None:
        """One entry in the region's audit log: the subject (under its
        pseudonym, which the rekey kept), the new generation and the count."""
        if self._audit_log is None:
            return
        who = audit.pseudonym(self._pseudonym_key(row, old_dek), row.id)
        self._audit_log.append(
            [
                {
                    "time_us": self._clock(),
                    "node": self._node,
                    "operation": "rekey",
                    "decision": "ok",
                    "region": self._region,
                    "subject": who,
                    "record": None,
                    "detail": {
                        "generation": summary.generation,
                        "records": summary.reencrypted + summary.by_writers,
                    },
                }
            ]
        )

    @staticmethod
    def _pseudonym_key(row: SubjectRow, old_dek: bytes) -> bytes:
        """The subject's pseudonym key as of ``row`` (whose data key is ``old_dek``)."""
        if row.pseudonym_seal is None:
            return audit.pseudonym_key(old_dek)
        return open_subject_secret(
            old_dek, PSEUDONYM_SEAL, row.id, row.region, row.dek_generation, row.pseudonym_seal
        )

    def _reseal_extras(self, row: SubjectRow, old_dek: bytes, new_dek: bytes) -> SwitchExtras:
        """Everything else sealed under the subject's data key, sealed under the
        new one; written by the switch of generations.

        The audit pseudonym key (HKDF of the first data key, or what an earlier
        rekey carried over), so the subject's earlier audit entries stay
        findable; and the lookup values still sealed under the old generation
        (a re-index rebuilds the blind index from them), each under a new id.
        A value that does not open under the old key (not this subject's) is
        dropped with its old sealing: it could never be indexed."""
        g = row.dek_generation
        key = self._pseudonym_key(row, old_dek)
        seal = seal_subject_secret(new_dek, PSEUDONYM_SEAL, row.id, row.region, g + 1, key)
        values: list[tuple[str, SealedLookup]] = []
        for v in self._store.lookup_values(row.id, g):
            try:
                plain = open_lookup_value(old_dek, row.id, row.region, v.kind, v.sealed)
            except DecryptionFailed:
                values.append((v.value_id, SealedLookup("", v.kind, b"", 0)))
                continue
            values.append(
                (
                    v.value_id,
                    SealedLookup(
                        lookup_value_id(new_dek, v.kind, plain),
                        v.kind,
                        seal_lookup_value(new_dek, row.id, row.region, v.kind, plain),
                        g + 1,
                    ),
                )
            )
        return SwitchExtras(pseudonym_seal=seal, lookup_values=tuple(values))

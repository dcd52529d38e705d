"""What every cell operation shares: its collaborators, data keys and the facts
the policy needs about a subject."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vault import audit
from vault.audit import StoredEntry
from vault.cell._lookup import BlindIndex
from vault.cell._views import RecordView
from vault.config import Limits, RegionConfig
from vault.crypto import (
    PSEUDONYM_SEAL,
    RecordContext,
    dek_associated_data,
    open_fields,
    open_subject_secret,
)
from vault.errors import DecryptionFailed, Erased, KeyServiceUnavailable, NotFound
from vault.inline import ensure_may_block
from vault.keys import BoundedCache, DataKeyCache, KeyProvider, KeyRef, KeyShredder
from vault.policy import Authorizer, Caller, SubjectFacts, filter_fields
from vault.store import CellStore, RecordRow, SubjectRow, SubjectState
from vault.tokens import FieldGrant


def now_us() -> int:
    return time.time_ns() // 1000


def scoped_idempotency_key(caller: Caller, key: str) -> str:
    """An idempotency key as stored: scoped by the calling service (two services
    using "customer-42" never meet), and hashed, since a caller's key is opaque."""
    return hashlib.sha256(f"{caller.service}\x00{key}".encode()).hexdigest()


class TransferCheck(Protocol):
    """The cross-border transfer decision of the cell's region
    (:class:`vault.residency.TransferGate`)."""

    def check(
        self,
        caller: Caller,
        *,
        operation: str,
        write: bool,
        subject_id: str,
        record_id: str | None,
        categories: Sequence[str | None],
    ) -> None: ...

    def history(self, subject_id: str) -> list[dict[str, Any]]: ...


class AccessHistory(Protocol):
    """The region's audit log, read by subject pseudonym (:class:`vault.audit.AuditStore`)."""

    def for_subject(self, subject: str, since_us: int = 0) -> list[StoredEntry]: ...


#: What a person is told about each access (no token ids, no node names).
ACCESS_FIELDS = (
    "time_us",
    "operation",
    "decision",
    "service",
    "client",
    "purpose",
    "legal_basis",
    "transfer_basis",
    "categories",
    "fields",
    "region",
    "entry_region",
)


class FreshKeys(Protocol):
    """Data keys of pool entries this node minted (:class:`vault.cell.KeyPool`)."""

    def take_data_key(self, subject_id: str) -> bytes | None: ...


class CellBase:
    """The collaborators of one region's cell, built by the composition root.

    ``subjects`` caches subject rows for writes only: their mutable part (the
    state) is never trusted from there but enforced by the write statement.
    ``shredder`` destroys subject keys; a cell without one cannot erase.
    """

    def __init__(
        self,
        region: RegionConfig,
        store: CellStore,
        keys: KeyProvider,
        data_keys: DataKeyCache,
        subjects: BoundedCache[SubjectRow],
        index: BlindIndex,
        limits: Limits,
        authz: Authorizer,
        *,
        shredder: KeyShredder | None = None,
        pool: FreshKeys | None = None,
        clock: Callable[[], int] = now_us,
        transfers: TransferCheck | None = None,
        access: AccessHistory | None = None,
    ) -> None:
        self.region = region
        self.limits = limits
        self._store = store
        self._keys = keys
        self._data_keys = data_keys
        self._subjects = subjects
        self._index = index
        self._authz = authz
        self._shredder = shredder
        self._pool = pool
        self._clock = clock
        self._transfers = transfers
        self._access = access
        # A local SQLite file answers in microseconds: calls may run inline.
        self.local_store = store.local

    def _transfer(
        self,
        caller: Caller,
        operation: str,
        subject_id: str,
        record_id: str | None,
        categories: Sequence[str | None],
        *,
        write: bool = False,
    ) -> None:
        """The transfer rules, for a caller that entered by another region's node
        (after the policy check, before any record is opened or written)."""
        if self._transfers is not None and caller.entry_region is not None:
            self._transfers.check(
                caller,
                operation=operation,
                write=write,
                subject_id=subject_id,
                record_id=record_id,
                categories=categories,
            )

    def transfer_history(self, subject_id: str) -> list[dict[str, Any]]:
        """The subject's recorded cross-border transfers (oldest first)."""
        return [] if self._transfers is None else self._transfers.history(subject_id)

    def _access_report(self, subject: SubjectRow, since_us: int = 0) -> list[dict[str, Any]]:
        """The audited calls about a subject (oldest first), found by its
        pseudonym; empty on a node running without the audit (benchmarks)."""
        if self._access is None:
            return []
        who = audit.pseudonym(self._pseudonym_key(subject), subject.id)
        out = []
        for stored in self._access.for_subject(who, since_us):
            entry = json.loads(stored.entry)
            view = {k: entry.get(k) for k in ACCESS_FIELDS}
            view["sequence"] = stored.seq
            out.append(view)
        return out

    def forget(self, subject_id: str) -> None:
        """Drops what this node caches about a subject (its data key, its row)."""
        self._data_keys.evict(subject_id)
        self._subjects.evict(subject_id)

    def close(self) -> None:
        self._store.close()

    # -- keys -------------------------------------------------------------

    def _data_key(self, row: SubjectRow, generation: int | None = None) -> bytes:
        """The subject's data key of ``generation`` (default: the newest, the
        one writes seal under), noting the subject's pseudonym key for the
        request's audit entry."""
        if row.state.gone:
            raise Erased("subject has been erased")
        gen = row.newest_generation if generation is None else generation
        dek = self._dek(row, gen)
        note = audit.current()
        if note is not None and row.id not in note.keys_used:
            current = dek if gen == row.dek_generation else None
            audit.key_used(row.id, self._pseudonym_key(row, current))
        return dek

    def _dek(self, row: SubjectRow, generation: int) -> bytes:
        """The data key of ``generation``, from the cache or unwrapped (and cached)."""
        dek = self._data_keys.get(row.id, generation)
        if dek is None:
            ensure_may_block()
            dek = self._unwrap(row, generation)
            self._data_keys.put(row.id, dek, generation)
        return dek

    def _unwrap(self, row: SubjectRow, generation: int) -> bytes:
        ref = KeyRef(row.key_mount, row.key_name, row.key_derived)
        aad = dek_associated_data(row.id, row.region)
        wrapped = row.wrap_of(generation)
        if wrapped is not None:
            try:
                return self._keys.unwrap(ref, wrapped, aad)
            except DecryptionFailed:
                # A key rotation may have re-wrapped the data key and retired
                # the version of the wrap read a moment ago: read it again.
                pass
        # Not in the row read (a record written or rekeyed after it), or its
        # wrap no longer opens: the subject's row as it is now.
        fresh = self._store.get_subject(row.id)
        if fresh is None or fresh.state.gone:
            raise DecryptionFailed()
        again = fresh.wrap_of(generation)
        if again is None or again == wrapped:
            raise DecryptionFailed()
        return self._keys.unwrap(ref, again, aad)

    def _pseudonym_key(self, row: SubjectRow, current: bytes | None = None) -> bytes:
        """The subject's audit pseudonym key: derived from its data key, or,
        once rekeyed, the one the first data key gave, carried over sealed
        under the current data key (see :mod:`vault.rotation._rekey`).
        ``current``: that data key, if the caller has it at hand. The same key
        for every generation: one the request already found is reused."""
        note = audit.current()
        known = None if note is None else note.keys_used.get(row.id)
        if known is not None:
            return known
        known = self._data_keys.pseudonym_key(row.id)
        if known is not None:
            return known
        dek = current if current is not None else self._dek(row, row.dek_generation)
        if row.pseudonym_seal is None:
            known = audit.pseudonym_key(dek)
        else:
            known = open_subject_secret(
                dek, PSEUDONYM_SEAL, row.id, row.region, row.dek_generation, row.pseudonym_seal
            )
        self._data_keys.put_pseudonym_key(row.id, known)
        return known

    def _audit(self, row: SubjectRow, record_id: str | None = None) -> None:
        """Notes for the request's audit entry that it concerns this subject
        (and record), with the source of the subject's pseudonym key."""

        def pseudonym_key(may_unwrap: bool) -> bytes | None:
            # From the cached key, else (unless the call failed on keys) the
            # usual unwrap-and-cache; None once the subject is gone or its key
            # destroyed.
            if row.state.gone:
                return None
            try:
                if not may_unwrap and self._data_keys.get(row.id, row.dek_generation) is None:
                    return None
                return self._pseudonym_key(row)
            except (DecryptionFailed, KeyServiceUnavailable, Erased):
                return None

        audit.about(self.region.id, row.id, record_id, pseudonym_key)

    def _open(self, subject: SubjectRow, rec: RecordRow) -> RecordView:
        """The record opened with the data key of its generation."""
        dek = self._data_key(subject, rec.dek_generation)
        ctx = RecordContext(rec.id, rec.subject_id, self.region.id, rec.category, rec.version)
        fields = open_fields(dek, ctx, rec.envelope)
        return RecordView(
            rec.id,
            rec.subject_id,
            rec.category,
            fields,
            rec.version,
            rec.created_at,
            rec.updated_at,
        )

    def _open_for(self, subject: SubjectRow, rec: RecordRow, allowed: FieldGrant) -> RecordView:
        v = self._open(subject, rec)
        if allowed is None:
            audit.touched(v.category, v.fields)
            return v
        audit.touched(v.category, (f for f in v.fields if f in allowed))
        return RecordView(
            v.record_id,
            v.subject_id,
            v.category,
            filter_fields(v.fields, allowed),
            v.version,
            v.created_at_us,
            v.updated_at_us,
        )

    # -- subjects ---------------------------------------------------------

    def _facts(self, caller: Caller, row: SubjectRow) -> SubjectFacts:
        if row.state.gone:
            raise Erased("subject has been erased")
        consented: frozenset[str] = frozenset()
        # Only consent-based purposes pay for the consent lookup.
        if caller.purpose.requires_consent and self._store.consent_granted(
            row.id, caller.purpose.name
        ):
            consented = frozenset({caller.purpose.name})
        return SubjectFacts(
            minor=row.minor,
            restricted=row.state == SubjectState.RESTRICTED,
            consented_purposes=consented,
        )

    def _live_subject(self, subject_id: str) -> SubjectRow:
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        self._audit(row)
        if row.state.gone:
            raise Erased("subject has been erased")
        return row

"""One region's data plane: subjects, consent, restriction, lookups, export,
erasure and retention (records in :mod:`vault.cell._records`).

Domain code: knows nothing of gRPC. Every operation checks the subject's state
in the cell database *before* any data key is used, so an erasure recorded
there is effective at once, whatever the in-process key cache still holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from vault import audit, ids
from vault.cell._base import scoped_idempotency_key
from vault.cell._export import export_pieces
from vault.cell._lookup import (
    CATEGORY_OF_KIND,
    MAX_LOOKUP_RESULTS,
    MAX_LOOKUPS_PER_REQUEST,
    MAX_LOOKUPS_PER_SUBJECT,
    normalise,
)
from vault.cell._pool import key_name_for, mint_subject_key
from vault.cell._records import RecordOps
from vault.cell._views import (
    ConsentView,
    ErasureTarget,
    RecordView,
    ShredResult,
    SubjectView,
)
from vault.crypto import (
    dek_associated_data,
    lookup_value_id,
    same_digest,
    seal_lookup_value,
)
from vault.errors import (
    AccessDenied,
    Conflict,
    Erased,
    NotFound,
    Restricted,
    TooLarge,
    VaultError,
)
from vault.inline import ensure_may_block
from vault.keys import KeyRef, KeyShredder
from vault.policy import Caller, SubjectFacts
from vault.store import (
    DataKeyChanged,
    DuplicateKey,
    IndexVersionsChanged,
    LookupWrite,
    SealedLookup,
    SubjectRow,
    SubjectState,
)
from vault.tokens import FieldGrant

log = logging.getLogger("vault.cell")
#: Attempts of a lookup write or search whose index key versions change under it.
_INDEX_RETRIES = 3


class Cell(RecordOps):
    """The operations of one region, each on behalf of an authenticated caller."""

    # -- subjects ---------------------------------------------------------

    def _lookup_values(
        self, caller: Caller, entries: list[tuple[str, str]], facts: SubjectFacts
    ) -> list[tuple[str, str]]:
        """Authorises writing lookup entries (a write of each value's category)
        and normalises them: (kind, value)."""
        if len(entries) > MAX_LOOKUPS_PER_REQUEST:
            raise TooLarge(f"at most {MAX_LOOKUPS_PER_REQUEST} lookup entries per request")
        normalised = [
            (kind, normalise(kind, value, f"lookups[{i}]"))
            for i, (kind, value) in enumerate(entries)
        ]
        for kind in sorted({kind for kind, _ in normalised}):
            audit.touched(CATEGORY_OF_KIND[kind])
            self._authz.fields(caller, CATEGORY_OF_KIND[kind], "write", facts)
        return sorted(set(normalised))

    def _lookup_write(
        self,
        normalised: list[tuple[str, str]],
        subject_id: str | None = None,
        dek: bytes | None = None,
        generation: int = 1,
    ) -> LookupWrite:
        """The blind-index digests of normalised values under every active
        index key version, and (given the subject's data key) the values
        sealed under it."""
        if not normalised:
            return LookupWrite((), ())
        ensure_may_block()  # the index key may need the key service
        for _ in range(_INDEX_RETRIES):
            versions = self._index.versions()
            try:
                digests = tuple(
                    (kind, self._index.digest(kind, value, v), v)
                    for kind, value in normalised
                    for v in versions
                )
                break
            except IndexVersionsChanged:  # a version retired meanwhile
                self._index.refresh()
        else:
            raise Conflict("the lookup index changed during the write; retry")
        sealed = (
            self._seal_lookups(dek, subject_id, normalised, generation)
            if dek is not None and subject_id is not None
            else ()
        )
        return LookupWrite(versions, digests, sealed)

    def _seal_lookups(
        self,
        dek: bytes,
        subject_id: str,
        normalised: list[tuple[str, str]],
        generation: int = 1,
    ) -> tuple[SealedLookup, ...]:
        """The values sealed under the subject's data key of ``generation``
        (a new subject's: 1)."""
        return tuple(
            SealedLookup(
                lookup_value_id(dek, kind, value),
                kind,
                seal_lookup_value(dek, subject_id, self.region.id, kind, value),
                generation,
            )
            for kind, value in normalised
        )

    def create_subject(
        self,
        caller: Caller,
        *,
        minor: bool,
        idempotency_key: str = "",
        lookups: list[tuple[str, str]] | None = None,
    ) -> SubjectView:
        self._authz.scope(caller, "write", self.region.id, None)
        facts = SubjectFacts(minor=minor, restricted=False)
        normalised = self._lookup_values(caller, lookups or [], facts)
        for _ in range(_INDEX_RETRIES):
            write = self._lookup_write(normalised)
            key = digest = None
            if idempotency_key:
                key = scoped_idempotency_key(caller, idempotency_key)
                # Digests under the oldest active index key version: the same
                # as before a re-index started, until it ends.
                oldest = min(write.versions, default=0)
                pairs = sorted({(k, d) for k, d, v in write.digests if v == oldest})
                request = json.dumps([minor, pairs], separators=(",", ":"))
                digest = hashlib.sha256(request.encode()).hexdigest()
                existing = self._store.subject_by_idempotency_key(key)
                if existing is not None:
                    self._lookup_transfer(caller, existing[0].id, lookups)
                    return self._replayed_subject(*existing, digest)
            try:
                row = self._insert_new(caller, minor, key, digest, write, normalised, lookups)
            except IndexVersionsChanged:  # a re-index started or ended: digests again
                self._index.refresh()
                continue
            except DuplicateKey:  # the same key, used meanwhile (its new key is destroyed)
                existing = self._store.subject_by_idempotency_key(key) if key else None
                if existing is None or digest is None:
                    raise
                return self._replayed_subject(*existing, digest)
            self._audit(row)
            return SubjectView.of(row)
        raise Conflict("the lookup index changed during the write; retry")

    def _insert_new(
        self,
        caller: Caller,
        minor: bool,
        key: str | None,
        digest: str | None,
        write: LookupWrite,
        normalised: list[tuple[str, str]],
        lookups: list[tuple[str, str]] | None,
    ) -> SubjectRow:
        """Claims a subject minted ahead (no key-service call); when the pool is
        empty — or lookup values cross a border, whose transfer decision is
        recorded under the subject id before anything is written — creates the
        subject's key inline. Lookup values are sealed under the subject's data
        key in the same transaction as the subject's row (for a pooled subject
        whose data key this node did not mint, that unwraps it)."""
        if not (lookups and caller.entry_region is not None):

            def seal(row: SubjectRow) -> tuple[SealedLookup, ...]:
                dek = self._pool.take_data_key(row.id) if self._pool is not None else None
                if dek is not None:
                    self._data_keys.put(row.id, dek)
                else:
                    dek = self._data_key(row)
                return self._seal_lookups(dek, row.id, normalised)

            row = self._store.insert_pooled_subject(
                self.region.id,
                minor,
                self._clock(),
                key,
                digest,
                write if normalised else None,
                seal if normalised else None,
            )
            if row is not None:
                dek = self._pool.take_data_key(row.id) if self._pool is not None else None
                if dek is not None:  # minted here: the first write needs no unwrap
                    self._data_keys.put(row.id, dek)
                return row
        sid = ids.new_subject_id(self.region.id)
        self._lookup_transfer(caller, sid, lookups)
        ensure_may_block()
        # Key first, then the row: if the key service is down nothing is written.
        # A key whose row is not written guards nothing: it is destroyed again
        # (a crash in between, or a wrap failing after the key was made, leaves
        # one behind: reap_orphan_keys finds it).
        minted = mint_subject_key(self._keys, self.region, sid)
        try:
            now = self._clock()
            row = SubjectRow(
                sid,
                self.region.id,
                SubjectState.ACTIVE,
                minor,
                minted.ref.mount,
                minted.ref.name,
                minted.wrapped,
                now,
                now,
                key_derived=minted.ref.derived,
            )
            sealed = self._seal_lookups(minted.dek, sid, normalised)
            lookup_rows = LookupWrite(write.versions, write.digests, sealed) if normalised else None
            self._store.insert_subject(row, key, digest, lookup_rows)
        except BaseException:
            self._discard_key(minted.ref)
            raise
        self._data_keys.put(sid, minted.dek)
        return row

    def _discard_key(self, ref: KeyRef) -> None:
        """Destroys a subject key whose row was never written, through the
        eraser's credential (best effort: a key that survives guards no data,
        and :meth:`reap_orphan_keys` destroys it later)."""
        if self._shredder is None:
            return
        try:
            self._shredder.destroy(ref)
        except VaultError:
            log.warning("a subject key without a subject could not be destroyed yet")

    def _lookup_transfer(
        self,
        caller: Caller,
        subject_id: str,
        lookups: list[tuple[str, str]] | None,
        operation: str = "CreateSubject",
    ) -> None:
        """Lookup values are the person's data: writing them is a transfer
        (of their categories) when the caller entered by another region."""
        if lookups:
            categories = sorted({CATEGORY_OF_KIND[kind] for kind, _ in lookups})
            self._transfer(caller, operation, subject_id, None, categories, write=True)

    def _replayed_subject(
        self, existing: SubjectRow, stored_digest: str | None, digest: str
    ) -> SubjectView:
        if not same_digest(stored_digest, digest):
            raise Conflict(
                "the idempotency key was already used for a different request",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return SubjectView.of(existing)

    def get_subject(self, caller: Caller, subject_id: str) -> SubjectView:
        self._authz.scope(caller, "read", self.region.id, subject_id)
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        self._audit(row)
        if not row.state.gone:
            self._authz.subject_visible(caller, self._facts(caller, row))
        return SubjectView.of(row)

    # -- consent and restriction -------------------------------------------

    def set_consent(
        self, caller: Caller, subject_id: str, purpose: str, granted: bool, source: str
    ) -> ConsentView:
        self._authz.scope(caller, "consent", self.region.id, subject_id)
        self._authz.known_purpose(purpose)
        self._live_subject(subject_id)
        now = self._clock()
        if not self._store.set_consent(subject_id, purpose, granted, source, now):
            # The subject's state changed since the check above (guarded write).
            self._live_subject(subject_id)  # raises NotFound / Erased
            raise Conflict("the subject changed during the write; retry")
        return ConsentView(subject_id, purpose, granted, source, now)

    def list_consents(self, caller: Caller, subject_id: str) -> list[ConsentView]:
        self._authz.scope(caller, "consent", self.region.id, subject_id)
        self._live_subject(subject_id)
        return [
            ConsentView(subject_id, p, g, s, at)
            for p, g, s, at in self._store.list_consents(subject_id)
        ]

    def restrict_processing(self, caller: Caller, subject_id: str, restricted: bool) -> SubjectView:
        """Restriction is a processing choice of the subject: the ``consent`` operation."""
        self._authz.scope(caller, "consent", self.region.id, subject_id)
        self._live_subject(subject_id)
        state = SubjectState.RESTRICTED if restricted else SubjectState.ACTIVE
        if not self._store.set_state(subject_id, state, self._clock()):
            raise Erased("subject has been erased")
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        return SubjectView.of(row)

    # -- portability ---------------------------------------------------------

    def export_subject(
        self, caller: Caller, subject_id: str, page_size: int = 200
    ) -> Iterator[bytes]:
        """The subject's data as one JSON document, in pieces (GDPR Art. 20).

        Checks happen before the first piece: a denied export yields nothing.
        Records of categories the caller may not export are left out and
        counted in ``omitted_records``.
        """
        self._authz.scope(caller, "export", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, subject)
        self._authz.subject_visible(caller, facts)
        grants: dict[str, FieldGrant] = {}
        for c in self._authz.readable_categories(caller):
            try:
                grants[c] = self._authz.fields(caller, c, "export", facts)
            except AccessDenied as e:
                if e.reason != "FIELD_NOT_GRANTED":
                    raise
        for c in grants:
            audit.touched(c)
        # The whole document is about no single category (see TransferRules).
        self._transfer(caller, "ExportSubject", subject_id, None, [None])
        consents = self._store.list_consents(subject_id)
        transfers = self.transfer_history(subject_id)
        accesses = self._access_report(subject)
        self._data_key(subject)  # the key service answers before the first piece

        def pages() -> Iterator[list[RecordView | None]]:
            after: str | None = None
            while rows := self._store.list_records(subject.id, None, after, page_size):
                after = rows[-1].id
                yield [
                    self._open_for(subject, r, grants[r.category]) if r.category in grants else None
                    for r in rows
                ]

        return export_pieces(subject, consents, pages(), self._clock, transfers, accesses)

    def access_report(
        self, caller: Caller, subject_id: str, since_us: int = 0
    ) -> list[dict[str, Any]]:
        """Who accessed the subject's data (GDPR Art. 15(1)(c)), from the audit
        log: checked like an export (the ``export`` operation, the subject's
        facts — consent, minors, restriction — against the purpose, the
        transfer rules for a document about no single category)."""
        self._authz.scope(caller, "export", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        self._authz.subject_processable(caller, self._facts(caller, subject))
        self._transfer(caller, "GetAccessReport", subject_id, None, [None])
        return self._access_report(subject, since_us)

    # -- lookups -------------------------------------------------------------

    def set_lookups(self, caller: Caller, subject_id: str, entries: list[tuple[str, str]]) -> int:
        """Adds lookup entries: a write of each value's category, while the
        subject is live (checked in the insert, like record writes). Each value
        is stored as its digests and sealed under the subject's data key."""
        self._authz.scope(caller, "write", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        normalised = self._lookup_values(caller, entries, self._facts(caller, subject))
        self._lookup_transfer(caller, subject_id, entries, "SetLookups")
        for _ in range(_INDEX_RETRIES):
            # Sealed under the newest data key (the next one while a rekey runs).
            dek = self._data_key(subject) if normalised else None
            write = self._lookup_write(normalised, subject_id, dek, subject.newest_generation)
            try:
                added = self._store.add_lookups(
                    subject_id, write, MAX_LOOKUPS_PER_SUBJECT, self._writable(caller)
                )
            except IndexVersionsChanged:  # a re-index started or ended: digests again
                self._index.refresh()
                continue
            except DataKeyChanged:  # a rekey started or ended: seal again
                subject = self._live_subject(subject_id)
                continue
            if added is None:
                self._refused_write(caller, subject_id)
            return added
        raise Conflict("the lookup index changed during the write; retry")

    def find_subjects(self, caller: Caller, kind: str, value: str) -> list[str]:
        """Subjects of this cell with the lookup value that the caller could read
        the value's category of: each result passes the same decision as a read
        (token subjects, erasure, minors, consent, restriction). Results that do
        not are left out, never reported. The value's digest under every active
        index key version is looked for (two while a re-index runs)."""
        self._authz.scope_search(caller, self.region.id)
        category = CATEGORY_OF_KIND[kind]
        audit.touched(category)
        self._authz.fields(caller, category, "read", None)
        ensure_may_block()  # the index key may need the key service
        value = normalise(kind, value)
        found: list[str] = []
        searched: tuple[int, ...] = ()
        for _ in range(_INDEX_RETRIES):
            try:
                versions = self._index.versions()
                if versions == searched:
                    break
                digests = [self._index.digest(kind, value, v) for v in versions]
            except IndexVersionsChanged:  # a version retired meanwhile
                self._index.refresh()
                continue
            found, searched = self._store.find_lookup(kind, digests), versions
            if found:
                break
            # Nothing: the versions known here may be out of date (a re-index
            # ended on another node and deleted the old digests): read them again.
            self._index.refresh()
        visible = []
        for sid in found[:MAX_LOOKUP_RESULTS]:
            if not caller.claims.allows_subject(sid):
                continue
            row = self._store.get_subject(sid)
            if row is None or row.state.gone:
                continue
            try:
                self._authz.fields(caller, category, "read", self._facts(caller, row))
            except (AccessDenied, Restricted):
                continue
            self._audit(row)
            visible.append(sid)
        return visible

    # -- erasure (the steps of vault.erasure's workflow) -------------------------

    def erasure_target(self, caller: Caller, subject_id: str) -> ErasureTarget:
        """Authorises erasing (or cancelling the erasure of) a subject; its key."""
        self._authz.scope(caller, "erase", self.region.id, subject_id)
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        self._audit(row)
        key = KeyRef(row.key_mount, row.key_name, row.key_derived)
        return ErasureTarget(row.id, row.region, key, row.state)

    def hide(self, subject_id: str) -> None:
        """Marks the subject erasure-pending (remembering its state): from now on
        no node decrypts it."""
        self._store.hide(subject_id, self._clock())
        self.forget(subject_id)

    def unhide(self, subject_id: str) -> SubjectView:
        """Gives a subject whose erasure was cancelled the state it had before."""
        self._store.unhide(subject_id, self._clock())
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        return SubjectView.of(row)

    def shred(
        self,
        subject_id: str,
        key: KeyRef,
        *,
        after_destroy: Callable[[], None] | None = None,
        before_destroy: Callable[[tuple[int, ...]], None] | None = None,
    ) -> ShredResult:
        """Destroys the subject's key, proves it, deletes its rows (idempotent).
        ``before_destroy`` is given the key's versions (none if it is already
        gone) before it is destroyed; ``after_destroy`` runs once the key is gone
        (a crash point for tests)."""
        shredder = self._require_shredder()
        row = self._store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        self.hide(row.id)
        if before_destroy is not None:
            before_destroy(shredder.versions(key))
        versions = shredder.destroy(key)
        if after_destroy is not None:
            after_destroy()
        evidence = ""
        if row.wrapped_dek:
            # The ledger names the key's place; the row says how its wrap is
            # bound (a derived key's unwrap without its context would be
            # refused even while the key exists: no proof of anything).
            bound = KeyRef(key.mount, key.name, row.key_derived)
            evidence = shredder.prove_destroyed(
                bound, row.wrapped_dek, dek_associated_data(row.id, row.region)
            )
        records = self._store.erase_subject_data(row.id, self._clock())
        self.forget(row.id)
        return ShredResult(versions, evidence, records)

    def reap_orphan_keys(self, min_age_seconds: float, now: float | None = None) -> int:
        """Destroys the subject keys of this region that have neither a subject
        row nor an entry in the subject-key pool and are older than
        ``min_age_seconds`` (younger ones may belong to a create or a pool fill
        in flight): keys a crash left between their creation and their row's insert.
        They guard no data; reaping keeps the key service's contents honest.
        Returns how many were destroyed."""
        shredder = self._require_shredder()
        now = time.time() if now is None else now
        prefix = key_name_for("")
        reaped = 0
        for mount in self.region.transit_mounts:
            for name in shredder.key_names(mount):
                sid = name.removeprefix(prefix)
                if not name.startswith(prefix) or not sid.startswith(f"{self.region.id}_sub_"):
                    continue
                if self._store.get_subject(sid) is not None or self._store.pooled(sid):
                    continue  # a subject's key, or a pool entry's (no row yet, on purpose)
                ref = KeyRef(mount, name)
                made = shredder.created_at(ref)
                if made is None or now - made < min_age_seconds:
                    continue
                # The row could have been inserted since the check above only by a
                # create older than min_age_seconds: none is still in flight.
                if self._store.get_subject(sid) is None and shredder.destroy(ref):
                    reaped += 1
        return reaped

    def destroy_key_again(self, key: KeyRef) -> bool:
        """Destroys a key the ledger says is gone, if a restore brought it back."""
        return bool(self._require_shredder().destroy(key))

    @property
    def can_erase(self) -> bool:
        """Whether this cell holds the key-destruction credential."""
        return self._shredder is not None

    def _require_shredder(self) -> KeyShredder:
        if self._shredder is None:
            raise RuntimeError("no key-destruction credential for this region")
        return self._shredder

    # -- retention -------------------------------------------------------------

    def sweep_expired(self, batch: int = 500) -> int:
        """Deletes one batch of records whose retention has ended."""
        return self._store.sweep_expired(self._clock(), batch)

    def count_expired(self) -> int:
        return self._store.count_expired(self._clock())

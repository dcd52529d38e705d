"""The record operations of a cell: put, get, list, delete.

Order in every operation: what the token alone decides (operation, region,
and the subject when the request names it) → the rows (no decryption) → the
subject's token scope when only the row names it → erased? → policy with the
subject's facts (minor, consent, restriction) → only then the data key.
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from vault import audit, ids
from vault.cell._base import CellBase, scoped_idempotency_key
from vault.cell._pagetoken import decode_page_token, encode_page_token
from vault.cell._views import RecordPage, RecordView
from vault.crypto import RecordContext, request_digest, same_digest, seal_fields
from vault.errors import (
    AccessDenied,
    Conflict,
    Erased,
    FieldViolation,
    InvalidArgument,
    Restricted,
)
from vault.policy import Caller, SubjectFacts, filter_fields
from vault.store import DuplicateKey, RecordRow, SubjectRow, SubjectState
from vault.tokens import FieldGrant


class RecordOps(CellBase):
    def _writable(self, caller: Caller) -> tuple[SubjectState, ...]:
        """The subject states in which this caller may write (checked in the
        write statement itself, for inserts and updates alike)."""
        if self._authz.writes_when_restricted(caller):
            return (SubjectState.ACTIVE, SubjectState.RESTRICTED)
        return (SubjectState.ACTIVE,)

    def _record_for(
        self, caller: Caller, operation: str, record_id: str
    ) -> tuple[RecordRow, SubjectRow]:
        """Operation and region from the token, then the row, then its subject."""
        self._authz.scope_operation(caller, operation, self.region.id)
        found = self._store.get_record(record_id)
        if found is not None:
            self._audit(found[1], record_id)
            audit.touched(found[0].category)
        self._authz.scope_record_subject(caller, found[0].subject_id if found else None)
        assert found is not None
        return found

    def put_record(
        self,
        caller: Caller,
        *,
        subject_id: str,
        category: str,
        fields: dict[str, str],
        record_id: str = "",
        expected_version: int = 0,
        idempotency_key: str = "",
    ) -> RecordView:
        self._authz.known_category(category)
        if record_id:
            return self._update_record(
                caller, subject_id, category, fields, record_id, expected_version
            )
        self._authz.scope(caller, "write", self.region.id, subject_id)
        subject = self._subjects.get(subject_id)
        if subject is None:
            subject = self._live_subject(subject_id)
            self._subjects.put(subject_id, subject)
        self._audit(subject)
        audit.touched(category, fields)
        # The state may have changed since the row was read: the facts leave
        # restriction out and the INSERT enforces it (and erasure) itself.
        facts = self._facts(caller, dataclasses.replace(subject, state=SubjectState.ACTIVE))
        allowed = self._authz.fields(caller, category, "write", facts)
        self._authz.check_write_fields(category, fields, allowed)
        rid = ids.new_record_id(self.region.id)
        self._audit(subject, rid)
        self._transfer(caller, "PutRecord", subject_id, rid, [category], write=True)
        payload = [category, fields]
        for retried in (False, True):
            generation = subject.newest_generation
            dek = self._data_key(subject)
            key = digest = None
            if idempotency_key:
                key = scoped_idempotency_key(caller, idempotency_key)
                digest = self._request_digest(subject, payload)
                existing = self._store.record_by_idempotency_key(subject_id, key)
                if existing is not None:
                    return self._replayed_record(caller, subject, *existing, fields, payload)
            now = self._clock()
            ctx = RecordContext(rid, subject_id, self.region.id, category, 1)
            sealed = seal_fields(dek, ctx, fields)
            row = RecordRow(rid, subject_id, category, 1, sealed, now, now, generation)
            try:
                if self._store.insert_record(
                    row,
                    key,
                    self._authz.expiry(caller, category, now),
                    self._writable(caller),
                    request_digest=digest,
                ):
                    return RecordView(rid, subject_id, category, dict(fields), 1, now, now)
            except DuplicateKey:
                existing = self._store.record_by_idempotency_key(subject_id, key) if key else None
                if existing is None or digest is None:
                    raise
                return self._replayed_record(caller, subject, *existing, fields, payload)
            subject = self._write_refused(caller, subject_id, generation, retried)
            self._subjects.put(subject_id, subject)
        raise AssertionError("unreachable")  # the second refusal raises

    def _request_digest(self, subject: SubjectRow, payload: object) -> str:
        """The keyed digest of a write an idempotency key names: keyed under the
        subject's pseudonym key, which a rekey carries over (so a retry that
        spans a rekey is still recognised) and an erasure destroys."""
        return request_digest(self._pseudonym_key(subject), "put-record", payload)

    def _same_request(self, subject: SubjectRow, stored: str | None, payload: object) -> bool:
        """Whether a stored digest is of this request. Digests written before
        they were keyed under the pseudonym key were keyed under the data key
        itself, generation 1: recognised while the subject was never rekeyed
        (after a rekey, such a retry is refused as a reused key)."""
        if same_digest(stored, self._request_digest(subject, payload)):
            return True
        return (
            stored is not None
            and subject.dek_generation == 1
            and same_digest(stored, request_digest(self._dek(subject, 1), "put-record", payload))
        )

    def _write_refused(
        self, caller: Caller, subject_id: str, generation: int, retried: bool
    ) -> SubjectRow:
        """Why a guarded record write wrote nothing. If it was sealed under a
        data-key generation no longer the newest (a rekey started since the
        subject's row was read), the subject's fresh row, to write again once;
        else the refusal. (The data-key cache is by generation: nothing in it
        is stale; the cached subject row is.)"""
        self._subjects.evict(subject_id)
        current = self._live_subject(subject_id)  # raises NotFound / Erased
        if (
            not retried
            and current.state in self._writable(caller)
            and current.newest_generation != generation
        ):
            return current
        self._refused_write(caller, subject_id)

    def import_records(
        self,
        caller: Caller,
        subject_id: str,
        records: list[tuple[str, dict[str, str]]],
        idempotency_key: str,
    ) -> int:
        """Writes a person's imported records in one batch; how many were new.

        Each record is authorised exactly as PutRecord's create, and keyed by
        the person's idempotency key and its position: sent again (a resumed
        import), a record already written is skipped — or, if its content
        differs, the call is refused as a reused key. All or none are written.
        """
        self._authz.scope(caller, "write", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, dataclasses.replace(subject, state=SubjectState.ACTIVE))
        self._check_record_writes(caller, facts, records)
        if not records:
            return 0
        categories = sorted({c for c, _ in records})
        self._transfer(caller, "ImportSubjects", subject_id, None, categories, write=True)
        keys = [
            scoped_idempotency_key(caller, f"{idempotency_key}/{i}") for i in range(len(records))
        ]
        for retried in (False, True):
            generation = subject.newest_generation
            dek = self._data_key(subject)
            done = self._store.record_digests(subject_id, keys)
            now = self._clock()
            batch = []
            for key, (category, fields) in zip(keys, records, strict=True):
                payload = [category, fields]
                if key in done:
                    if not self._same_request(subject, done[key], payload):
                        raise Conflict(
                            "the idempotency key was already used for a different request",
                            reason="IDEMPOTENCY_KEY_REUSED",
                        )
                    continue
                rid = ids.new_record_id(self.region.id)
                ctx = RecordContext(rid, subject_id, self.region.id, category, 1)
                sealed = seal_fields(dek, ctx, fields)
                row = RecordRow(rid, subject_id, category, 1, sealed, now, now, generation)
                digest = self._request_digest(subject, payload)
                batch.append((row, key, self._authz.expiry(caller, category, now), digest))
            if not batch or self._store.insert_records(batch, self._writable(caller)):
                return len(batch)
            subject = self._write_refused(caller, subject_id, generation, retried)
        raise AssertionError("unreachable")  # the second refusal raises

    def check_import(
        self, caller: Caller, minor: bool, records: list[tuple[str, dict[str, str]]]
    ) -> None:
        """Whether the caller may write these records of a new person: checked
        before the person is created, so a refused import creates nothing."""
        self._check_record_writes(caller, SubjectFacts(minor=minor, restricted=False), records)

    def _check_record_writes(
        self, caller: Caller, facts: SubjectFacts, records: list[tuple[str, dict[str, str]]]
    ) -> None:
        for category, fields in records:
            self._authz.known_category(category)
            allowed = self._authz.fields(caller, category, "write", facts)
            self._authz.check_write_fields(category, fields, allowed)

    def _refused_write(self, caller: Caller, subject_id: str) -> NoReturn:
        """Why a guarded write wrote nothing, from the subject's current row."""
        current = self._live_subject(subject_id)  # raises NotFound / Erased
        if current.state == SubjectState.RESTRICTED and current.state not in self._writable(caller):
            raise Restricted(
                f"processing of this subject is restricted; purpose {caller.purpose.name!r} "
                "is not allowed under restriction"
            )
        raise Conflict("the subject changed during the write; retry")

    def _replayed_record(
        self,
        caller: Caller,
        subject: SubjectRow,
        existing: RecordRow,
        stored_digest: str | None,
        fields: dict[str, str],
        payload: object,
    ) -> RecordView:
        """The answer to a retried write: exactly what the first write answered.

        Only the same request (same category and fields, keyed digest under the
        subject's pseudonym key: see :meth:`_request_digest`) is a replay; the
        caller's scope was checked above
        and the subject's *current* state is checked here. Nothing is
        decrypted: the reply holds the fields the caller sent, never the
        record's current content (someone may have updated it since).
        """
        subject_id = subject.id
        if not self._same_request(subject, stored_digest, payload):
            raise Conflict(
                "the idempotency key was already used for a different request",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        current = self._live_subject(subject_id)
        if current.state not in self._writable(caller):
            self._refused_write(caller, subject_id)
        return RecordView(
            existing.id,
            subject_id,
            existing.category,
            dict(fields),
            1,
            existing.created_at,
            existing.created_at,
        )

    def _update_record(
        self,
        caller: Caller,
        subject_id: str,
        category: str,
        fields: dict[str, str],
        record_id: str,
        expected_version: int,
    ) -> RecordView:
        rec, subject = self._record_for(caller, "write", record_id)
        if subject_id and subject_id != rec.subject_id:
            raise InvalidArgument(
                FieldViolation("subject_id", "does not match the subject of the record")
            )
        # The caller's right to the record's own category first: a guessed
        # category gets the same answer whether it is right or wrong.
        allowed = self._authz.fields(caller, rec.category, "write", self._facts(caller, subject))
        if category != rec.category:
            raise InvalidArgument(
                FieldViolation("category", "cannot change; delete and re-create the record")
            )
        self._authz.check_write_fields(category, fields, allowed)
        audit.touched(category, fields)
        if expected_version and expected_version != rec.version:
            raise Conflict("record version does not match expected_version")
        self._transfer(caller, "PutRecord", rec.subject_id, rec.id, [category], write=True)
        sent = fields
        for retried in (False, True):
            generation = subject.newest_generation
            dek = self._data_key(subject)
            if allowed is not None:
                # A caller granted some fields replaces those and keeps the others.
                opened = self._open(subject, rec).fields
                kept = {k: v for k, v in opened.items() if k not in allowed}
                fields = {**kept, **sent}
            version = rec.version + 1
            now = self._clock()
            ctx = RecordContext(rec.id, rec.subject_id, self.region.id, category, version)
            row = RecordRow(
                rec.id,
                rec.subject_id,
                category,
                version,
                seal_fields(dek, ctx, fields),
                rec.created_at,
                now,
                generation,
            )
            if self._store.update_record(
                row, rec.version, self._authz.expiry(caller, category, now), self._writable(caller)
            ):
                return RecordView(
                    rec.id,
                    rec.subject_id,
                    category,
                    filter_fields(fields, allowed),
                    version,
                    rec.created_at,
                    now,
                )
            current = self._store.get_subject(rec.subject_id)
            if current is None or current.state.gone:
                raise Erased("subject has been erased")
            if current.state not in self._writable(caller):
                self._refused_write(caller, rec.subject_id)
            if retried or current.newest_generation == generation:
                raise Conflict("record was changed concurrently")
            # A rekey started since the rows were read: the record again (a
            # rekey keeps its version), sealed under the newest generation.
            self._subjects.evict(rec.subject_id)
            found = self._store.get_record(record_id)
            if found is None or found[0].version != rec.version:
                raise Conflict("record was changed concurrently")
            rec, subject = found
        raise AssertionError("unreachable")  # the second refusal raises

    def get_record(self, caller: Caller, record_id: str) -> RecordView:
        rec, subject = self._record_for(caller, "read", record_id)
        allowed = self._authz.fields(caller, rec.category, "read", self._facts(caller, subject))
        self._transfer(caller, "GetRecord", rec.subject_id, rec.id, [rec.category])
        return self._open_for(subject, rec, allowed)

    def list_records(
        self, caller: Caller, subject_id: str, category: str, page_size: int, page_token: str
    ) -> RecordPage:
        """The subject's records the caller may read; other categories are left out."""
        self._authz.scope(caller, "read", self.region.id, subject_id)
        # Decoded only once the token's scope holds, and bounded.
        after = decode_page_token(page_token, subject_id, category) if page_token else None
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, subject)
        if category:
            audit.touched(category)
            visible = frozenset({category})
            self._authz.fields(caller, category, "read", facts)
        else:
            visible = self._authz.readable_categories(caller)
        grants: dict[str, FieldGrant] = {}
        for c in visible:
            try:
                grants[c] = self._authz.fields(caller, c, "read", facts)
            except AccessDenied as e:
                if e.reason != "FIELD_NOT_GRANTED" or category:
                    raise
        # A listing of every category is about no single one (see TransferRules).
        self._transfer(caller, "ListRecords", subject_id, None, [category or None])
        rows = self._store.list_records(subject_id, frozenset(grants), after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        views = []
        if rows:
            views = [self._open_for(subject, r, grants[r.category]) for r in rows]
        token = encode_page_token(subject_id, category, rows[-1].id) if more else ""
        return RecordPage(views, token)

    def delete_record(self, caller: Caller, record_id: str, expected_version: int = 0) -> None:
        rec, subject = self._record_for(caller, "delete", record_id)
        self._authz.delete_fields(caller, rec.category, self._facts(caller, subject))
        if expected_version and expected_version != rec.version:
            raise Conflict("record version does not match expected_version")
        if not self._store.delete_record(record_id, rec.version):
            raise Conflict("record was changed concurrently")

"""The record operations of a cell: put, get, list, delete.

Order in every operation: what the token alone decides (operation, region,
and the subject when the request names it) → the rows (no decryption) → the
subject's token scope when only the row names it → erased? → policy with the
subject's facts (minor, consent, restriction) → only then the data key.
"""

from __future__ import annotations

import dataclasses
from typing import NoReturn

from vault import ids
from vault.cell._base import CellBase
from vault.cell._pagetoken import decode_page_token, encode_page_token
from vault.cell._views import RecordPage, RecordView
from vault.crypto import RecordContext, seal_fields
from vault.errors import (
    AccessDenied,
    Conflict,
    Erased,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Restricted,
)
from vault.policy import Caller, filter_fields
from vault.store import DuplicateKey, RecordRow, SubjectRow, SubjectState
from vault.tokens import FieldGrant


class RecordOps(CellBase):
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
        # The state may have changed since the row was read: the facts leave
        # restriction out and the INSERT enforces it (and erasure) itself.
        facts = self._facts(caller, dataclasses.replace(subject, state=SubjectState.ACTIVE))
        allowed = self._authz.fields(caller, category, "write", facts)
        self._authz.check_write_fields(category, fields, allowed)
        writable = (
            (SubjectState.ACTIVE, SubjectState.RESTRICTED)
            if self._authz.writes_when_restricted(caller)
            else (SubjectState.ACTIVE,)
        )
        if idempotency_key:
            existing = self._store.record_by_idempotency_key(subject_id, idempotency_key)
            if existing is not None:
                return self._replayed_record(subject, existing, category, allowed)
        dek = self._data_key(subject)
        rid = ids.new_record_id(self.region.id)
        now = self._clock()
        ctx = RecordContext(rid, subject_id, self.region.id, category, 1)
        row = RecordRow(rid, subject_id, category, 1, seal_fields(dek, ctx, fields), now, now)
        try:
            if not self._store.insert_record(
                row, idempotency_key or None, self._authz.expiry(caller, category, now), writable
            ):
                self._subjects.evict(subject_id)
                self._refused_write(caller, subject_id)
        except DuplicateKey:
            existing = self._store.record_by_idempotency_key(subject_id, idempotency_key)
            if existing is None:
                raise
            return self._replayed_record(subject, existing, category, allowed)
        return RecordView(rid, subject_id, category, dict(fields), 1, now, now)

    def _refused_write(self, caller: Caller, subject_id: str) -> NoReturn:
        """Why the guarded INSERT wrote nothing, from the subject's current row."""
        current = self._live_subject(subject_id)  # raises NotFound / Erased
        if current.state == SubjectState.RESTRICTED:
            raise Restricted(
                f"processing of this subject is restricted; purpose {caller.purpose.name!r} "
                "is not allowed under restriction"
            )
        raise Conflict("the subject changed during the write; retry")

    def _replayed_record(
        self, subject: SubjectRow, existing: RecordRow, category: str, allowed: FieldGrant
    ) -> RecordView:
        if existing.category != category:
            raise InvalidArgument(
                FieldViolation("idempotency_key", "was already used for a different request")
            )
        return self._open_for(self._data_key(subject), existing, allowed)

    def _update_record(
        self,
        caller: Caller,
        subject_id: str,
        category: str,
        fields: dict[str, str],
        record_id: str,
        expected_version: int,
    ) -> RecordView:
        self._authz.scope_operation(caller, "write", self.region.id)
        found = self._store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self._authz.scope_subject(caller, rec.subject_id)
        if subject_id and subject_id != rec.subject_id:
            raise InvalidArgument(
                FieldViolation("subject_id", "does not match the subject of the record")
            )
        if category != rec.category:
            raise InvalidArgument(
                FieldViolation("category", "cannot change; delete and re-create the record")
            )
        allowed = self._authz.fields(caller, category, "write", self._facts(caller, subject))
        self._authz.check_write_fields(category, fields, allowed)
        if expected_version and expected_version != rec.version:
            raise Conflict("record version does not match expected_version")
        dek = self._data_key(subject)
        if allowed is not None:
            # A caller granted some fields replaces those and keeps the others.
            kept = {k: v for k, v in self._open(dek, rec).fields.items() if k not in allowed}
            fields = {**kept, **fields}
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
        )
        if not self._store.update_record(
            row, rec.version, self._authz.expiry(caller, category, now)
        ):
            current = self._store.get_subject(rec.subject_id)
            if current is None or current.state.gone:
                raise Erased("subject has been erased")
            raise Conflict("record was changed concurrently")
        return RecordView(
            rec.id,
            rec.subject_id,
            category,
            filter_fields(fields, allowed),
            version,
            rec.created_at,
            now,
        )

    def get_record(self, caller: Caller, record_id: str) -> RecordView:
        self._authz.scope_operation(caller, "read", self.region.id)
        found = self._store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self._authz.scope_subject(caller, rec.subject_id)
        allowed = self._authz.fields(caller, rec.category, "read", self._facts(caller, subject))
        return self._open_for(self._data_key(subject), rec, allowed)

    def list_records(
        self, caller: Caller, subject_id: str, category: str, page_size: int, page_token: str
    ) -> RecordPage:
        """The subject's records the caller may read; other categories are left out."""
        after = decode_page_token(page_token, subject_id, category) if page_token else None
        self._authz.scope(caller, "read", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, subject)
        if category:
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
        rows = self._store.list_records(subject_id, frozenset(grants), after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        views = []
        if rows:
            dek = self._data_key(subject)
            views = [self._open_for(dek, r, grants[r.category]) for r in rows]
        token = encode_page_token(subject_id, category, rows[-1].id) if more else ""
        return RecordPage(views, token)

    def delete_record(self, caller: Caller, record_id: str, expected_version: int = 0) -> None:
        self._authz.scope_operation(caller, "delete", self.region.id)
        found = self._store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self._authz.scope_subject(caller, rec.subject_id)
        self._authz.delete_fields(caller, rec.category, self._facts(caller, subject))
        if expected_version and expected_version != rec.version:
            raise Conflict("record version does not match expected_version")
        if not self._store.delete_record(record_id, rec.version):
            raise Conflict("record was changed concurrently")

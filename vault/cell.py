"""One region's data plane: its store, its key service and the record operations.

Domain code: knows nothing of gRPC. Every operation checks the subject's state
in the cell database *before* any data key is used, so an erasure recorded
there is effective at once, whatever the in-process key cache still holds.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from vault import ids
from vault._inline import ensure_may_block
from vault.config import CacheSettings, Limits, RegionConfig
from vault.crypto import RecordContext, dek_associated_data, new_data_key, open_fields, seal_fields
from vault.errors import (
    AccessDenied,
    Conflict,
    Erased,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Restricted,
)
from vault.keys import BoundedCache, DataKeyCache, KeyProvider, KeyRef
from vault.lookup import BlindIndex, normalise
from vault.policy import Authorizer, Caller, SubjectFacts, filter_fields
from vault.store import CellStore, DuplicateKey, RecordRow, SubjectRow
from vault.tokens import FieldGrant

STATE_ACTIVE = "active"
STATE_RESTRICTED = "restricted"
STATE_ERASED = "erased"
STATE_ERASURE_PENDING = "erasure_pending"
#: States in which nothing of the subject is readable by anyone.
GONE_STATES = frozenset({STATE_ERASED, STATE_ERASURE_PENDING})


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject_id: str
    region: str
    state: str
    minor: bool
    created_at_us: int


@dataclass(frozen=True, slots=True)
class RecordView:
    record_id: str
    subject_id: str
    category: str
    fields: dict[str, str]
    version: int
    created_at_us: int
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class ConsentView:
    subject_id: str
    purpose: str
    granted: bool
    source: str
    updated_at_us: int


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[RecordView]
    next_page_token: str


def key_name_for(subject_id: str) -> str:
    """The Transit key name of a subject: derived from the id, nothing else."""
    return f"subject-{subject_id}"


def _subject_view(row: SubjectRow) -> SubjectView:
    return SubjectView(row.id, row.region, row.state, row.minor, row.created_at)


def _encode_page_token(subject_id: str, category: str, after: str) -> str:
    raw = json.dumps({"v": 1, "s": subject_id, "c": category, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_page_token(token: str, subject_id: str, category: str) -> str:
    bad = InvalidArgument(FieldViolation("page_token", "is not a token from this listing"))
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise bad from None
    if (
        not isinstance(data, dict)
        or data.get("v") != 1
        or data.get("s") != subject_id
        or data.get("c") != category
        or not isinstance(data.get("a"), str)
    ):
        raise bad
    return str(data["a"])


class Cell:
    """The record operations of one region, each on behalf of an authenticated caller.

    Order in every operation: token scope (operation, region, subject) → the
    rows (no decryption) → erased? → policy with the subject's facts (minor,
    consent, restriction) → only then the data key.
    """

    def __init__(
        self,
        region: RegionConfig,
        store: CellStore,
        keys: KeyProvider,
        cache: DataKeyCache,
        limits: Limits,
        authz: Authorizer,
        clock: Callable[[], int] = _now_us,
        subject_cache: BoundedCache[SubjectRow] | None = None,
    ) -> None:
        self.region = region
        self.authz = authz
        # Subject rows as last read, for writes only: their mutable part (state)
        # is never trusted from here but enforced by the INSERT itself.
        self._subjects: BoundedCache[SubjectRow] = subject_cache or BoundedCache(CacheSettings())
        self.store = store
        self.keys = keys
        self.cache = cache
        self.limits = limits
        self._clock = clock
        # A local SQLite file answers in microseconds: calls may run inline.
        self.local_store = store.engine.url.get_backend_name() == "sqlite"
        self.index = BlindIndex(store, keys, region.transit_mounts[0])

    def forget(self, subject_id: str) -> None:
        """Drops what this node caches about a subject (its data key, its row)."""
        self.cache.evict(subject_id)
        self._subjects.evict(subject_id)

    # -- keys -------------------------------------------------------------

    def _key_ref(self, row: SubjectRow) -> KeyRef:
        return KeyRef(row.key_mount, row.key_name)

    def _mount_for(self, subject_id: str) -> str:
        mounts = self.region.transit_mounts
        digest = hashlib.sha256(subject_id.encode()).digest()
        return mounts[int.from_bytes(digest[:8], "big") % len(mounts)]

    def _data_key(self, row: SubjectRow) -> bytes:
        if row.state in GONE_STATES:
            raise Erased("subject has been erased")
        dek = self.cache.get(row.id)
        if dek is None:
            ensure_may_block()
            dek = self.keys.unwrap(
                self._key_ref(row), row.wrapped_dek, dek_associated_data(row.id, row.region)
            )
            self.cache.put(row.id, dek)
        return dek

    def _open(self, dek: bytes, rec: RecordRow) -> RecordView:
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

    def _facts(self, caller: Caller, row: SubjectRow) -> SubjectFacts:
        if row.state in GONE_STATES:
            raise Erased("subject has been erased")
        consented: frozenset[str] = frozenset()
        # Only consent-based purposes pay for the consent lookup.
        if caller.purpose.requires_consent and self.store.consent_granted(
            row.id, caller.purpose.name
        ):
            consented = frozenset({caller.purpose.name})
        return SubjectFacts(
            minor=row.minor, restricted=row.state == STATE_RESTRICTED, consented_purposes=consented
        )

    def _open_for(self, dek: bytes, rec: RecordRow, allowed: FieldGrant) -> RecordView:
        v = self._open(dek, rec)
        if allowed is None:
            return v
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

    def create_subject(
        self, caller: Caller, *, minor: bool, idempotency_key: str = ""
    ) -> SubjectView:
        self.authz.scope(caller, "write", self.region.id, None)
        if idempotency_key:
            existing = self.store.subject_by_idempotency_key(idempotency_key)
            if existing is not None:
                return self._replayed_subject(existing, minor)
        ensure_may_block()
        sid = ids.new_subject_id(self.region.id)
        ref = KeyRef(self._mount_for(sid), key_name_for(sid))
        # Key first, then the row: if the key service is down nothing is written.
        # A key whose row insert then fails guards no data and is harmless.
        self.keys.create_key(ref)
        dek = new_data_key()
        wrapped = self.keys.wrap(ref, dek, dek_associated_data(sid, self.region.id))
        now = self._clock()
        row = SubjectRow(
            sid, self.region.id, STATE_ACTIVE, minor, ref.mount, ref.name, wrapped, now, now
        )
        try:
            self.store.insert_subject(row, idempotency_key or None)
        except DuplicateKey:
            existing = self.store.subject_by_idempotency_key(idempotency_key)
            if existing is None:
                raise
            return self._replayed_subject(existing, minor)
        self.cache.put(sid, dek)
        return _subject_view(row)

    def _replayed_subject(self, existing: SubjectRow, minor: bool) -> SubjectView:
        if existing.minor != minor:
            raise InvalidArgument(
                FieldViolation("idempotency_key", "was already used for a different request")
            )
        return _subject_view(existing)

    def get_subject(self, caller: Caller, subject_id: str) -> SubjectView:
        self.authz.scope(caller, "read", self.region.id, subject_id)
        row = self.store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        if row.state not in GONE_STATES:
            self.authz.subject_visible(caller, self._facts(caller, row))
        return _subject_view(row)

    def _live_subject(self, subject_id: str) -> SubjectRow:
        row = self.store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        if row.state in GONE_STATES:
            raise Erased("subject has been erased")
        return row

    # -- records ----------------------------------------------------------

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
        self.authz.known_category(category)
        if record_id:
            return self._update_record(
                caller, subject_id, category, fields, record_id, expected_version
            )
        self.authz.scope(caller, "write", self.region.id, subject_id)
        subject = self._subjects.get(subject_id)
        if subject is None:
            subject = self._live_subject(subject_id)
            self._subjects.put(subject_id, subject)
        # The state may have changed since the row was read: the facts leave
        # restriction out and the INSERT enforces it (and erasure) itself.
        facts = self._facts(caller, dataclasses.replace(subject, state=STATE_ACTIVE))
        allowed = self.authz.fields(caller, category, "write", facts)
        self.authz.check_write_fields(category, fields, allowed)
        writable = (
            (STATE_ACTIVE, STATE_RESTRICTED)
            if self.authz.writes_when_restricted(caller)
            else (STATE_ACTIVE,)
        )
        if idempotency_key:
            existing = self.store.record_by_idempotency_key(subject_id, idempotency_key)
            if existing is not None:
                return self._replayed_record(subject, existing, category, allowed)
        dek = self._data_key(subject)
        rid = ids.new_record_id(self.region.id)
        now = self._clock()
        ctx = RecordContext(rid, subject_id, self.region.id, category, 1)
        row = RecordRow(rid, subject_id, category, 1, seal_fields(dek, ctx, fields), now, now)
        try:
            if not self.store.insert_record(
                row, idempotency_key or None, self.authz.expiry(caller, category, now), writable
            ):
                self._subjects.evict(subject_id)
                self._refused_write(caller, subject_id)
        except DuplicateKey:
            existing = self.store.record_by_idempotency_key(subject_id, idempotency_key)
            if existing is None:
                raise
            return self._replayed_record(subject, existing, category, allowed)
        return RecordView(rid, subject_id, category, dict(fields), 1, now, now)

    def _refused_write(self, caller: Caller, subject_id: str) -> NoReturn:
        """Why the guarded INSERT wrote nothing, from the subject's current row."""
        current = self._live_subject(subject_id)  # raises NotFound / Erased
        if current.state == STATE_RESTRICTED:
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
        found = self.store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self.authz.scope(caller, "write", self.region.id, rec.subject_id)
        if subject_id and subject_id != rec.subject_id:
            raise InvalidArgument(
                FieldViolation("subject_id", "does not match the subject of the record")
            )
        if category != rec.category:
            raise InvalidArgument(
                FieldViolation("category", "cannot change; delete and re-create the record")
            )
        allowed = self.authz.fields(caller, category, "write", self._facts(caller, subject))
        self.authz.check_write_fields(category, fields, allowed)
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
        if not self.store.update_record(row, rec.version, self.authz.expiry(caller, category, now)):
            current = self.store.get_subject(rec.subject_id)
            if current is None or current.state in GONE_STATES:
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
        found = self.store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self.authz.scope(caller, "read", self.region.id, rec.subject_id)
        allowed = self.authz.fields(caller, rec.category, "read", self._facts(caller, subject))
        return self._open_for(self._data_key(subject), rec, allowed)

    def list_records(
        self, caller: Caller, subject_id: str, category: str, page_size: int, page_token: str
    ) -> RecordPage:
        """The subject's records the caller may read; other categories are left out."""
        after = _decode_page_token(page_token, subject_id, category) if page_token else None
        self.authz.scope(caller, "read", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, subject)
        if category:
            visible = frozenset({category})
            self.authz.fields(caller, category, "read", facts)
        else:
            visible = self.authz.readable_categories(caller)
        grants: dict[str, FieldGrant] = {}
        for c in visible:
            try:
                grants[c] = self.authz.fields(caller, c, "read", facts)
            except AccessDenied as e:
                if e.reason != "FIELD_NOT_GRANTED" or category:
                    raise
        rows = self.store.list_records(subject_id, frozenset(grants), after, page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        views = []
        if rows:
            dek = self._data_key(subject)
            views = [self._open_for(dek, r, grants[r.category]) for r in rows]
        token = _encode_page_token(subject_id, category, rows[-1].id) if more else ""
        return RecordPage(views, token)

    def delete_record(self, caller: Caller, record_id: str, expected_version: int = 0) -> None:
        found = self.store.get_record(record_id)
        if found is None:
            raise NotFound("record not found")
        rec, subject = found
        self.authz.scope(caller, "delete", self.region.id, rec.subject_id)
        self.authz.delete_fields(caller, rec.category, self._facts(caller, subject))
        if expected_version and expected_version != rec.version:
            raise Conflict("record version does not match expected_version")
        if not self.store.delete_record(record_id, rec.version):
            raise Conflict("record was changed concurrently")

    # -- consent and restriction -------------------------------------------

    def set_consent(
        self, caller: Caller, subject_id: str, purpose: str, granted: bool, source: str
    ) -> ConsentView:
        self.authz.scope(caller, "consent", self.region.id, subject_id)
        self.authz.known_purpose(purpose)
        self._live_subject(subject_id)
        now = self._clock()
        self.store.set_consent(subject_id, purpose, granted, source, now)
        return ConsentView(subject_id, purpose, granted, source, now)

    def list_consents(self, caller: Caller, subject_id: str) -> list[ConsentView]:
        self.authz.scope(caller, "consent", self.region.id, subject_id)
        self._live_subject(subject_id)
        return [
            ConsentView(subject_id, p, g, s, at)
            for p, g, s, at in self.store.list_consents(subject_id)
        ]

    def restrict_processing(self, caller: Caller, subject_id: str, restricted: bool) -> SubjectView:
        """Restriction is a processing choice of the subject: the ``consent`` operation."""
        self.authz.scope(caller, "consent", self.region.id, subject_id)
        self._live_subject(subject_id)
        state = STATE_RESTRICTED if restricted else STATE_ACTIVE
        if not self.store.set_state(subject_id, state, self._clock()):
            raise Erased("subject has been erased")
        row = self.store.get_subject(subject_id)
        if row is None:
            raise NotFound("subject not found")
        return _subject_view(row)

    # -- portability ---------------------------------------------------------

    def export_subject(
        self, caller: Caller, subject_id: str, page_size: int = 200
    ) -> Iterator[bytes]:
        """The subject's data as one JSON document, in pieces (GDPR Art. 20).

        Checks happen before the first piece: a denied export yields nothing.
        Records of categories the caller may not export are left out and
        counted in ``omitted_records``.
        """
        self.authz.scope(caller, "export", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        facts = self._facts(caller, subject)
        self.authz.subject_visible(caller, facts)
        grants: dict[str, FieldGrant] = {}
        for c in self.authz.readable_categories(caller):
            try:
                grants[c] = self.authz.fields(caller, c, "export", facts)
            except AccessDenied as e:
                if e.reason != "FIELD_NOT_GRANTED":
                    raise
        consents = self.store.list_consents(subject_id)
        dek = self._data_key(subject)
        return self._export_pieces(subject, grants, consents, dek, page_size)

    def _export_pieces(
        self,
        subject: SubjectRow,
        grants: dict[str, FieldGrant],
        consents: list[tuple[str, bool, str, int]],
        dek: bytes,
        page_size: int,
    ) -> Iterator[bytes]:
        head = {
            "format": "pdvault.export",
            "version": 1,
            "exported_at_us": self._clock(),
            "subject": {
                "subject_id": subject.id,
                "region": subject.region,
                "state": subject.state,
                "minor": subject.minor,
                "created_at_us": subject.created_at,
            },
            "consents": [
                {"purpose": p, "granted": g, "source": src, "updated_at_us": at}
                for p, g, src, at in consents
            ],
        }
        text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))
        yield (text[:-1] + ',"records":[').encode()
        after: str | None = None
        first = True
        omitted = 0
        while True:
            rows = self.store.list_records(subject.id, None, after, page_size)
            if not rows:
                break
            after = rows[-1].id
            parts = []
            for r in rows:
                if r.category not in grants:
                    omitted += 1
                    continue
                v = self._open_for(dek, r, grants[r.category])
                rec = {
                    "record_id": v.record_id,
                    "category": v.category,
                    "fields": v.fields,
                    "version": v.version,
                    "created_at_us": v.created_at_us,
                    "updated_at_us": v.updated_at_us,
                }
                parts.append(("" if first else ",") + json.dumps(rec, ensure_ascii=False))
                first = False
            if parts:
                yield "".join(parts).encode()
        yield f'],"omitted_records":{omitted}}}'.encode()

    # -- lookups and retention -------------------------------------------------

    def set_lookups(self, caller: Caller, subject_id: str, entries: list[tuple[str, str]]) -> int:
        self.authz.scope(caller, "write", self.region.id, subject_id)
        subject = self._live_subject(subject_id)
        self.authz.subject_visible(caller, self._facts(caller, subject))
        normalised = [
            (kind, normalise(kind, value, f"lookups[{i}]"))
            for i, (kind, value) in enumerate(entries)
        ]
        digests = [(kind, self.index.digest(kind, v)) for kind, v in normalised]
        return self.store.add_lookups(subject_id, digests)

    def find_subjects(self, caller: Caller, kind: str, value: str) -> list[str]:
        """Subjects of this cell with the lookup value, as far as the token reaches."""
        self.authz.scope_search(caller, self.region.id)
        found = self.store.find_lookup(kind, self.index.digest(kind, normalise(kind, value)))
        return [sid for sid in found if caller.claims.allows_subject(sid)]

    def sweep_expired(self, batch: int = 500) -> int:
        """Deletes one batch of records whose retention has ended."""
        return self.store.sweep_expired(self._clock(), batch)

"""Repository of one cell's database (SQLAlchemy Core on the hot path)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NoReturn

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from vault.db import DuplicateKey, ping, transaction
from vault.errors import Conflict, StoreUnavailable, TooLarge
from vault.store._models import (
    cell_keys,
    consents,
    index_keys,
    lookup_values,
    records,
    subject_pool,
    subjects,
    transfers,
)
from vault.store._models import lookups as lookups_t
from vault.store._pool import claim as claim_pool_entry


def wrap_key_version(wrapped: str) -> int:
    """The key version in a Transit wrap (``vault:v3:…`` → 3); 1 for anything
    else (a wrap without a version prefix was made by the first version)."""
    prefix, _, rest = wrapped.partition(":")
    version = rest.partition(":")[0]
    if prefix == "vault" and version[:1] == "v" and version[1:].isdigit():
        return int(version[1:])
    return 1


class IndexVersionsChanged(Exception):
    """The active index key versions are not those the digests were made
    under (a re-index started or ended meanwhile): nothing was written;
    compute the digests again."""


@dataclass(frozen=True, slots=True)
class SealedLookup:
    """A lookup value sealed under its subject's data key (vault.crypto.seal_lookup_value)
    of ``generation`` (see records)."""

    value_id: str
    kind: str
    sealed: bytes
    generation: int = 1


@dataclass(frozen=True, slots=True)
class LookupWrite:
    """Lookup entries to store for one subject: their digests under each
    active index key version (``versions``) as (kind, digest, version), and
    the values sealed under the subject's data key."""

    versions: tuple[int, ...]
    digests: tuple[tuple[str, str, int], ...]
    sealed: tuple[SealedLookup, ...] = ()


@dataclass(frozen=True, slots=True)
class IndexVersion:
    version: int
    state: str
    created_at: int
    retired_at: int | None


class SubjectState(StrEnum):
    """A subject's state: the one vocabulary of the vault (stored as its value)."""

    ACTIVE = "active"
    RESTRICTED = "restricted"
    ERASURE_PENDING = "erasure_pending"
    ERASED = "erased"

    @property
    def gone(self) -> bool:
        """Nothing of the subject is readable by anyone."""
        return self in GONE_STATES


#: States in which nothing of the subject is readable by anyone.
GONE_STATES = frozenset({SubjectState.ERASED, SubjectState.ERASURE_PENDING})
#: States in which records may be written (restricted only for the purposes the
#: policy allows under restriction).
LIVE_STATES = (SubjectState.ACTIVE, SubjectState.RESTRICTED)


@dataclass(frozen=True, slots=True)
class SubjectRow:
    id: str
    region: str
    state: SubjectState
    minor: bool
    key_mount: str
    key_name: str
    wrapped_dek: str
    created_at: int
    updated_at: int
    #: The generation of the data key in ``wrapped_dek``; while a rekey runs,
    #: ``wrapped_dek_next`` holds generation ``dek_generation + 1``.
    dek_generation: int = 1
    wrapped_dek_next: str | None = None
    #: The audit pseudonym key sealed under the current data key (after a rekey).
    pseudonym_seal: bytes | None = None

    @property
    def newest_generation(self) -> int:
        """The generation writes encrypt under: the next one while a rekey runs."""
        return self.dek_generation + (1 if self.wrapped_dek_next else 0)

    def wrap_of(self, generation: int) -> str | None:
        """The wrapped data key of ``generation``, if this row holds it."""
        if generation == self.dek_generation:
            return self.wrapped_dek or None
        if generation == self.dek_generation + 1:
            return self.wrapped_dek_next
        return None

    #: The subject key is a derived Transit key (its wrap bound by context);
    #: False: a legacy key, its wrap bound by associated data.
    key_derived: bool = False


@dataclass(frozen=True, slots=True)
class RecordRow:
    id: str
    subject_id: str
    category: str
    version: int
    envelope: bytes
    created_at: int
    updated_at: int
    #: The generation of the subject's data key the envelope is sealed under.
    dek_generation: int = 1


_SUBJECT_COLS = (
    subjects.c.id,
    subjects.c.region,
    subjects.c.state,
    subjects.c.minor,
    subjects.c.key_mount,
    subjects.c.key_name,
    subjects.c.wrapped_dek,
    subjects.c.created_at,
    subjects.c.updated_at,
    subjects.c.dek_generation,
    subjects.c.wrapped_dek_next,
    subjects.c.pseudonym_seal,
    subjects.c.key_derived,
)
_RECORD_COLS = (
    records.c.id,
    records.c.subject_id,
    records.c.category,
    records.c.version,
    records.c.envelope,
    records.c.created_at,
    records.c.updated_at,
    records.c.dek_generation,
)


# Statements are built once: SQLAlchemy then reuses their compiled form, and
# the hot path pays only for binding parameters.
_GET_SUBJECT = select(*_SUBJECT_COLS).where(subjects.c.id == bindparam("sid"))
_GET_RECORD = (
    select(*_RECORD_COLS, *_SUBJECT_COLS)
    .join_from(records, subjects, records.c.subject_id == subjects.c.id)
    .where(records.c.id == bindparam("rid"))
)
_N_RECORD_COLS = len(_RECORD_COLS)
_INSERT_SUBJECT = insert(subjects)


def _subject_row(r: Sequence[Any]) -> SubjectRow:
    return SubjectRow(
        r[0],
        r[1],
        SubjectState(r[2]),
        bool(r[3]),
        r[4],
        r[5],
        r[6],
        int(r[7]),
        int(r[8]),
        int(r[9]),
        r[10],
        None if r[11] is None else bytes(r[11]),
        bool(r[12]),
    )


def _record_row(r: Sequence[Any]) -> RecordRow:
    return RecordRow(r[0], r[1], r[2], int(r[3]), bytes(r[4]), int(r[5]), int(r[6]), int(r[7]))


# A record is written only while its subject is live, checked in the same
# statement: an erasure that lands between a request's checks and its write
# cannot leave a row behind. Built once, executed with a parameter dict.
#
# Under READ COMMITTED (PostgreSQL) a check alone reads the last committed
# state, blind to an erasure in flight; so writes also take a share lock on
# the subject's row (FOR SHARE; SQLite, whose writers are serialised, ignores
# it) and the erasure updates that row first, before it deletes anything. The
# two then run one after the other: either the write commits first and the
# erasure deletes what it wrote, or the write waits and finds the subject erased.
_LIVE_WHERE = and_(
    subjects.c.id == bindparam("live_subject"),
    subjects.c.state.in_(bindparam("live_states", expanding=True)),
)
_SUBJECT_LIVE = (
    select(subjects.c.id)
    .where(
        and_(
            subjects.c.id == bindparam("live_subject"),
            subjects.c.state.in_(bindparam("live_states", expanding=True)),
        )
    )
    .exists()
)
#: The generation a record written now must be sealed under: the next one
#: while a rekey runs (``wrapped_dek_next`` set), else the current one.
NEWEST_GENERATION = subjects.c.dek_generation + case(
    (subjects.c.wrapped_dek_next.is_(None), 0), else_=1
)
# A record write also checks, in its statement, that the generation it was
# sealed under is still the newest: a rekey that started meanwhile (whose
# start updates the subject's row, so it waits for the writes holding it
# FOR SHARE, and they for it) makes the write a no-op, retried by the cell.
_LIVE_AT_GENERATION = and_(_LIVE_WHERE, bindparam("newest_gen") == NEWEST_GENERATION)
_SUBJECT_LIVE_AT_GENERATION = select(subjects.c.id).where(_LIVE_AT_GENERATION).exists()
_INSERT_COLS = (
    "id",
    "subject_id",
    "category",
    "version",
    "envelope",
    "idempotency_key",
    "created_at",
    "updated_at",
    "expires_at",
    "request_digest",
    "dek_generation",
)


def _insert_while_live(table: Table, cols: tuple[str, ...], where: Any = _LIVE_WHERE) -> Insert:
    """INSERT of one row of bound ``cols`` that happens only while the subject
    is live, share-locking its row (see _LIVE_WHERE); rowcount 1 or 0."""
    return (
        insert(table)
        .from_select(
            list(cols),
            select(*(bindparam(c, type_=table.c[c].type) for c in cols))
            .select_from(subjects)
            .where(where)
            .with_for_update(read=True),
        )
        # SQLAlchemy keeps an INSERT's rowcount only when asked to.
        .execution_options(preserve_rowcount=True)
    )


_INSERT_RECORD = _insert_while_live(records, _INSERT_COLS, _LIVE_AT_GENERATION)
_INSERT_LOOKUP = _insert_while_live(lookups_t, ("kind", "digest", "subject_id", "key_version"))
#: A sealed lookup value is stored only while its data key's generation is the
#: subject's newest, like a record (a rekey may have started meanwhile).
_INSERT_LOOKUP_VALUE = _insert_while_live(
    lookup_values,
    ("subject_id", "value_id", "kind", "sealed", "dek_generation"),
    _LIVE_AT_GENERATION,
)
_SUBJECT_LOOKUPS = select(lookups_t.c.kind, lookups_t.c.digest, lookups_t.c.key_version).where(
    lookups_t.c.subject_id == bindparam("sid")
)
_SUBJECT_VALUE_IDS = select(lookup_values.c.value_id).where(
    lookup_values.c.subject_id == bindparam("sid")
)
_ACTIVE_INDEX_VERSIONS = select(index_keys.c.version).where(index_keys.c.state == "active")
_SUBJECT_LIVE_ROW = select(subjects.c.id).where(_LIVE_WHERE)
#: The subject's row, share-locked while it is live (see _LIVE_WHERE).
_LOCK_LIVE_SUBJECT = _SUBJECT_LIVE_ROW.with_for_update(read=True)
_INSERT_CONSENT = _insert_while_live(
    consents, ("subject_id", "purpose", "granted", "source", "updated_at")
)
_UPDATE_RECORD = (
    update(records)
    .where(
        and_(
            records.c.id == bindparam("rid"),
            records.c.version == bindparam("prev"),
            _SUBJECT_LIVE_AT_GENERATION,
        )
    )
    .values(
        version=bindparam("new_version"),
        envelope=bindparam("new_envelope"),
        dek_generation=bindparam("newest_gen"),
        updated_at=bindparam("new_updated_at"),
        expires_at=bindparam("new_expires_at"),
    )
)


class DataKeyChanged(Conflict):
    """A value sealed under a data-key generation that is no longer the
    subject's newest (a rekey started or ended meanwhile): nothing was written."""


#: A sealed lookup value's columns, read back by :func:`sealed_lookup`.
SEALED_LOOKUP_COLS = (
    lookup_values.c.value_id,
    lookup_values.c.kind,
    lookup_values.c.sealed,
    lookup_values.c.dek_generation,
)


def sealed_lookup(r: Any) -> SealedLookup:
    return SealedLookup(str(r[0]), str(r[1]), bytes(r[2]), int(r[3]))


class _NotLive(Exception):
    """Rolls a write back: its subject was not in a writable state."""


class CellStore:
    """All reads and writes of one cell. Database failures become StoreUnavailable."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._local = threading.local()
        #: A local SQLite file: answers in microseconds, so calls may run inline.
        self.local = engine.url.get_backend_name() == "sqlite"
        # Per-thread read connections only for a local SQLite file: cheap to
        # hold, and the pool is sized for them (vault.store.make_engine).
        self._sticky_reads = self.local
        # Row locks before a guarded write where writers run concurrently. Not
        # on SQLite: its writers are serialised, and a read before a write
        # would only risk a stale-snapshot failure.
        self._row_locks = not self.local

    def close(self) -> None:
        """Closes every pooled connection (the node is stopping)."""
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the database answers a query now (the health probe)."""
        return ping(self.engine)

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "cell")

    def _lock_live(self, conn: Connection, live_params: dict[str, Any]) -> bool:
        """Share-locks the subject's row for the rest of the transaction if it
        is in one of the states; False if it is not (nothing locked)."""
        if not self._row_locks:
            return True
        return conn.execute(_LOCK_LIVE_SUBJECT, live_params).first() is not None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """This thread's connection for reads.

        Reads are most of the traffic; keeping one connection per thread saves
        a pool checkout and checkin per request. Each read ends its implicit
        transaction at once, so no snapshot is held between requests.
        """
        if not self._sticky_reads:
            try:
                with self.engine.connect() as c:
                    yield c
            except (DBAPIError, SATimeoutError) as e:
                raise StoreUnavailable("cell database unavailable") from e
            return
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            try:
                conn = self.engine.connect()
            except (DBAPIError, SATimeoutError) as e:
                raise StoreUnavailable("cell database unavailable") from e
            self._local.conn = conn
        try:
            yield conn
        except DBAPIError as e:
            self._local.conn = None
            conn.invalidate()
            raise StoreUnavailable("cell database unavailable") from e
        finally:
            if not conn.invalidated and conn.in_transaction():
                conn.rollback()

    # -- subjects ---------------------------------------------------------

    def insert_subject(
        self,
        row: SubjectRow,
        idempotency_key: str | None,
        request_digest: str | None = None,
        lookups: LookupWrite | None = None,
    ) -> None:
        """Inserts a subject and its lookup entries in one transaction; raises
        IndexVersionsChanged (nothing written) if the lookups' digests are not
        made under the active index key versions."""
        with self._tx() as conn:
            self._insert_subject(conn, row, idempotency_key, request_digest, lookups)
            self._check_index_versions(conn, lookups)

    def insert_pooled_subject(
        self,
        region: str,
        minor: bool,
        now: int,
        idempotency_key: str | None,
        request_digest: str | None = None,
        lookups: LookupWrite | None = None,
        seal: Callable[[SubjectRow], tuple[SealedLookup, ...]] | None = None,
    ) -> SubjectRow | None:
        """Claims one pool entry and inserts the subject it was minted for, with
        its lookup entries, in one transaction; None when the pool is empty.
        ``seal(row)`` gives the lookup values sealed under the claimed entry's
        data key (called inside the transaction; it may ask the key service).

        If the insert fails (the idempotency key was used meanwhile, or
        IndexVersionsChanged), the transaction rolls back and the entry stays
        in the pool, unclaimed.
        """
        with self._tx() as conn:
            entry = claim_pool_entry(conn)
            if entry is None:
                return None
            row = SubjectRow(
                entry.id,
                region,
                SubjectState.ACTIVE,
                minor,
                entry.key_mount,
                entry.key_name,
                entry.wrapped_dek,
                now,
                now,
                key_derived=entry.key_derived,
            )
            if lookups is not None and seal is not None:
                lookups = LookupWrite(lookups.versions, lookups.digests, seal(row))
            self._insert_subject(conn, row, idempotency_key, request_digest, lookups)
            self._check_index_versions(conn, lookups)
        return row

    def _check_index_versions(self, conn: Connection, lookups: LookupWrite | None) -> None:
        """Raises IndexVersionsChanged (the transaction rolls back) unless
        ``lookups`` was made under exactly the active index key versions.
        Called after the transaction's first write: on SQLite the transaction
        then holds the write lock, so the versions cannot change before the
        commit; on PostgreSQL the versions' rows are share-locked to the end of
        the transaction, so a re-index retiring one waits for the commit (and
        a write reaching here after a retirement waits for it, then sees it)."""
        if lookups is None or not lookups.digests:
            return
        q = _ACTIVE_INDEX_VERSIONS.with_for_update(read=True) if self._row_locks else None
        active = sorted(
            int(r[0]) for r in conn.execute(q if q is not None else _ACTIVE_INDEX_VERSIONS)
        )
        if active != sorted(lookups.versions):
            raise IndexVersionsChanged()

    @staticmethod
    def _insert_subject(
        conn: Connection,
        row: SubjectRow,
        idempotency_key: str | None,
        request_digest: str | None,
        lookups: LookupWrite | None,
    ) -> None:
        conn.execute(
            _INSERT_SUBJECT,
            {
                "id": row.id,
                "region": row.region,
                "state": str(row.state),
                "minor": row.minor,
                "key_mount": row.key_mount,
                "key_name": row.key_name,
                "key_derived": row.key_derived,
                "wrapped_dek": row.wrapped_dek,
                "key_version": wrap_key_version(row.wrapped_dek),
                "idempotency_key": idempotency_key,
                "request_digest": request_digest,
                "created_at": row.created_at,
                "updated_at": row.updated_at,
            },
        )
        if lookups and lookups.digests:
            conn.execute(
                insert(lookups_t),
                [
                    {"kind": k, "digest": d, "subject_id": row.id, "key_version": v}
                    for k, d, v in sorted(set(lookups.digests))
                ],
            )
        if lookups and lookups.sealed:
            conn.execute(
                insert(lookup_values),
                [
                    {
                        "subject_id": row.id,
                        "value_id": x.value_id,
                        "kind": x.kind,
                        "sealed": x.sealed,
                        "dek_generation": x.generation,
                    }
                    for x in {x.value_id: x for x in lookups.sealed}.values()
                ],
            )

    def pooled(self, subject_id: str) -> bool:
        """Whether the id is an unclaimed entry of the subject-key pool (its key
        exists ahead of its subject row, on purpose)."""
        with self._read() as conn:
            found = conn.execute(
                select(subject_pool.c.id).where(subject_pool.c.id == subject_id)
            ).first()
        return found is not None

    def get_subject(self, subject_id: str) -> SubjectRow | None:
        with self._read() as conn:
            r = conn.execute(_GET_SUBJECT, {"sid": subject_id}).first()
        return _subject_row(r) if r else None

    def subject_by_idempotency_key(self, key: str) -> tuple[SubjectRow, str | None] | None:
        """The subject an idempotency key created, and the digest of that request."""
        with self._tx() as conn:
            r = conn.execute(
                select(*_SUBJECT_COLS, subjects.c.request_digest).where(
                    subjects.c.idempotency_key == key
                )
            ).first()
        return (_subject_row(r), r[-1]) if r else None

    # -- records ----------------------------------------------------------

    def get_record(self, record_id: str) -> tuple[RecordRow, SubjectRow] | None:
        """The record and its subject, read in one statement (one consistent view)."""
        with self._read() as conn:
            r = conn.execute(_GET_RECORD, {"rid": record_id}).first()
        if r is None:
            return None
        return _record_row(r[:_N_RECORD_COLS]), _subject_row(r[_N_RECORD_COLS:])

    def record_by_idempotency_key(
        self, subject_id: str, key: str
    ) -> tuple[RecordRow, str | None] | None:
        """The record an idempotency key created, and the digest of that request."""
        with self._tx() as conn:
            r = conn.execute(
                select(*_RECORD_COLS, records.c.request_digest).where(
                    and_(records.c.subject_id == subject_id, records.c.idempotency_key == key)
                )
            ).first()
        return (_record_row(r[:-1]), r[-1]) if r else None

    def record_digests(self, subject_id: str, keys: list[str]) -> dict[str, str | None]:
        """Of ``keys``, those that already created a record of the subject, with
        the digest of the request each was first used for."""
        if not keys:
            return {}
        with self._tx() as conn:
            rows = conn.execute(
                select(records.c.idempotency_key, records.c.request_digest).where(
                    and_(records.c.subject_id == subject_id, records.c.idempotency_key.in_(keys))
                )
            ).all()
        return {str(k): d for k, d in rows}

    def insert_records(
        self,
        rows: Sequence[tuple[RecordRow, str | None, int | None, str | None]],
        states: tuple[SubjectState, ...] = LIVE_STATES,
    ) -> bool:
        """Inserts a batch of records — (row, idempotency key, expiry, request
        digest) each — in one transaction, each only while its subject is in one
        of ``states`` (checked in its statement): all of them, or (False) none."""
        try:
            with self._tx() as conn:
                for row, key, expires_at, digest in rows:
                    res = conn.execute(
                        _INSERT_RECORD,
                        {
                            "live_subject": row.subject_id,
                            "live_states": [str(x) for x in states],
                            "id": row.id,
                            "subject_id": row.subject_id,
                            "category": row.category,
                            "version": row.version,
                            "envelope": row.envelope,
                            "idempotency_key": key,
                            "created_at": row.created_at,
                            "updated_at": row.updated_at,
                            "expires_at": expires_at,
                            "request_digest": digest,
                            "dek_generation": row.dek_generation,
                            "newest_gen": row.dek_generation,
                        },
                    )
                    if res.rowcount != 1:
                        raise _NotLive
        except _NotLive:
            return False
        return True

    def insert_record(
        self,
        row: RecordRow,
        idempotency_key: str | None,
        expires_at: int | None = None,
        states: tuple[SubjectState, ...] = LIVE_STATES,
        request_digest: str | None = None,
    ) -> bool:
        """Inserts the record if its subject is in one of ``states`` (checked in
        the same statement); False, with nothing written, otherwise."""
        return self.insert_records([(row, idempotency_key, expires_at, request_digest)], states)

    def update_record(
        self,
        row: RecordRow,
        previous_version: int,
        expires_at: int | None = None,
        states: tuple[SubjectState, ...] = LIVE_STATES,
    ) -> bool:
        """Compare-and-set on ``version`` while the subject is in one of
        ``states`` (the same guard as inserts); False when another writer got
        there first or the subject's state changed since."""
        live_params = {"live_subject": row.subject_id, "live_states": [str(x) for x in states]}
        with self._tx() as conn:
            if not self._lock_live(conn, live_params):
                return False
            res = conn.execute(
                _UPDATE_RECORD,
                {
                    **live_params,
                    "rid": row.id,
                    "prev": previous_version,
                    "new_version": row.version,
                    "new_envelope": row.envelope,
                    "new_updated_at": row.updated_at,
                    "new_expires_at": expires_at,
                    "newest_gen": row.dek_generation,
                },
            )
        return res.rowcount == 1

    def sweep_expired(self, now: int, batch: int = 500) -> int:
        """Deletes up to ``batch`` records whose retention ended; returns how many.

        Safe on several nodes at once: each DELETE takes whatever is still there.
        """
        expired = (
            select(records.c.id)
            .where(and_(records.c.expires_at.is_not(None), records.c.expires_at <= now))
            .limit(batch)
            .scalar_subquery()
        )
        with self._tx() as conn:
            res = conn.execute(delete(records).where(records.c.id.in_(expired)))
        return int(res.rowcount)

    def count_expired(self, now: int) -> int:
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(records)
                    .where(and_(records.c.expires_at.is_not(None), records.c.expires_at <= now))
                ).scalar_one()
            )

    def delete_record(self, record_id: str, version: int | None) -> bool:
        cond = records.c.id == record_id
        if version is not None:
            cond = and_(cond, records.c.version == version)
        with self._tx() as conn:
            res = conn.execute(delete(records).where(cond))
        return res.rowcount == 1

    def list_records(
        self,
        subject_id: str,
        categories: frozenset[str] | None,
        after: str | None,
        limit: int,
    ) -> list[RecordRow]:
        """Records of ``subject_id`` in ``categories`` (None: any), ordered by id."""
        cond = records.c.subject_id == subject_id
        if categories is not None:
            cond = and_(cond, records.c.category.in_(sorted(categories)))
        if after:
            cond = and_(cond, records.c.id > after)
        with self._read() as conn:
            rows = conn.execute(
                select(*_RECORD_COLS).where(cond).order_by(records.c.id).limit(limit)
            ).all()
        return [_record_row(r) for r in rows]

    def count_records(self) -> int:
        with self._tx() as conn:
            return int(conn.execute(select(func.count()).select_from(records)).scalar_one())

    # -- subject state and consent -----------------------------------------

    def set_state(self, subject_id: str, state: SubjectState, now: int) -> bool:
        """Sets a live subject's state; False if it is erased or does not exist."""
        with self._tx() as conn:
            res = conn.execute(
                update(subjects)
                .where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state.not_in(sorted(str(x) for x in GONE_STATES)),
                    )
                )
                .values(state=str(state), updated_at=now)
            )
        return res.rowcount == 1

    def hide(self, subject_id: str, now: int) -> None:
        """Marks a subject erasure-pending, remembering its state (unless it is
        already pending or erased)."""
        with self._tx() as conn:
            conn.execute(
                update(subjects)
                .where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state.not_in(sorted(str(x) for x in GONE_STATES)),
                    )
                )
                .values(
                    prior_state=subjects.c.state,
                    state=str(SubjectState.ERASURE_PENDING),
                    updated_at=now,
                )
            )

    def unhide(self, subject_id: str, now: int) -> bool:
        """Gives an erasure-pending subject back the state it had before; False
        if it was not pending."""
        with self._tx() as conn:
            res = conn.execute(
                update(subjects)
                .where(
                    and_(
                        subjects.c.id == subject_id,
                        subjects.c.state == str(SubjectState.ERASURE_PENDING),
                    )
                )
                .values(
                    state=func.coalesce(subjects.c.prior_state, str(SubjectState.ACTIVE)),
                    prior_state=None,
                    updated_at=now,
                )
            )
        return res.rowcount == 1

    def consent_granted(self, subject_id: str, purpose: str) -> bool:
        with self._read() as conn:
            r = conn.execute(
                select(consents.c.granted).where(
                    and_(consents.c.subject_id == subject_id, consents.c.purpose == purpose)
                )
            ).first()
        return bool(r and r[0])

    def set_consent(
        self,
        subject_id: str,
        purpose: str,
        granted: bool,
        source: str,
        now: int,
        states: tuple[SubjectState, ...] = LIVE_STATES,
    ) -> bool:
        """Records a consent decision while the subject is in one of ``states``
        (the guard of record writes); False, with nothing written, otherwise."""
        live_params = {"live_subject": subject_id, "live_states": [str(x) for x in states]}
        with self._tx() as conn:
            if not self._lock_live(conn, live_params):
                return False
            res = conn.execute(
                update(consents)
                .where(
                    and_(
                        consents.c.subject_id == subject_id,
                        consents.c.purpose == purpose,
                        _SUBJECT_LIVE,
                    )
                )
                .values(granted=granted, source=source, updated_at=now),
                live_params,
            )
            if res.rowcount == 0:
                res = conn.execute(
                    _INSERT_CONSENT,
                    {
                        **live_params,
                        "subject_id": subject_id,
                        "purpose": purpose,
                        "granted": granted,
                        "source": source,
                        "updated_at": now,
                    },
                )
        return res.rowcount == 1

    def list_consents(self, subject_id: str) -> list[tuple[str, bool, str, int]]:
        """(purpose, granted, source, updated_at) of every consent record of a subject."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    consents.c.purpose, consents.c.granted, consents.c.source, consents.c.updated_at
                )
                .where(consents.c.subject_id == subject_id)
                .order_by(consents.c.purpose)
            ).all()
        return [(str(p), bool(g), str(s), int(u)) for p, g, s, u in rows]

    def erase_subject_data(self, subject_id: str, now: int) -> int:
        """Deletes every record, consent, lookup entry (digests and sealed
        values) and transfer row (ids in
        clear) of a subject, drops its wrapped data key and marks it erased, in
        one transaction; returns the records deleted. The transfer decisions
        stay in the audit log, under pseudonyms that die with the data key.

        The subject's row is updated first: on PostgreSQL that locks it, so a
        write holding it (FOR SHARE) commits before the deletes look, and a
        write arriving later waits and finds the subject erased."""
        with self._tx() as conn:
            conn.execute(
                update(subjects)
                .where(subjects.c.id == subject_id)
                .values(
                    state=str(SubjectState.ERASED),
                    wrapped_dek="",
                    wrapped_dek_next=None,
                    pseudonym_seal=None,
                    idempotency_key=None,
                    updated_at=now,
                )
            )
            n = conn.execute(delete(records).where(records.c.subject_id == subject_id)).rowcount
            conn.execute(delete(consents).where(consents.c.subject_id == subject_id))
            conn.execute(delete(lookups_t).where(lookups_t.c.subject_id == subject_id))
            conn.execute(delete(lookup_values).where(lookup_values.c.subject_id == subject_id))
            conn.execute(delete(transfers).where(transfers.c.subject_id == subject_id))
        return int(n)

    def all_records(self, subject_id: str) -> list[RecordRow]:
        with self._read() as conn:
            rows = conn.execute(
                select(*_RECORD_COLS)
                .where(records.c.subject_id == subject_id)
                .order_by(records.c.id)
            ).all()
        return [_record_row(r) for r in rows]

    # -- blind index -----------------------------------------------------------

    def cell_key(self, name: str) -> str | None:
        with self._read() as conn:
            r = conn.execute(select(cell_keys.c.wrapped).where(cell_keys.c.name == name)).first()
        return str(r[0]) if r else None

    def add_cell_key(self, name: str, mount: str, key_name: str, wrapped: str) -> None:
        """Stores a wrapped cell key unless one exists (the first writer wins)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(cell_keys).values(
                        name=name, key_mount=mount, key_name=key_name, wrapped=wrapped
                    )
                )
        except DuplicateKey:
            pass

    def add_lookups(
        self,
        subject_id: str,
        entries: LookupWrite,
        max_per_subject: int,
        states: tuple[SubjectState, ...] = LIVE_STATES,
    ) -> int | None:
        """Adds lookup entries (digests under every active index key version,
        and sealed values) for a subject in one transaction, only while the
        subject is in one of ``states`` (checked in the statements, like record
        writes) and only up to ``max_per_subject`` entries (per index key
        version) in all. Returns how many entries were new (counted under the
        newest version); ``None`` when the subject is not in ``states``; raises
        TooLarge past the bound (nothing written) and IndexVersionsChanged when
        the digests are not made under the active versions (nothing written).

        A value whose digests exist but whose sealed value does not (set
        before values were sealed) gets its sealed value now."""
        wanted = sorted(set(entries.digests))
        live_params = {"live_subject": subject_id, "live_states": [str(x) for x in states]}
        try:
            with self._tx() as conn:
                if not self._lock_live(conn, live_params):
                    return None
                have = set(conn.execute(_SUBJECT_LOOKUPS, {"sid": subject_id}).all())
                new = [e for e in wanted if e not in have]
                for version in entries.versions:
                    count = sum(1 for e in have if e[2] == version) + sum(
                        1 for e in new if e[2] == version
                    )
                    if count > max_per_subject:
                        raise TooLarge(f"a subject holds at most {max_per_subject} lookup entries")
                have_ids = {r[0] for r in conn.execute(_SUBJECT_VALUE_IDS, {"sid": subject_id})}
                sealed = {x.value_id: x for x in entries.sealed if x.value_id not in have_ids}
                if not new and not sealed:
                    return 0 if conn.execute(_SUBJECT_LIVE_ROW, live_params).first() else None
                # Each row is inserted only if the subject is live: all or none
                # (a concurrent state change makes it none, rolled back).
                for k, d, v in new:
                    params = {"kind": k, "digest": d, "subject_id": subject_id, "key_version": v}
                    if conn.execute(_INSERT_LOOKUP, {**live_params, **params}).rowcount != 1:
                        raise _NotLive
                for x in sealed.values():
                    self._insert_sealed(conn, subject_id, x, live_params)
                if new:
                    self._check_index_versions(conn, entries)
        except _NotLive:
            return None
        newest = max(entries.versions) if entries.versions else 0
        return sum(1 for e in new if e[2] == newest)

    def find_lookup(self, kind: str, digests: Sequence[str] | str) -> list[str]:
        """Subjects with a lookup entry of ``kind`` and one of ``digests`` (one
        per active index key version)."""
        if isinstance(digests, str):
            digests = [digests]
        with self._read() as conn:
            rows = conn.execute(
                select(lookups_t.c.subject_id)
                .where(and_(lookups_t.c.kind == kind, lookups_t.c.digest.in_(list(digests))))
                .group_by(lookups_t.c.subject_id)
                .order_by(lookups_t.c.subject_id)
            ).all()
        return [str(r[0]) for r in rows]

    # -- sealed lookup values and index key versions ---------------------------

    def lookup_values(self, subject_id: str) -> list[SealedLookup]:
        """The subject's sealed lookup values (id order)."""
        with self._read() as conn:
            rows = conn.execute(
                select(*SEALED_LOOKUP_COLS)
                .where(lookup_values.c.subject_id == subject_id)
                .order_by(lookup_values.c.value_id)
            ).all()
        return [sealed_lookup(r) for r in rows]

    @classmethod
    def _insert_sealed(
        cls, conn: Connection, subject_id: str, x: SealedLookup, live_params: dict[str, Any]
    ) -> None:
        """Inserts one sealed lookup value while the subject is live and ``x``'s
        generation is its newest; _NotLive or DataKeyChanged otherwise."""
        params = {
            "subject_id": subject_id,
            "value_id": x.value_id,
            "kind": x.kind,
            "sealed": x.sealed,
            "dek_generation": x.generation,
            "newest_gen": x.generation,
        }
        if conn.execute(_INSERT_LOOKUP_VALUE, {**live_params, **params}).rowcount != 1:
            cls._not_live_or_stale(conn, live_params)

    @staticmethod
    def _not_live_or_stale(conn: Connection, live_params: dict[str, Any]) -> NoReturn:
        """After a guarded insert wrote nothing: the subject is not live
        (_NotLive), or its newest data-key generation changed (a rekey started
        or ended): DataKeyChanged, to seal again."""
        if conn.execute(_SUBJECT_LIVE_ROW, live_params).first() is None:
            raise _NotLive
        raise DataKeyChanged("the subject's data key changed during the write; seal again")

    def replace_lookup_values(
        self,
        subject_id: str,
        values: Sequence[SealedLookup],
        states: tuple[SubjectState, ...] = LIVE_STATES,
    ) -> bool:
        """Replaces all the subject's sealed lookup values by ``values`` (say,
        sealed again under a new data key) in one transaction, while the
        subject is in one of ``states``; False (nothing changed) if it is not."""
        live_params = {"live_subject": subject_id, "live_states": [str(x) for x in states]}
        try:
            with self._tx() as conn:
                if not self._lock_live(conn, live_params):
                    return False
                conn.execute(delete(lookup_values).where(lookup_values.c.subject_id == subject_id))
                for x in {x.value_id: x for x in values}.values():
                    self._insert_sealed(conn, subject_id, x, live_params)
                if not values and conn.execute(_SUBJECT_LIVE_ROW, live_params).first() is None:
                    raise _NotLive
        except _NotLive:
            return False
        return True

    def index_versions(self) -> list[IndexVersion]:
        """Every index key version of the cell, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(index_keys).order_by(index_keys.c.version)).all()
        return [
            IndexVersion(int(r.version), str(r.state), int(r.created_at), r.retired_at)
            for r in rows
        ]

    def active_index_versions(self) -> tuple[int, ...]:
        with self._read() as conn:
            rows = conn.execute(_ACTIVE_INDEX_VERSIONS.order_by(index_keys.c.version)).all()
        return tuple(int(r[0]) for r in rows)

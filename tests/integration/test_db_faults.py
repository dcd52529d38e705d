"""Database faults at every statement boundary of every write path, on a real
SQLite file and on the real PostgreSQL: each request fully happened or not at all.

A fault is the database driver's own ``OperationalError``, raised from
SQLAlchemy's ``before_cursor_execute`` event (before the n-th statement) or
its ``commit`` event (before the commit). For each write path the test first
runs the request cleanly to learn its statements and the change it makes to
the cell (rows, ignoring ids and timestamps); then, for every boundary, it
runs the request again on fresh data with a fault there, and checks that the
cell changed by nothing or by exactly that change, and that the cell and
OpenBao agree: no record without its subject, no live subject without its
Transit key, no Transit key without its subject.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hvac
import hvac.exceptions
import psycopg
import pytest
from sqlalchemy import Connection, Engine, event, text

from tests.conftest import Bao, Stack, start_stack
from tests.fault_tally import TALLY
from vault import ids
from vault.client import VaultClient, VaultClientError
from vault.keys import KeyRef
from vault.v1 import vault_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SERVICE = "essential.service"
RIGHTS = "essential.subject_rights"
MOUNT = "transit-de"


class InjectedFault(Exception):
    """Marks the statement a fault was injected before (never leaves the driver)."""


@dataclass
class StatementFaults:
    """Counts the statements (and commits) a cell engine runs while armed, and
    raises the driver's OperationalError at boundary ``fail_at``."""

    engine: Engine
    armed: bool = False
    fail_at: int | None = None
    seen: list[str] = field(default_factory=list)
    injected: int = 0

    def __post_init__(self) -> None:
        event.listen(self.engine, "before_cursor_execute", self._statement)
        # A commit fails inside the driver's commit, where SQLAlchemy sees a real
        # one fail (its "commit" event runs outside that error handling).
        dialect = self.engine.dialect
        self._do_commit = dialect.do_commit

        def do_commit(dbapi_conn: Any) -> None:
            self._boundary(dialect, "COMMIT")
            self._do_commit(dbapi_conn)

        dialect.do_commit = do_commit  # type: ignore[method-assign]

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        self.engine.dialect.do_commit = self._do_commit  # type: ignore[method-assign]

    def _boundary(self, dialect: Any, what: str) -> None:
        if not self.armed:
            return
        n = len(self.seen)
        self.seen.append(what)
        if n == self.fail_at:
            self.injected += 1
            raise dialect.loaded_dbapi.OperationalError("injected fault")

    def _statement(self, conn: Connection, _cur: Any, stmt: str, *_: Any) -> None:
        self._boundary(conn.dialect, " ".join(stmt.split()[:3]))

    def run(self, fail_at: int | None, fn: Callable[[], object]) -> VaultClientError | None:
        self.seen, self.fail_at, self.armed = [], fail_at, True
        try:
            fn()
        except VaultClientError as e:
            return e
        finally:
            self.armed = False
        return None


@dataclass
class Cell:
    """The fault-injected cell "de" of a node, with eyes on its rows and keys."""

    stack: Stack
    faults: StatementFaults
    root: hvac.Client
    svc: VaultClient
    rights: VaultClient

    @property
    def engine(self) -> Engine:
        return self.faults.engine

    def rows(self) -> Counter[tuple[Any, ...]]:
        """The cell's content without ids or timestamps (what a request changes)."""
        with self.engine.connect() as c:
            out: Counter[tuple[Any, ...]] = Counter()
            for r in c.execute(
                text(
                    "SELECT state, minor, prior_state, idempotency_key IS NOT NULL, "
                    "wrapped_dek <> '' FROM subjects"
                )
            ):
                out[("subject", r[0], bool(r[1]), r[2], bool(r[3]), bool(r[4]))] += 1
            for r in c.execute(
                text("SELECT category, version, idempotency_key IS NOT NULL FROM records")
            ):
                out[("record", r[0], r[1], bool(r[2]))] += 1
            for r in c.execute(text("SELECT kind FROM lookups")):
                out[("lookup", r[0])] += 1
            for r in c.execute(text("SELECT purpose, granted FROM consents")):
                out[("consent", r[0], bool(r[1]))] += 1
        return out

    def transit_keys(self) -> set[str]:
        try:
            resp = self.root.secrets.transit.list_keys(mount_point=MOUNT)
        except hvac.exceptions.InvalidPath:
            return set()
        return set(resp["data"]["keys"])

    def check_consistent(self, keys_before: set[str]) -> None:
        """No orphan ciphertext, no live subject without its key, no key without its subject."""
        with self.engine.connect() as c:
            orphans = c.execute(
                text(
                    "SELECT count(*) FROM records r LEFT JOIN subjects s ON s.id = r.subject_id "
                    "WHERE s.id IS NULL OR s.state = 'erased'"
                )
            ).scalar_one()
            subjects = {
                str(r[0]): (str(r[1]), str(r[2]))
                for r in c.execute(text("SELECT id, state, key_name FROM subjects"))
            }
        assert orphans == 0, "records without their subject or its key"
        keys = self.transit_keys()
        names = {k: sid for sid, (_, k) in subjects.items()}
        for sid, (state, key) in subjects.items():
            if state not in ("erased", "erasure_pending"):
                assert key in keys, f"live subject {sid} without its Transit key"
        for k in keys - keys_before:
            if not k.startswith("subject-"):
                continue  # the region's own keys (the blind index)
            assert k in names, f"Transit key {k} without its subject"
            assert subjects[names[k]][0] != "erased", f"key {k} of an erased subject"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cell(
    request: pytest.FixtureRequest, bao: Bao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cell]:
    urls: dict[str, str] = {}
    if request.param == "postgresql":
        urls["de"] = request.getfixturevalue("pg_url")
    # The readiness probe's SELECT 1 would interleave with the statements
    # counted here: it runs once an hour in this stack.
    stack = start_stack(
        bao,
        tmp_path_factory.mktemp(f"faults-{request.param}"),
        database_urls=urls,
        health_probe_seconds=3600,
    )
    faults = StatementFaults(stack.vault.parts.stores["de"].engine)
    try:
        yield Cell(
            stack,
            faults,
            bao.root(),
            stack.client(stack.issue(SERVICE)),
            stack.client(stack.issue(RIGHTS)),
        )
    finally:
        faults.remove()
        stack.stop()


# -- the write paths: (set-up on fresh data) → the request ------------------------


def _subject(c: Cell) -> str:
    return str(c.svc.create_subject("DE").subject_id)


def _subject_with_record(c: Cell) -> tuple[str, str]:
    sid = _subject(c)
    return sid, str(c.svc.put_record(sid, "user.name", {"first": "Ada"}).record_id)


def _create(c: Cell) -> Callable[[], object]:
    return lambda: c.svc.create_subject("DE")


def _create_idempotent_with_lookups(c: Cell) -> Callable[[], object]:
    email = f"{uuid.uuid4().hex}@example.org"
    return lambda: c.svc.create_subject(
        "DE",
        idempotency_key=uuid.uuid4().hex,
        lookups={"email": email, "phone": "+4930" + str(uuid.uuid4().int)[:8]},
    )


def _put_new(c: Cell) -> Callable[[], object]:
    sid = _subject(c)
    return lambda: c.svc.put_record(
        sid, "user.contact.email", {"address": "a@example.org"}, idempotency_key=uuid.uuid4().hex
    )


def _put_update(c: Cell) -> Callable[[], object]:
    sid, rid = _subject_with_record(c)
    return lambda: c.svc.put_record(
        sid, "user.name", {"first": "Grace"}, record_id=rid, expected_version=1
    )


def _delete(c: Cell) -> Callable[[], object]:
    _, rid = _subject_with_record(c)
    return lambda: c.svc.delete_record(rid, expected_version=1)


def _consent(c: Cell) -> Callable[[], object]:
    sid = _subject(c)
    return lambda: c.rights.set_consent(
        sid, "marketing.communications.email", True, source="web-form"
    )


def _restrict(c: Cell) -> Callable[[], object]:
    sid = _subject(c)
    return lambda: c.rights.restrict_processing(sid, True)


def _lookups(c: Cell) -> Callable[[], object]:
    sid = _subject(c)
    email = f"{uuid.uuid4().hex}@example.org"
    return lambda: c.svc.set_lookups(sid, {"email": email})


WRITE_PATHS: dict[str, Callable[[Cell], Callable[[], object]]] = {
    "CreateSubject": _create,
    "CreateSubject+idempotency+lookups": _create_idempotent_with_lookups,
    "PutRecord(new)": _put_new,
    "PutRecord(update)": _put_update,
    "DeleteRecord": _delete,
    "SetConsent": _consent,
    "RestrictProcessing": _restrict,
    "SetLookups": _lookups,
}


def _delta(
    before: Counter[tuple[Any, ...]], after: Counter[tuple[Any, ...]]
) -> tuple[Counter[tuple[Any, ...]], Counter[tuple[Any, ...]]]:
    return after - before, before - after


@pytest.mark.parametrize("path", list(WRITE_PATHS))
def test_a_fault_at_every_statement_boundary_leaves_all_or_nothing(cell: Cell, path: str) -> None:
    make = WRITE_PATHS[path]
    keys_before = cell.transit_keys()

    # The clean run (after a warm-up that fills the node's caches): its
    # statements, and the change it makes.
    assert cell.faults.run(None, make(cell)) is None
    request = make(cell)
    before = cell.rows()
    assert cell.faults.run(None, request) is None
    boundaries = list(cell.faults.seen)
    whole = _delta(before, cell.rows())
    assert boundaries and whole != (Counter(), Counter()), "the write path wrote nothing"

    for n, where in enumerate(boundaries):
        request = make(cell)
        before = cell.rows()
        err = cell.faults.run(n, request)
        assert cell.faults.injected and cell.faults.seen[n] == where, (path, n, cell.faults.seen)
        change = _delta(before, cell.rows())
        if err is not None:
            assert err.code == grpc.StatusCode.UNAVAILABLE, (path, where, err)
            assert err.reason == "STORE_UNAVAILABLE", (path, where, err)
            assert "injected" not in err.message
        # Nothing, or all of it (a fault after the commit may still report an error).
        assert change in ((Counter(), Counter()), whole), (path, n, where, change, whole)
        cell.check_consistent(keys_before)
        TALLY.fault(f"database statement boundary ({cell.engine.dialect.name})")


def test_a_create_whose_row_insert_fails_leaves_no_key_in_openbao(cell: Cell) -> None:
    """The key is created in OpenBao before the row; when the insert fails, the
    key is destroyed again (through the eraser's credential)."""
    cell.faults.run(None, _create(cell))
    insert_at = next(i for i, s in enumerate(cell.faults.seen) if s.startswith("INSERT"))
    keys_before = cell.transit_keys()
    err = cell.faults.run(insert_at, _create(cell))
    assert err is not None and err.code == grpc.StatusCode.UNAVAILABLE
    assert cell.transit_keys() == keys_before  # created, then destroyed: OpenBao holds no new key
    TALLY.fault(f"subject insert failed after its key was made ({cell.engine.dialect.name})")


def test_erasure_interrupted_at_every_boundary_completes_on_retry(cell: Cell) -> None:
    """Erasure spans several transactions by design; a fault at any of them leaves
    the subject unreadable, and calling again (or the worker) completes it."""
    keys_before = cell.transit_keys()
    sid, rid = _subject_with_record(cell)
    assert cell.faults.run(None, lambda: cell.rights.erase_subject(sid)) is None
    for n in range(len(cell.faults.seen)):
        sid, rid = _subject_with_record(cell)
        err = cell.faults.run(n, lambda sid=sid: cell.rights.erase_subject(sid))  # type: ignore[misc]
        assert cell.faults.injected
        if err is not None:
            assert err.code == grpc.StatusCode.UNAVAILABLE, (n, err)
        receipt = cell.rights.erase_subject(sid)  # the caller's retry
        assert receipt.state == pb.ERASURE_STATE_COMPLETED and receipt.signed_receipt, (
            n,
            cell.faults.seen,
        )
        assert f"subject-{sid}" not in cell.transit_keys()
        with pytest.raises(VaultClientError) as gone:
            cell.svc.get_record(rid)
        assert gone.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
        cell.check_consistent(keys_before)
        TALLY.fault(f"erasure statement boundary ({cell.engine.dialect.name})")


# -- lock timeouts and a full disk ---------------------------------------------------


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {
            t: int(c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("subjects", "records", "lookups", "consents")
        }


def test_a_lock_timeout_is_unavailable_and_writes_nothing(
    bao: Bao, pg_url: str, tmp_path: Path
) -> None:
    """Another session holds the tables' locks; the node's statements give up after
    the lock_timeout its database URL sets, answer UNAVAILABLE, and write nothing."""
    url = f"{pg_url}?options=-c%20lock_timeout%3D300"
    stack = start_stack(bao, tmp_path, database_urls={"de": url}, health_probe_seconds=3600)
    try:
        c = stack.client(stack.issue(SERVICE))
        sid = c.create_subject("DE").subject_id
        rid = c.put_record(sid, "user.name", {"first": "Ada"}).record_id
        engine = stack.vault.parts.stores["de"].engine
        before, keys = (
            _counts(engine),
            set(bao.root().secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"]),
        )
        with psycopg.connect(pg_url.replace("postgresql+psycopg", "postgresql")) as locker:
            locker.execute("LOCK TABLE subjects, records, lookups IN ACCESS EXCLUSIVE MODE")
            for call in (
                lambda: c.create_subject("DE", lookups={"email": "lock@example.org"}),
                lambda: c.put_record(sid, "user.contact.email", {"address": "x@example.org"}),
                lambda: c.put_record(
                    sid, "user.name", {"first": "Grace"}, record_id=rid, expected_version=1
                ),
                lambda: c.delete_record(rid),
            ):
                with pytest.raises(VaultClientError) as e:
                    call()
                assert e.value.code == grpc.StatusCode.UNAVAILABLE, e.value
                assert e.value.reason == "STORE_UNAVAILABLE"
                TALLY.fault("lock timeout (postgresql)")
            locker.rollback()
        assert _counts(engine) == before
        after = set(bao.root().secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"])
        assert after == keys  # the create's key was destroyed again
        assert dict(c.get_record(rid).fields) == {"first": "Ada"}
    finally:
        stack.stop()


def test_a_full_disk_is_unavailable_writes_nothing_and_recovers(bao: Bao, tmp_path: Path) -> None:
    """The cell's SQLite file may not grow (``PRAGMA max_page_count``, as on a full
    disk): writes answer UNAVAILABLE with nothing half-written, reads go on, and
    writes work again once there is room, without a restart."""
    stack = start_stack(bao, tmp_path, health_probe_seconds=3600)
    try:
        c = stack.client(stack.issue(SERVICE))
        sid = c.create_subject("DE").subject_id
        rid = c.put_record(sid, "user.name", {"first": "Ada"}).record_id
        store = stack.vault.parts.stores["de"]
        engine = store.engine
        with engine.connect() as conn:
            pages = int(conn.execute(text("PRAGMA page_count")).scalar_one())

        def cap(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

        event.listen(engine, "connect", cap)
        engine.dispose()  # every new connection has the cap
        keys = set(bao.root().secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"])
        blob = "x" * 3000
        refused = None
        for i in range(200):
            before = _counts(engine)
            try:
                c.put_record(sid, "user.content", {"text": f"{i}{blob}"})
                c.create_subject("DE", lookups={"email": f"full{i}@example.org"})
            except VaultClientError as e:
                refused = e
                break
        assert refused is not None, "the capped file never filled"
        assert refused.code == grpc.StatusCode.UNAVAILABLE and refused.reason == "STORE_UNAVAILABLE"
        TALLY.fault("disk full (sqlite)")
        after = _counts(engine)
        grown = {t: after[t] - before[t] for t in after}
        assert grown in (
            {"subjects": 0, "records": 0, "lookups": 0, "consents": 0},
            {"subjects": 0, "records": 1, "lookups": 0, "consents": 0},
        ), grown
        with engine.connect() as conn:
            live = {str(r[0]) for r in conn.execute(text("SELECT key_name FROM subjects"))}
        now = set(bao.root().secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"])
        assert now - keys <= live  # no key without its subject
        assert dict(c.get_record(rid).fields) == {"first": "Ada"}  # reads go on

        event.remove(engine, "connect", cap)
        engine.dispose()
        assert c.create_subject("DE").region == "de"
    finally:
        stack.stop()


def test_the_reaper_destroys_subject_keys_a_crash_left_without_their_subject(cell: Cell) -> None:
    """A kill between a key's creation and its row's insert leaves a key that no
    row names; the node's periodic reaper destroys it once it is old enough that
    no create can still be in flight, and never touches a live subject's key."""
    region = cell.stack.vault.parts.cells["de"]
    live = _subject(cell)
    orphan = KeyRef(MOUNT, f"subject-{ids.new_subject_id('de')}")
    cell.stack.provider.create_key(orphan)  # as a create killed before its insert would
    assert orphan.name in cell.transit_keys()

    region.reap_orphan_keys(min_age_seconds=3600)  # too young: maybe a create in flight
    assert orphan.name in cell.transit_keys()

    assert region.reap_orphan_keys(min_age_seconds=0) >= 1
    keys = cell.transit_keys()
    assert orphan.name not in keys  # OpenBao no longer holds it
    assert f"subject-{live}" in keys
    assert dict(cell.svc.get_record(_subject_with_record(cell)[1]).fields) == {"first": "Ada"}
    TALLY.fault(f"orphan subject key reaped ({cell.engine.dialect.name})")

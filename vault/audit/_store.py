"""The audit log in a database: append a batch to the chain, read it back.

Several nodes of one region may append to one log: the chain head is taken
inside the appending transaction (``BEGIN IMMEDIATE`` on SQLite, the head row
``FOR UPDATE`` on PostgreSQL), so entries are numbered and chained in one
order whoever writes them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.engine import make_url

from vault import db
from vault.audit._entry import FIELDS, GENESIS, canonical, chain_hash
from vault.audit._models import checkpoints, entries, heads
from vault.db import DuplicateKey, transaction
from vault.errors import StoreUnavailable

_MIGRATIONS = Path(__file__).parent / "migrations"


def audit_url(database_url: str, name: str) -> str:
    """The audit database beside a SQLite database (``audit-NAME.sqlite`` in its
    folder: audit writes never take the data store's write lock); the same
    database otherwise (PostgreSQL locks rows, not the database)."""
    u = make_url(database_url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        return str(u.set(database=str(Path(u.database).parent / f"audit-{name}.sqlite")))
    return database_url


def _sqlite_writer(url: str, synchronous: str) -> Engine:
    engine = db.make_engine(url)

    @event.listens_for(engine, "connect")
    def _immediate(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def open_engines(url: str, *, fsync: bool = False) -> tuple[Engine, Engine]:
    """(write engine, read engine) of an audit database, migrated.

    On SQLite the write engine starts every transaction with ``BEGIN
    IMMEDIATE`` (the chain head is read under the write lock). A commit is in the
    write-ahead log before the call it records answers — as durable as the
    cell's own writes (``synchronous=NORMAL``: it survives the process, not
    necessarily a power cut); ``fsync`` syncs every commit to disk
    (``synchronous=FULL``), at a latency cost that group commit shares.
    """
    if make_url(url).get_backend_name() != "sqlite":
        engine = db.make_engine(url)
        db.migrate(engine, _MIGRATIONS)
        return engine, engine
    writer = _sqlite_writer(url, "FULL" if fsync else "NORMAL")
    db.migrate(writer, _MIGRATIONS)
    return writer, db.make_engine(url)


@dataclass(frozen=True, slots=True)
class _Statements:
    head: str
    insert: str
    update: str
    #: The update only if the head is still the one this node last wrote.
    update_if: str = ""


# The append path's statements, per DB-API parameter style. On PostgreSQL the
# head row is locked: appenders on several nodes queue behind it.
_SQLITE = _Statements(
    "SELECT seq, hash FROM audit_heads WHERE log = ?",
    "INSERT INTO audit_entries (log, seq, at_us, subject, entry, hash) VALUES (?, ?, ?, ?, ?, ?)",
    "UPDATE audit_heads SET seq = ?, hash = ? WHERE log = ?",
    "UPDATE audit_heads SET seq = ?, hash = ? WHERE log = ? AND seq = ? AND hash = ?",
)
_POSTGRES = _Statements(
    "SELECT seq, hash FROM audit_heads WHERE log = %s FOR UPDATE",
    "INSERT INTO audit_entries (log, seq, at_us, subject, entry, hash) "
    "VALUES (%s, %s, %s, %s, %s, %s)",
    "UPDATE audit_heads SET seq = %s, hash = %s WHERE log = %s",
)


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One row of a log, as stored."""

    seq: int
    at_us: int
    subject: str | None
    entry: str
    hash: str


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    hash: str
    at_us: int
    note: str


class AuditStore:
    """One named log (a region id, or ``control``) in an audit database."""

    def __init__(self, writer: Engine, reader: Engine, log: str, *, fsync: bool = False) -> None:
        self._writer = writer
        self._reader = reader
        u = writer.url
        local = u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:")
        #: A local SQLite file: appends may be tried on the event loop, through
        #: one plain connection that never waits for the lock (see
        #: :class:`vault.audit.AuditWriter`).
        self.inline_capable = local
        self._path = u.database if local else None
        self._synchronous = "FULL" if fsync else "NORMAL"
        self._raw: sqlite3.Connection | None = None
        #: The head as the loop's connection last committed it (None: read it).
        self._raw_head: tuple[int, bytes] | None = None
        #: Whether the loop's connection leaves WAL checkpoints to
        #: :meth:`checkpoint_wal` (see :meth:`defer_wal_checkpoints`).
        self._deferred_checkpoints = False
        self._checkpointer: sqlite3.Connection | None = None
        self.log = log
        self._sql = _SQLITE if writer.dialect.name == "sqlite" else _POSTGRES
        try:
            with transaction(writer, "audit") as conn:
                if conn.execute(select(heads.c.seq).where(heads.c.log == log)).first() is None:
                    conn.execute(insert(heads).values(log=log, seq=0, hash=GENESIS.hex()))
        except DuplicateKey:
            pass  # another node made it first

    @classmethod
    def open(cls, url: str, log: str, *, fsync: bool = False) -> AuditStore:
        writer, reader = open_engines(url, fsync=fsync)
        return cls(writer, reader, log, fsync=fsync)

    @property
    def url(self) -> str:
        return self._writer.url.render_as_string(hide_password=False)

    def close(self) -> None:
        self._writer.dispose()
        if self._reader is not self._writer:
            self._reader.dispose()
        for con in (self._raw, self._checkpointer):
            if con is not None:
                con.close()
        self._raw = self._checkpointer = None

    def _rows(
        self, batch: Sequence[Mapping[str, Any]], seq: int, head: bytes
    ) -> tuple[list[tuple[Any, ...]], int, bytes]:
        rows = []
        for e in batch:
            seq += 1
            full = {**e, "seq": seq, "log": self.log}
            unknown = set(full) - FIELDS
            if unknown:
                raise ValueError(f"unknown audit fields {sorted(unknown)}")
            text = canonical(full)
            head = chain_hash(head, text)
            rows.append(
                (self.log, seq, int(full["time_us"]), full.get("subject"), text.decode(),
                 head.hex())
            )  # fmt: skip
        return rows, seq, head

    def append(self, batch: Sequence[Mapping[str, Any]]) -> tuple[int, bytes]:
        """Appends the entries (without ``seq``/``log``) in one transaction,
        waiting for the lock; returns the new head (size, hash). Raises if not
        durable. Plain DB-API statements: the expression layer would cost more
        than the insert."""
        sql = self._sql
        with transaction(self._writer, "audit") as conn:
            cur = conn.connection.cursor()
            cur.execute(sql.head, (self.log,))
            found = cur.fetchone()
            if found is None:
                raise StoreUnavailable("audit log head missing")
            rows, seq, head = self._rows(batch, int(found[0]), bytes.fromhex(found[1]))
            if rows:
                cur.executemany(sql.insert, rows)
                cur.execute(sql.update, (seq, head.hex(), self.log))
            cur.close()
        return seq, head

    def append_nowait(self, batch: Sequence[Mapping[str, Any]]) -> tuple[int, bytes]:
        """:meth:`append` on a local SQLite file through one plain connection
        that gives up at once (``sqlite3.OperationalError``) when another
        writer holds the lock. For one thread only (the event loop's).

        The entries are chained onto the head this connection last wrote, and
        the head is moved only if it is still that one (another node or
        process may have appended since): if not, the head is read under the
        lock this transaction holds and the entries are chained again."""
        con = self._raw or self._connect_raw()
        try:
            con.execute("BEGIN IMMEDIATE")
            known = self._raw_head
            if known is None:
                known = self._read_head(con)
            rows, seq, head = self._rows(batch, known[0], known[1])
            if rows:
                moved = con.execute(
                    _SQLITE.update_if, (seq, head.hex(), self.log, known[0], known[1].hex())
                ).rowcount
                if moved != 1:
                    known = self._read_head(con)
                    rows, seq, head = self._rows(batch, known[0], known[1])
                    con.execute(_SQLITE.update, (seq, head.hex(), self.log))
                con.executemany(_SQLITE.insert, rows)
            con.execute("COMMIT")
        except BaseException:
            self._raw_head = None
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        self._raw_head = (seq, head)
        return seq, head

    def _connect_raw(self) -> sqlite3.Connection:
        if self._path is None:
            raise RuntimeError("not a local SQLite audit file")
        raw = sqlite3.connect(self._path, timeout=0, isolation_level=None, check_same_thread=False)
        raw.execute(f"PRAGMA synchronous={self._synchronous}")
        if self._deferred_checkpoints:
            raw.execute("PRAGMA wal_autocheckpoint=0")
        self._raw = raw
        return raw

    def _read_head(self, con: sqlite3.Connection) -> tuple[int, bytes]:
        found = con.execute(_SQLITE.head, (self.log,)).fetchone()
        if found is None:
            raise StoreUnavailable("audit log head missing")
        return int(found[0]), bytes.fromhex(found[1])

    def defer_wal_checkpoints(self) -> None:
        """The loop's connection no longer copies the write-ahead log into the
        database when it grows (SQLite does that in the commit that crosses
        the threshold: milliseconds on the event loop); the caller runs
        :meth:`checkpoint_wal` from another thread instead."""
        self._deferred_checkpoints = True
        if self._raw is not None:
            self._raw.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint_wal(self) -> None:
        """Copies what it can of the write-ahead log into the database without
        waiting for anyone (``PASSIVE``); for one thread only (not the loop's)."""
        if self._path is None:
            return
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def head(self) -> tuple[int, bytes]:
        with transaction(self._reader, "audit") as conn:
            row = conn.execute(
                select(heads.c.seq, heads.c.hash).where(heads.c.log == self.log)
            ).first()
        return (0, GENESIS) if row is None else (int(row[0]), bytes.fromhex(row[1]))

    def add_checkpoint(self, size: int, hash_: bytes, at_us: int, note: str) -> None:
        with transaction(self._writer, "audit") as conn:
            conn.execute(
                insert(checkpoints).values(
                    log=self.log, size=size, hash=hash_.hex(), at_us=at_us, note=note
                )
            )

    def for_subject(self, subject: str, since_us: int = 0) -> list[StoredEntry]:
        """The entries naming a subject pseudonym, oldest first."""
        with transaction(self._reader, "audit") as conn:
            rows = conn.execute(
                select(entries)
                .where(
                    entries.c.log == self.log,
                    entries.c.subject == subject,
                    entries.c.at_us >= since_us,
                )
                .order_by(entries.c.seq)
            ).all()
        return [StoredEntry(r.seq, r.at_us, r.subject, r.entry, r.hash) for r in rows]


def read_log(engine: Engine, log: str, batch: int = 5000) -> Iterator[StoredEntry]:
    """Every stored entry of ``log`` in ``seq`` order (for verification)."""
    after = -1
    while True:
        with transaction(engine, "audit") as conn:
            rows = conn.execute(
                select(entries)
                .where(entries.c.log == log, entries.c.seq > after)
                .order_by(entries.c.seq)
                .limit(batch)
            ).all()
        if not rows:
            return
        for r in rows:
            yield StoredEntry(int(r.seq), int(r.at_us), r.subject, r.entry, r.hash)
        after = int(rows[-1].seq)


def read_checkpoints(engine: Engine, log: str) -> list[StoredCheckpoint]:
    with transaction(engine, "audit") as conn:
        rows = conn.execute(
            select(checkpoints)
            .where(checkpoints.c.log == log)
            .order_by(checkpoints.c.size, checkpoints.c.id)
        ).all()
    return [StoredCheckpoint(int(r.size), r.hash, int(r.at_us), r.note) for r in rows]


def read_head(engine: Engine, log: str) -> tuple[int, str] | None:
    with transaction(engine, "audit") as conn:
        row = conn.execute(select(heads.c.seq, heads.c.hash).where(heads.c.log == log)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def logs_in(engine: Engine) -> list[str]:
    with transaction(engine, "audit") as conn:
        return sorted(str(r[0]) for r in conn.execute(select(heads.c.log)).all())


def read_only_engine(url: str) -> Engine:
    """An engine for verification: SQLite opened read-only (never creates the file)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        path = Path(u.database)
        if not path.exists():
            raise FileNotFoundError(str(path))
        return create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 10}
        )
    return create_engine(url)

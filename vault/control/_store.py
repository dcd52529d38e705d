"""Control-plane repository and the node's view of token revocations."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, delete, insert, select, update

from vault.control._models import erasures, revoked_tokens, token_events
from vault.db import DuplicateKey, migrate, now_us, transaction
from vault.errors import StoreUnavailable

log = logging.getLogger("vault.control")
_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class TokenEvent:
    """One issue, exchange or revocation, by token id (never the token itself)."""

    event: str
    jti: str
    caller: str
    service: str
    purpose: str
    expires_at_us: int
    parent_jti: str | None = None


@dataclass(frozen=True)
class ErasureEntry:
    """One ledger entry: which key was (or is to be) destroyed for which subject."""

    subject_id: str
    region: str
    key_mount: str
    key_name: str
    reason: str
    requested_at: int
    destroy_after: int
    destroyed_at: int | None = None
    receipt: str | None = None


_ERASURE_COLS = (
    erasures.c.subject_id,
    erasures.c.region,
    erasures.c.key_mount,
    erasures.c.key_name,
    erasures.c.reason,
    erasures.c.requested_at,
    erasures.c.destroy_after,
    erasures.c.destroyed_at,
    erasures.c.receipt,
)


_EVENT_COLS = (
    token_events.c.event,
    token_events.c.jti,
    token_events.c.caller,
    token_events.c.service,
    token_events.c.purpose,
    token_events.c.expires_at,
    token_events.c.parent_jti,
)


class ControlStore:
    """The control-plane database: token events, revocations, the erasure ledger."""

    def __init__(self, engine: Engine, clock: Callable[[], int] = now_us) -> None:
        self.engine = engine
        self._clock = clock
        migrate(engine, _MIGRATIONS)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def networked(self) -> bool:
        """Whether the database is a server reached over the network (not an
        SQLite file): waiting on it must not hold up the node's event loop."""
        return self.engine.dialect.name != "sqlite"

    def _tx(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "control")

    def record(self, ev: TokenEvent) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(token_events).values(
                    at=self._clock(),
                    event=ev.event,
                    jti=ev.jti,
                    parent_jti=ev.parent_jti,
                    caller=ev.caller,
                    service=ev.service,
                    purpose=ev.purpose,
                    expires_at=ev.expires_at_us,
                )
            )

    def events(self) -> list[TokenEvent]:
        with self._tx() as conn:
            rows = conn.execute(select(*_EVENT_COLS).order_by(token_events.c.id)).all()
        return [TokenEvent(*r) for r in rows]

    def issued(self, jti: str) -> TokenEvent | None:
        """The issue or exchange event of a token id, if this vault made that token."""
        with self._tx() as conn:
            r = conn.execute(
                select(*_EVENT_COLS)
                .where(token_events.c.jti == jti)
                .where(token_events.c.event.in_(("issue", "exchange")))
            ).first()
        return TokenEvent(*r) if r else None

    def children(self, jti: str) -> list[TokenEvent]:
        """The tokens exchanged directly from ``jti``."""
        with self._tx() as conn:
            rows = conn.execute(
                select(*_EVENT_COLS)
                .where(token_events.c.parent_jti == jti)
                .where(token_events.c.event == "exchange")
            ).all()
        return [TokenEvent(*r) for r in rows]

    def revoke(self, jti: str, expires_at_us: int) -> bool:
        """Records a revocation; False if the token id was already revoked."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(revoked_tokens).values(
                        jti=jti, expires_at=expires_at_us, revoked_at=self._clock()
                    )
                )
        except DuplicateKey:
            return False
        return True

    def revoked_since(self, after_us: int) -> list[tuple[str, int]]:
        """(jti, revoked_at) of revocations after ``after_us`` whose tokens are still live."""
        with self._tx() as conn:
            rows = conn.execute(
                select(revoked_tokens.c.jti, revoked_tokens.c.revoked_at)
                .where(revoked_tokens.c.revoked_at > after_us)
                .where(revoked_tokens.c.expires_at >= self._clock())
                .order_by(revoked_tokens.c.revoked_at)
            ).all()
        return [(str(j), int(at)) for j, at in rows]

    # -- erasure ledger ------------------------------------------------------

    def erasure(self, subject_id: str) -> ErasureEntry | None:
        with self._tx() as conn:
            r = conn.execute(
                select(*_ERASURE_COLS).where(erasures.c.subject_id == subject_id)
            ).first()
        return ErasureEntry(*r) if r else None

    def add_erasure(self, e: ErasureEntry) -> bool:
        """Adds a ledger entry; False if the subject already has one."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(erasures).values(
                        subject_id=e.subject_id,
                        region=e.region,
                        key_mount=e.key_mount,
                        key_name=e.key_name,
                        reason=e.reason,
                        requested_at=e.requested_at,
                        destroy_after=e.destroy_after,
                        destroyed_at=None,
                        receipt=None,
                    )
                )
        except DuplicateKey:
            return False
        return True

    def claim_erasure(self, subject_id: str, now_us: int, stale_after_us: int) -> bool:
        """Takes the right to carry out a due erasure (compare-and-set); a claim
        older than ``stale_after_us`` (its node died) can be taken over."""
        with self._tx() as conn:
            res = conn.execute(
                update(erasures)
                .where(
                    and_(
                        erasures.c.subject_id == subject_id,
                        erasures.c.destroyed_at.is_(None),
                        (erasures.c.claimed_at.is_(None))
                        | (erasures.c.claimed_at < now_us - stale_after_us),
                    )
                )
                .values(claimed_at=now_us)
            )
        return res.rowcount == 1

    def mark_destroyed(self, subject_id: str, at: int, receipt: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(erasures)
                .where(and_(erasures.c.subject_id == subject_id, erasures.c.destroyed_at.is_(None)))
                .values(destroyed_at=at, receipt=receipt)
            )

    def cancel_erasure(self, subject_id: str) -> bool:
        """Removes a pending (not yet destroyed) entry; False if there is none."""
        with self._tx() as conn:
            res = conn.execute(
                delete(erasures).where(
                    and_(erasures.c.subject_id == subject_id, erasures.c.destroyed_at.is_(None))
                )
            )
        return res.rowcount == 1

    def due_erasures(self, now_us: int, region: str | None = None) -> list[ErasureEntry]:
        cond = and_(erasures.c.destroyed_at.is_(None), erasures.c.destroy_after <= now_us)
        if region is not None:
            cond = and_(cond, erasures.c.region == region)
        with self._tx() as conn:
            rows = conn.execute(select(*_ERASURE_COLS).where(cond)).all()
        return [ErasureEntry(*r) for r in rows]

    def destroyed_erasures(self) -> list[ErasureEntry]:
        with self._tx() as conn:
            rows = conn.execute(
                select(*_ERASURE_COLS)
                .where(erasures.c.destroyed_at.is_not(None))
                .order_by(erasures.c.destroyed_at)
            ).all()
        return [ErasureEntry(*r) for r in rows]


class Revocations:
    """The revoked token ids, as this node knows them.

    A background thread polls the control database every ``interval`` seconds,
    so a revocation made through any node is effective here within about that
    long. If the list cannot be refreshed for ``max_staleness`` seconds,
    :meth:`is_revoked` raises — every token is refused (fail closed) rather
    than trusting a list that may miss revocations.
    """

    def __init__(
        self,
        store: ControlStore,
        interval: float = 0.25,
        max_staleness: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._interval = interval
        self._max_staleness = max_staleness
        self._clock = clock
        self._revoked: set[str] = set()
        self._cursor = 0
        self._fresh_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> None:
        rows = self._store.revoked_since(self._cursor)
        for jti, at in rows:
            self._revoked.add(jti)
            self._cursor = max(self._cursor, at)
        self._fresh_at = self._clock()

    def add(self, jti: str) -> None:
        """Effective on this node at once (the poll spreads it to the others)."""
        self._revoked.add(jti)

    def is_revoked(self, jti: str) -> bool:
        if self._clock() - self._fresh_at > self._max_staleness:
            raise StoreUnavailable("token revocation list is stale")
        return jti in self._revoked

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="revocations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except StoreUnavailable:
                log.warning("cannot refresh the token revocation list")

"""Control-plane repository and the node's view of token revocations."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update

from vault.control._models import erasures, revoked_tokens, token_events
from vault.db import DuplicateKey, migrate, now_us, ping, transaction
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
class Revocation:
    """One row of the revocation list; ``seq`` is assigned by the database."""

    seq: int
    jti: str
    expires_at_us: int


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
    #: The key versions noted before the destroy (see :meth:`ControlStore.note_key_versions`).
    key_versions: tuple[int, ...] = ()


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
    erasures.c.key_versions,
)


def _erasure(row: Any) -> ErasureEntry:
    sid, region, mount, name, reason, requested, after, destroyed, receipt, versions = row
    noted = tuple(int(v) for v in versions.split(",") if v) if versions else ()
    return ErasureEntry(
        sid, region, mount, name, reason, requested, after, destroyed, receipt, noted
    )


_REVOCATION_COLS = (
    revoked_tokens.c.seq,
    revoked_tokens.c.jti,
    revoked_tokens.c.expires_at,
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

    def ping(self) -> bool:
        """Whether the control database answers a query now (the health probe)."""
        return ping(self.engine)

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

    def prune_revocations(self, expired_before_us: int) -> int:
        """Deletes the revocations of tokens that expired before
        ``expired_before_us`` (refused as expired anyway); how many."""
        with self._tx() as conn:
            done = conn.execute(
                delete(revoked_tokens).where(revoked_tokens.c.expires_at < expired_before_us)
            )
        return int(done.rowcount or 0)

    def revoked_among(self, jtis: Collection[str]) -> set[str]:
        """Which of ``jtis`` are revoked, as the database knows it now."""
        if not jtis:
            return set()
        with self._tx() as conn:
            rows = conn.execute(
                select(revoked_tokens.c.jti).where(revoked_tokens.c.jti.in_(sorted(jtis)))
            ).all()
        return {str(j) for (j,) in rows}

    def revocations_after(self, cursor: int, missing: Collection[int] = ()) -> list[Revocation]:
        """Revocations with ``seq > cursor``, and those whose seq is in ``missing``
        (below the cursor, not seen yet), in seq order; expired tokens included."""
        cond = revoked_tokens.c.seq > cursor
        if missing:
            cond = or_(cond, revoked_tokens.c.seq.in_(sorted(missing)))
        with self._tx() as conn:
            rows = conn.execute(
                select(*_REVOCATION_COLS).where(cond).order_by(revoked_tokens.c.seq)
            ).all()
        return [Revocation(int(seq), str(jti), int(exp)) for seq, jti, exp in rows]

    def live_revocations(self) -> tuple[int, list[Revocation]]:
        """The highest seq assigned so far (0 if none), then the revocations of
        every token that has not expired.

        In this order: a revocation committed in between is in the list or
        above the returned seq, never lost between the two reads.
        """
        with self._tx() as conn:
            top = conn.execute(select(func.max(revoked_tokens.c.seq))).scalar()
            rows = conn.execute(
                select(*_REVOCATION_COLS)
                .where(revoked_tokens.c.expires_at >= self._clock())
                .order_by(revoked_tokens.c.seq)
            ).all()
        live = [Revocation(int(seq), str(jti), int(exp)) for seq, jti, exp in rows]
        return int(top or 0), live

    # -- erasure ledger ------------------------------------------------------

    def erasure(self, subject_id: str) -> ErasureEntry | None:
        with self._tx() as conn:
            r = conn.execute(
                select(*_ERASURE_COLS).where(erasures.c.subject_id == subject_id)
            ).first()
        return _erasure(r) if r else None

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

    def release_claim(self, subject_id: str, claimed_at_us: int) -> None:
        """Gives up a claim whose holder failed part-way: the claim is left stale
        (claimed at 0), so the next caller or worker takes over at once, and a
        cancel stays refused (the key may already be destroyed)."""
        with self._tx() as conn:
            conn.execute(
                update(erasures)
                .where(
                    and_(
                        erasures.c.subject_id == subject_id,
                        erasures.c.destroyed_at.is_(None),
                        erasures.c.claimed_at == claimed_at_us,
                    )
                )
                .values(claimed_at=0)
            )

    def note_key_versions(self, subject_id: str, versions: tuple[int, ...]) -> None:
        """Notes the versions of the key an erasure is about to destroy (while
        the erasure is not done)."""
        with self._tx() as conn:
            conn.execute(
                update(erasures)
                .where(and_(erasures.c.subject_id == subject_id, erasures.c.destroyed_at.is_(None)))
                .values(key_versions=",".join(str(v) for v in versions))
            )

    def mark_destroyed(self, subject_id: str, at: int, receipt: str) -> None:
        with self._tx() as conn:
            conn.execute(
                update(erasures)
                .where(and_(erasures.c.subject_id == subject_id, erasures.c.destroyed_at.is_(None)))
                .values(destroyed_at=at, receipt=receipt)
            )

    def cancel_erasure(self, subject_id: str) -> bool:
        """Removes a pending entry that no node has claimed (a claimed one may have
        its key destroyed already); False if there is none."""
        with self._tx() as conn:
            res = conn.execute(
                delete(erasures).where(
                    and_(
                        erasures.c.subject_id == subject_id,
                        erasures.c.destroyed_at.is_(None),
                        erasures.c.claimed_at.is_(None),
                    )
                )
            )
        return res.rowcount == 1

    def due_erasures(self, now_us: int, region: str | None = None) -> list[ErasureEntry]:
        cond = and_(erasures.c.destroyed_at.is_(None), erasures.c.destroy_after <= now_us)
        if region is not None:
            cond = and_(cond, erasures.c.region == region)
        with self._tx() as conn:
            rows = conn.execute(select(*_ERASURE_COLS).where(cond)).all()
        return [_erasure(r) for r in rows]

    def pending_erasures(self, regions: list[str]) -> int:
        """How many erasures of ``regions`` still wait for their key's destruction."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(erasures)
                    .where(and_(erasures.c.destroyed_at.is_(None), erasures.c.region.in_(regions)))
                ).scalar_one()
            )

    def destroyed_erasures(self) -> list[ErasureEntry]:
        with self._tx() as conn:
            rows = conn.execute(
                select(*_ERASURE_COLS)
                .where(erasures.c.destroyed_at.is_not(None))
                .order_by(erasures.c.destroyed_at)
            ).all()
        return [_erasure(r) for r in rows]


class Revocations:
    """The revoked token ids, as this node knows them.

    A background thread polls the control database every ``interval`` seconds,
    so a revocation made through any node is effective here within about that
    long. If the list cannot be refreshed for ``max_staleness`` seconds,
    :meth:`is_revoked` raises — every token is refused (fail closed) rather
    than trusting a list that may miss revocations.

    The poll follows ``revoked_tokens.seq``, which the database assigns, never
    a node's clock. The cursor is the highest seq seen. A seq is taken at
    insert, not at commit, so on PostgreSQL a revocation can become visible
    after one with a higher seq; every seq skipped below the cursor is
    therefore *missing* and asked for again on each poll until it shows up
    (it is effective here one poll after its commit) or ``gap_horizon``
    seconds pass (a rolled-back insert leaves a seq that never shows up). As a
    backstop every ``reload_interval`` seconds the whole list of live
    revocations is read again: it catches a revocation whose commit took
    longer than the horizon, and those in flight when this node started (the
    first read sets the cursor to the highest seq assigned at that moment).
    So no committed revocation is missed for longer than ``reload_interval``,
    and ordinarily none for longer than one poll.
    """

    #: Missing seqs remembered at most (the oldest are dropped first; the
    #: periodic reload still catches any of them that commits).
    MAX_MISSING = 10_000
    #: A revoked token is forgotten this long after it expired (an expired token
    #: is refused as such; the margin covers nodes whose clocks run behind).
    FORGET_AFTER_US = 3600 * 1_000_000
    #: The expiry assumed for a revocation added without one (the longest
    #: token life, 30 days).
    DEFAULT_TTL_US = 30 * 86400 * 1_000_000

    def __init__(
        self,
        store: ControlStore,
        interval: float = 0.25,
        max_staleness: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        gap_horizon: float = 30.0,
        reload_interval: float = 30.0,
        wall: Callable[[], int] = now_us,
    ) -> None:
        self._store = store
        self._wall = wall
        self._interval = interval
        self._max_staleness = max_staleness
        self._clock = clock
        self._gap_horizon = gap_horizon
        self._reload_interval = reload_interval
        # Revoked token id -> its expiry (microseconds since the epoch).
        self._revoked: dict[str, int] = {}
        self._cursor = 0
        # Missing seq -> when it was first missed; insertion order is time order.
        self._missing: dict[int, float] = {}
        self._loaded = False
        self._reload_due = float("-inf")
        self._fresh_at = float("-inf")
        self._refreshing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> None:
        with self._refreshing:
            now = self._clock()
            if now >= self._reload_due:
                self._reload()
                self._reload_due = now + self._reload_interval
            self._poll(now)
            self._fresh_at = now

    def _reload(self) -> None:
        top, live = self._store.live_revocations()
        for r in live:
            self._revoked[r.jti] = r.expires_at_us
            self._missing.pop(r.seq, None)
        forget = self._wall() - self.FORGET_AFTER_US
        for jti in [j for j, exp in self._revoked.items() if exp < forget]:
            del self._revoked[jti]
        if not self._loaded:
            self._cursor = top
            self._loaded = True

    def _poll(self, now: float) -> None:
        for seq, since in list(self._missing.items()):
            if now - since <= self._gap_horizon:
                break
            del self._missing[seq]
        for r in self._store.revocations_after(self._cursor, self._missing.keys()):
            self._revoked[r.jti] = r.expires_at_us
            if r.seq > self._cursor:
                for skipped in range(max(self._cursor + 1, r.seq - self.MAX_MISSING), r.seq):
                    self._missing[skipped] = now
                self._cursor = r.seq
            else:
                self._missing.pop(r.seq, None)
        while len(self._missing) > self.MAX_MISSING:
            del self._missing[next(iter(self._missing))]

    @property
    def cursor(self) -> int:
        """The highest revocation seq this node has read."""
        return self._cursor

    @property
    def missing(self) -> frozenset[int]:
        """Seqs below the cursor not seen yet, still being asked for."""
        with self._refreshing:
            return frozenset(self._missing)

    def add(self, jti: str, expires_at_us: int | None = None) -> None:
        """Effective on this node at once (the poll spreads it to the others);
        remembered until the token expires (the longest token life if not given)."""
        if expires_at_us is None:
            expires_at_us = self._wall() + self.DEFAULT_TTL_US
        self._revoked[jti] = max(expires_at_us, self._revoked.get(jti, 0))

    def __len__(self) -> int:
        """Revoked token ids remembered (tokens not long expired)."""
        return len(self._revoked)

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

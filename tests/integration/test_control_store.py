"""The control store's revocation list on SQLite and on PostgreSQL: the schema
migration to database-assigned sequence numbers, and the poller's handling of
seqs that become visible out of order, never, or while the node starts."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, insert, text

import vault.control._store as control_store
from tests.conftest import postgres_database
from vault.control import ControlStore, Revocations
from vault.control._models import revoked_tokens
from vault.db import make_engine, now_us

pytestmark = pytest.mark.integration

HOUR_US = 3600 * 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        e = make_engine(f"sqlite:///{tmp_path / 'control.db'}")
        yield e
        e.dispose()
    else:
        with postgres_database("pdvault_control") as url:
            e = make_engine(url)
            yield e
            e.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with postgres_database("pdvault_control") as url:
        e = make_engine(url)
        yield e
        e.dispose()


def jti() -> str:
    return secrets.token_urlsafe(16)


def _migrate_to(engine: Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(control_store.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def test_existing_revocations_are_numbered_in_the_order_they_were_made(engine: Engine) -> None:
    _migrate_to(engine, "c0003")
    live = now_us() + HOUR_US
    old = [(jti(), at) for at in (300, 100, 200)]
    with engine.begin() as conn:
        for j, at in old:
            conn.execute(
                text(
                    "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES (:j, :e, :a)"
                ),
                {"j": j, "e": live, "a": at},
            )
    store = ControlStore(engine)  # migrates to head
    top, rows = store.live_revocations()
    by_time = [j for j, _ in sorted(old, key=lambda r: r[1])]
    assert [r.jti for r in rows] == by_time and [r.seq for r in rows] == [1, 2, 3] and top == 3
    assert not store.revoke(by_time[0], live)  # jti stays unique
    new = jti()
    assert store.revoke(new, live)
    assert [r.jti for r in store.revocations_after(3)] == [new]


def test_a_revocation_is_read_by_seq_whatever_the_revoking_clock_said(engine: Engine) -> None:
    live = now_us() + HOUR_US
    ahead = ControlStore(engine, clock=lambda: now_us() + 10 * HOUR_US)
    behind = ControlStore(engine, clock=lambda: now_us() - 10 * HOUR_US)
    poller = Revocations(ControlStore(engine))
    first, second = jti(), jti()
    assert ahead.revoke(first, live)
    poller.refresh()
    assert behind.revoke(second, live)
    poller.refresh()
    assert poller.is_revoked(first) and poller.is_revoked(second)
    assert poller.missing == frozenset()


def test_a_seq_committed_after_a_higher_one_is_still_read(pg_engine: Engine) -> None:
    store = ControlStore(pg_engine)
    poller = Revocations(store)
    live = now_us() + HOUR_US
    slow, fast = jti(), jti()
    with pg_engine.connect() as held:
        tx = held.begin()
        held.execute(insert(revoked_tokens).values(jti=slow, expires_at=live, revoked_at=0))
        assert store.revoke(fast, live)  # a higher seq, committed first
        poller.refresh()
        assert poller.is_revoked(fast) and not poller.is_revoked(slow)
        assert len(poller.missing) == 1
        tx.commit()
    poller.refresh()
    assert poller.is_revoked(slow)
    assert poller.missing == frozenset()


def test_a_seq_that_never_commits_is_given_up_after_the_horizon(pg_engine: Engine) -> None:
    store = ControlStore(pg_engine)
    clock = FakeClock()
    poller = Revocations(store, clock=clock, gap_horizon=30, reload_interval=3600)
    live = now_us() + HOUR_US
    a, b = jti(), jti()
    assert store.revoke(a, live)
    assert not store.revoke(a, live)  # the duplicate took a seq and rolled back
    assert store.revoke(b, live)
    poller.refresh()
    assert poller.is_revoked(b) and len(poller.missing) == 1
    clock.now += 29
    poller.refresh()
    assert len(poller.missing) == 1
    clock.now += 2
    poller.refresh()
    assert poller.missing == frozenset()


def test_a_revocation_in_flight_when_the_node_starts_is_read_by_the_next_reload(
    pg_engine: Engine,
) -> None:
    store = ControlStore(pg_engine)
    clock = FakeClock()
    live = now_us() + HOUR_US
    slow, fast = jti(), jti()
    with pg_engine.connect() as held:
        tx = held.begin()
        held.execute(insert(revoked_tokens).values(jti=slow, expires_at=live, revoked_at=0))
        assert store.revoke(fast, live)
        poller = Revocations(store, clock=clock, max_staleness=1e9, reload_interval=30)
        tx.commit()
    poller.refresh()
    assert poller.is_revoked(fast) and not poller.is_revoked(slow)  # below the first cursor
    clock.now += 30
    poller.refresh()
    assert poller.is_revoked(slow)


def test_a_huge_jump_in_seq_remembers_a_bounded_number_of_missing_seqs(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ControlStore(engine)
    monkeypatch.setattr(Revocations, "MAX_MISSING", 5)
    poller = Revocations(store)
    live = now_us() + HOUR_US
    with engine.begin() as conn:
        conn.execute(
            insert(revoked_tokens).values(seq=1000, jti=jti(), expires_at=live, revoked_at=0)
        )
    poller.refresh()
    assert poller.cursor == 1000
    assert poller.missing == frozenset(range(995, 1000))


def test_revocations_of_tokens_long_expired_are_forgotten_and_pruned(engine: Engine) -> None:
    """A node forgets a revoked token an hour after it expired (it is refused as
    expired anyway) and the database drops its row; later revocations, made
    after the prune, are still read by seq."""
    wall = [now_us()]
    store = ControlStore(engine)
    clock = FakeClock()
    poller = Revocations(store, clock=clock, reload_interval=30, wall=lambda: wall[0])
    soon, later = jti(), jti()
    assert store.revoke(soon, wall[0] + HOUR_US)
    assert store.revoke(later, wall[0] + 48 * HOUR_US)
    poller.refresh()
    assert poller.is_revoked(soon) and poller.is_revoked(later) and len(poller) == 2

    wall[0] += HOUR_US + HOUR_US // 2  # `soon` expired half an hour ago: kept
    clock.now += 31
    poller.refresh()
    assert poller.is_revoked(soon) and len(poller) == 2
    assert store.prune_revocations(wall[0] - Revocations.FORGET_AFTER_US) == 0

    wall[0] += HOUR_US  # now more than an hour past its expiry: forgotten
    clock.now += 31
    poller.refresh()
    assert not poller.is_revoked(soon) and poller.is_revoked(later) and len(poller) == 1
    assert store.prune_revocations(wall[0] - Revocations.FORGET_AFTER_US) == 1
    assert store.revoked_among([soon, later]) == {later}

    newer = jti()
    assert store.revoke(newer, wall[0] + HOUR_US)
    clock.now += 1
    poller.refresh()
    assert poller.is_revoked(newer) and poller.is_revoked(later)


def test_a_revocation_added_without_its_expiry_is_kept_for_the_longest_token_life() -> None:
    class NoRows:
        def live_revocations(self) -> tuple[int, list[object]]:
            return 0, []

        def revocations_after(self, cursor: int, missing: object = ()) -> list[object]:
            return []

    wall = [now_us()]
    clock = FakeClock()
    poller = Revocations(
        NoRows(),  # type: ignore[arg-type]
        clock=clock,
        reload_interval=30,
        wall=lambda: wall[0],
    )
    poller.add("t1")
    wall[0] += Revocations.DEFAULT_TTL_US  # the longest a token lives
    clock.now += 31
    poller.refresh()
    assert poller.is_revoked("t1")
    wall[0] += Revocations.FORGET_AFTER_US + 1
    clock.now += 31
    poller.refresh()
    assert not poller.is_revoked("t1")

"""The subject-key pool against real OpenBao and real databases: CreateSubject
claims a subject minted ahead (no key-service call), falls back to the inline
path when the pool is empty, never hands one entry out twice — not even to two
nodes at once — keeps unclaimed entries over a restart, and a pooled subject
is erased exactly like any other."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import hvac.exceptions
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select

from tests.conftest import Bao, Stack, live_sql, postgres_database, start_stack
from vault import ids
from vault.cell._pool import KeyPool
from vault.client import VaultClientError
from vault.config import KeyPoolSettings
from vault.db import now_us
from vault.store import CellStore, PoolEntry, PoolStore, make_engine, migrate, subjects
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


def _wait(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _pool_ids(stack: Stack, region: str = "de") -> set[str]:
    return {r[0] for r in live_sql(stack.db_path(region), "SELECT id FROM subject_pool")}


def _depth(stack: Stack, region: str = "de") -> int:
    return stack.vault.parts.pools[region].status().depth


@pytest.fixture(scope="module")
def pool_stack(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A node whose pool only the tests fill (no filler): every test starts and
    ends with an empty pool."""
    s = start_stack(bao, tmp_path_factory.mktemp("pool-node"))
    yield s
    s.stop()


def test_create_subject_takes_pooled_subjects_then_falls_back_inline(pool_stack: Stack) -> None:
    stack = pool_stack
    assert _depth(stack) == 0
    assert stack.vault.parts.pools["de"].mint(3) == 3
    minted = _pool_ids(stack)
    assert len(minted) == 3
    c = stack.client()
    calls = dict(stack.provider.calls)

    created = [c.create_subject("DE").subject_id for _ in range(3)]
    assert set(created) == minted  # each pooled subject, once
    assert dict(stack.provider.calls) == calls  # not one key-service call
    assert _depth(stack) == 0

    inline = c.create_subject("DE").subject_id  # the pool is empty: the inline path
    assert inline not in minted
    assert stack.provider.calls["create_key"] == calls.get("create_key", 0) + 1

    # Minted by this node: its data key is still in memory, the write needs no unwrap.
    decrypts = stack.provider.calls["decrypt"]
    r = c.put_record(created[0], "user.name", {"first": "Ada"})
    assert stack.provider.calls["decrypt"] == decrypts
    # And its wrap opens: bound to its id and region.
    stack.node.cells["de"]._data_keys.clear()
    assert c.get_record(r.record_id).fields == {"first": "Ada"}
    row = stack.node.cells["de"]._store.get_subject(created[0])
    assert row is not None and row.key_name == f"subject-{created[0]}"
    assert row.key_mount in stack.regions.regions["de"].transit_mounts


def test_the_filler_waits_while_a_burst_is_served_from_the_pool(pool_stack: Stack) -> None:
    """Claims faster than the burst rate hold the filler back (it would compete
    with the calls for the CPU and OpenBao) until the pool holds a batch or
    less, or the burst is over; a trickle of claims does not hold it back."""
    stack = pool_stack
    node_pool = stack.vault.parts.pools["de"]
    pool = KeyPool(
        node_pool.region,
        node_pool._keys,
        node_pool._store,
        KeyPoolSettings(size=8, batch=2, burst_claims_per_second=2.0),
    )
    c = stack.client()
    try:
        assert [pool.refill() for _ in range(5)] == [2, 2, 2, 2, 0]
        assert _depth(stack) == 8
        for _ in range(5):  # a burst: 5 claims in well under 2.5 s
            c.create_subject("DE")
        assert pool.refill() == 0 and _depth(stack) == 3
        c.create_subject("DE")
        assert _depth(stack) == 2
        assert pool.refill() == 2  # a batch or less left: the filler mints whatever the rate
        time.sleep(1.2)  # the burst is over
        assert [pool.refill(), pool.refill()] == [2, 2] and _depth(stack) == 8
        c.create_subject("DE")  # a trickle: one claim in over a second
        time.sleep(1.2)
        assert pool.refill() == 1 and _depth(stack) == 8
    finally:
        pool.close()
        while _depth(stack):  # the module's node starts every test with an empty pool
            c.create_subject("DE")


def test_pooled_subject_keys_are_derived_and_the_flag_survives_the_claim(
    pool_stack: Stack,
) -> None:
    stack = pool_stack
    assert stack.vault.parts.pools["de"].mint(2) == 2
    rows = live_sql(stack.db_path("de"), "SELECT id, key_derived FROM subject_pool")
    assert sorted(d for _, d in rows) == [1, 1]
    c = stack.client()
    sid = c.create_subject("DE").subject_id
    assert sid in {r[0] for r in rows}
    assert live_sql(stack.db_path("de"), "SELECT key_derived FROM subjects WHERE id = ?", sid) == [
        [1]
    ]
    key = stack.bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    assert key["data"]["derived"]
    # Its wrap opens after the cache is gone: unwrapped with the context.
    rid = c.put_record(sid, "user.name", {"first": "Ada"}).record_id
    stack.node.cells["de"]._data_keys.clear()
    assert c.get_record(rid).fields == {"first": "Ada"}
    c.create_subject("DE")  # leave the pool empty for the next test


def test_an_idempotent_retry_claims_one_entry(pool_stack: Stack) -> None:
    stack = pool_stack
    stack.vault.parts.pools["de"].mint(2)
    minted = _pool_ids(stack)
    c = stack.client()
    first = c.create_subject("DE", idempotency_key="pool-retry-1")
    again = c.create_subject("DE", idempotency_key="pool-retry-1")
    assert first.subject_id == again.subject_id and first.subject_id in minted
    assert _pool_ids(stack) == minted - {first.subject_id}
    with pytest.raises(VaultClientError) as e:  # the same key for another request
        c.create_subject("DE", idempotency_key="pool-retry-1", minor=True)
    assert e.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert _pool_ids(stack) == minted - {first.subject_id}  # nothing claimed by the refusal
    c.create_subject("DE")  # leaves the pool empty for the next test
    assert _depth(stack) == 0


def test_erasing_a_pooled_subject_destroys_its_key(pool_stack: Stack, canary: str) -> None:
    stack = pool_stack
    stack.vault.parts.pools["de"].mint(1)
    (sid,) = _pool_ids(stack)
    c = stack.client(stack.issue("essential.subject_rights"))
    assert c.create_subject("DE").subject_id == sid
    rid = c.put_record(sid, "user.contact.email", {"address": f"{canary}@example.org"}).record_id
    receipt = c.erase_subject(sid)
    assert receipt.state == pb.ERASURE_STATE_COMPLETED
    assert receipt.key_name.endswith(f"/subject-{sid}")
    assert list(receipt.key_versions_destroyed) == [1]
    assert "refused" in receipt.evidence
    mount = receipt.key_name.split("/")[0]
    with pytest.raises(hvac.exceptions.InvalidPath):
        stack.bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point=mount)
    with pytest.raises(VaultClientError) as e:
        c.get_record(rid)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_the_orphan_key_reaper_leaves_unclaimed_pool_entries_alone(
    pool_stack: Stack, canary: str
) -> None:
    """A pool entry's key exists before its subject row, on purpose: the reaper
    of keys without a subject (left by a crash) must not take it."""
    stack = pool_stack
    stack.vault.parts.pools["de"].mint(1)
    (sid,) = _pool_ids(stack)
    cell = stack.vault.parts.cells["de"]
    cell.reap_orphan_keys(0)  # every key counts as old enough
    assert _pool_ids(stack) == {sid}
    c = stack.client(stack.issue("essential.subject_rights"))
    assert c.create_subject("DE").subject_id == sid
    rid = c.put_record(sid, "user.name", {"first": canary}).record_id
    stack.vault.parts.data_keys["de"].evict(sid)  # the read must unwrap with the key
    assert c.get_record(rid).fields["first"] == canary


def test_two_nodes_claiming_at_once_never_share_an_entry(
    two_nodes: tuple[Stack, Stack],
) -> None:
    first, second = two_nodes
    first.vault.parts.pools["de"].mint(30)
    minted = _pool_ids(first)
    assert len(minted) == 30
    token = first.issue()
    created: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def create(node: Stack) -> None:
        c = node.client(token)
        for _ in range(10):
            try:
                sid = c.create_subject("DE").subject_id
            except BaseException as e:  # reported below
                errors.append(e)
                return
            with lock:
                created.append(sid)

    threads = [threading.Thread(target=create, args=(n,)) for n in (first, second) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(created) == 80 and len(set(created)) == 80
    assert minted <= set(created)  # every pooled subject handed out, once
    assert _pool_ids(first) == set()


def test_the_filler_refills_an_exhausted_pool(bao: Bao, tmp_path: Path) -> None:
    stack = start_stack(bao, tmp_path, pool=KeyPoolSettings(size=4, batch=4, poll_seconds=0.5))
    try:
        pool = stack.vault.parts.pools["de"]
        _wait(lambda: _depth(stack) == 4, "the first fill")
        c = stack.client()
        created = {c.create_subject("DE").subject_id for _ in range(4)}
        assert len(created) == 4
        _wait(lambda: _depth(stack) == 4, "the refill")
        st = pool.status()
        assert st.minted == 8  # four claimed, four minted again; no more
        depth = {"region": "de"}  # what the filler saw last, on the metrics endpoint
        _wait(
            lambda: REGISTRY.get_sample_value("pdvault_key_pool_depth", depth) == 4,
            "the depth gauge",
        )
        assert st.rate_per_second is not None and st.rate_per_second > 0
        assert not created & _pool_ids(stack)  # a claimed entry is never back
        out = subprocess.run(
            [sys.executable, "-m", "vault.cli", "pool", "status", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        de = next(line for line in out.stdout.splitlines() if line.strip("│ ").startswith("de "))
        assert [c.strip() for c in de.strip("│ ").split("│")][:3] == ["de", "4", "8"]
    finally:
        stack.stop()


def test_unclaimed_entries_survive_a_restart(bao: Bao, tmp_path: Path) -> None:
    settings = KeyPoolSettings(size=3, batch=3, poll_seconds=0.2)
    stack = start_stack(bao, tmp_path, pool=settings)
    try:
        _wait(lambda: all(_depth(stack, r) == 3 for r in stack.regions.regions), "the fill")
        kept = _pool_ids(stack)
    finally:
        stack.stop()
    stack = start_stack(bao, tmp_path, pool=settings)
    try:
        time.sleep(1.0)  # five filler rounds: none may mint what is already there
        assert _pool_ids(stack) == kept
        assert stack.vault.parts.pools["de"].status().minted == 3
        assert stack.client().create_subject("DE").subject_id in kept
    finally:
        stack.stop()


# -- the claim statement itself, on both databases, from two engines ("nodes") ----


def _claim_from_two_engines(url: str, n: int = 120) -> tuple[list[str], set[str], Engine]:
    a, b = make_engine(url), make_engine(url)
    migrate(a)
    entries = [
        PoolEntry(ids.new_subject_id("de"), "transit-de", f"k{i}", f"wrapped-{i}", now_us())
        for i in range(n)
    ]
    PoolStore(a).add(entries, now_us(), 1)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim(store: CellStore) -> None:
        while (row := store.insert_pooled_subject("de", False, now_us(), None)) is not None:
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=claim, args=(CellStore(e),)) for e in (a, b) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.dispose()
    return claimed, {e.id for e in entries}, a


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_claims_hand_each_entry_out_once(database: str, tmp_path: Path) -> None:
    def check(url: str) -> None:
        claimed, minted, engine = _claim_from_two_engines(url)
        try:
            assert sorted(claimed) == sorted(minted)  # all of them, none twice
            assert PoolStore(engine).depth() == 0
            with engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(subjects)).scalar_one() == len(
                    minted
                )
        finally:
            engine.dispose()

    if database == "sqlite":
        check(f"sqlite:///{tmp_path / 'de.db'}")
    else:
        with postgres_database() as url:
            check(url)

"""The data-key cache keeps OpenBao off the hot path; OpenBao or the database down fails closed."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, start_stack
from tests.integration.conftest import TcpProxy, through
from vault.client import VaultClient, VaultClientError
from vault.config import CacheSettings

pytestmark = pytest.mark.integration


def _audit_decrypts(bao: Bao) -> int:
    return bao.transit_requests("decrypt")


def test_warm_reads_make_no_openbao_call(stack: Stack, client: VaultClient) -> None:
    s = client.create_subject("DE")
    recs = [
        client.put_record(s.subject_id, "user.name", {"first": str(i)}).record_id for i in range(5)
    ]
    client.get_record(recs[0])  # warm (creation already cached the key)
    before_calls = sum(stack.provider.calls.values())
    before_audit = _audit_decrypts(stack.bao)
    for _ in range(40):
        for rid in recs:
            client.get_record(rid)
        client.list_records(s.subject_id)
    assert sum(stack.provider.calls.values()) == before_calls
    assert _audit_decrypts(stack.bao) == before_audit


def test_without_the_cache_every_read_unwraps(bao: Bao, tmp_path: Path) -> None:
    """The counters above can see Transit calls: with the cache off, each read is one decrypt."""
    cold = start_stack(bao, tmp_path, cache=CacheSettings(max_entries=0))
    try:
        c = cold.client()
        s = c.create_subject("DE")
        r = c.put_record(s.subject_id, "user.name", {"first": "1"})
        before = cold.provider.calls["decrypt"]
        before_audit = _audit_decrypts(bao)
        for _ in range(10):
            c.get_record(r.record_id)
        assert cold.provider.calls["decrypt"] - before == 10
        assert _audit_decrypts(bao) - before_audit == 10
    finally:
        cold.stop()


def test_expired_cache_entry_is_unwrapped_again(bao: Bao, tmp_path: Path) -> None:
    """A cached data key is used until max_age_seconds after it was cached, by the
    cache's clock, then unwrapped from OpenBao once and cached again."""
    now = [1_000.0]
    stack = start_stack(
        bao,
        tmp_path,
        cache=CacheSettings(max_entries=100, max_age_seconds=60),
        cache_clock=lambda: now[0],
    )
    try:
        _expiry_by_the_cache_clock(stack, stack.client(), now)
    finally:
        stack.stop()


def _expiry_by_the_cache_clock(stack: Stack, client: VaultClient, now: list[float]) -> None:
    s = client.create_subject("DE")  # caches the new subject's data key at t=1000
    r = client.put_record(s.subject_id, "user.name", {"first": "1"})
    before, before_audit = stack.provider.calls["decrypt"], _audit_decrypts(stack.bao)

    def reads_cost(advance: float) -> int:
        now[0] += advance
        start = stack.provider.calls["decrypt"]
        assert dict(client.get_record(r.record_id).fields) == {"first": "1"}
        return stack.provider.calls["decrypt"] - start

    assert reads_cost(0) == 0
    assert reads_cost(59.9) == 0  # t=1059.9: still fresh
    assert reads_cost(0.2) == 1  # t=1060.1: expired, unwrapped again (and cached from now)
    assert reads_cost(59.8) == 0  # t=1119.9: the new entry is fresh
    assert reads_cost(0.2) == 1  # t=1120.1: expired again
    assert stack.provider.calls["decrypt"] - before == 2
    assert _audit_decrypts(stack.bao) - before_audit == 2  # OpenBao saw exactly those


def _count(stack: Stack, region: str, table: str) -> int:
    with sqlite3.connect(stack.db_path(region)) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _unavailable(fn, *args, **kwargs) -> VaultClientError:  # type: ignore[no-untyped-def]
    with pytest.raises(VaultClientError) as e:
        fn(*args, **kwargs)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE, e.value
    return e.value


def test_openbao_down_fails_closed_and_recovers_without_restart(
    own_bao: Bao, tmp_path: Path, canary: str
) -> None:
    stack = start_stack(own_bao, tmp_path)
    try:
        c = stack.client()
        s = c.create_subject("DE")
        r = c.put_record(s.subject_id, "user.name", {"first": "Ada"})
        stack.vault.parts.data_keys["de"].clear()  # a cold subject: its key must come from OpenBao
        subjects, records = _count(stack, "de", "subjects"), _count(stack, "de", "records")

        own_bao.server.stop()
        e = _unavailable(c.create_subject, "DE")
        assert e.reason == "KEY_SERVICE_UNAVAILABLE"
        _unavailable(c.put_record, s.subject_id, "user.name", {"first": canary})
        _unavailable(
            c.put_record, s.subject_id, "user.name", {"first": canary}, record_id=r.record_id
        )
        _unavailable(c.get_record, r.record_id)
        assert (_count(stack, "de", "subjects"), _count(stack, "de", "records")) == (
            subjects,
            records,
        )

        own_bao.server.start()  # unsealed again by the devstack; the vault is not restarted
        deadline = time.monotonic() + 30
        while True:
            try:
                got = c.get_record(r.record_id)
                break
            except VaultClientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert dict(got.fields) == {"first": "Ada"} and got.version == 1
        c.put_record(
            s.subject_id, "user.name", {"first": "Grace"}, record_id=r.record_id, expected_version=1
        )
        assert c.get_subject(c.create_subject("DE").subject_id).region == "de"
    finally:
        stack.stop()


def test_database_down_is_unavailable_and_recovers(
    bao: Bao, pg_url: str, pg_proxy: TcpProxy, tmp_path: Path
) -> None:
    """A cell whose PostgreSQL goes away answers UNAVAILABLE through gRPC, naming
    neither the database nor its address; the other cells go on; it serves again
    once the database is back, without a restart."""
    stack = start_stack(bao, tmp_path, database_urls={"de": through(pg_proxy, pg_url)})
    try:
        c = stack.client()
        s = c.create_subject("DE")
        r = c.put_record(s.subject_id, "user.name", {"first": "Ada"})

        pg_proxy.stop()
        for call, args in (
            (c.get_record, (r.record_id,)),
            (c.get_subject, (s.subject_id,)),
            (c.create_subject, ("DE",)),
            (c.list_records, (s.subject_id,)),
        ):
            e = _unavailable(call, *args)
            assert e.reason == "STORE_UNAVAILABLE", e
            for leak in ("127.0.0.1", str(pg_proxy.port), "postgres", pg_url.rsplit("/", 1)[1]):
                assert leak not in e.message, e.message
        assert c.get_subject(c.create_subject("US").subject_id).region == "us"

        pg_proxy.start()  # the same port: the node's engine finds it again
        assert dict(c.get_record(r.record_id).fields) == {"first": "Ada"}
    finally:
        stack.stop()

"""The production store: a cell on the real PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from tests.conftest import Bao, Stack, start_stack
from tests.integration.conftest import PG_ADMIN_DSN
from vault.client import VaultClientError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_stack(bao: Bao, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("pg-node"), database_urls={"de": pg_url})
    yield s
    s.stop()


def test_schema_is_migrated_by_alembic(pg_stack: Stack, pg_url: str) -> None:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        (rev,) = db.execute("SELECT version_num FROM alembic_version").fetchone()  # type: ignore[misc]
        cols = {
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'records'"
            )
        }
    assert rev == "0006_scale_pool"
    assert cols == {
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
    }


def test_round_trip_on_postgresql(pg_stack: Stack, pg_url: str, canary: str) -> None:
    c = pg_stack.client()
    s = c.create_subject("DE")
    r = c.put_record(s.subject_id, "user.contact.email", {"address": canary})
    assert c.get_record(r.record_id).fields["address"] == canary
    r2 = c.put_record(
        s.subject_id,
        "user.contact.email",
        {"address": "x"},
        record_id=r.record_id,
        expected_version=1,
    )
    assert r2.version == 2
    with pytest.raises(VaultClientError) as e:
        c.put_record(
            s.subject_id,
            "user.contact.email",
            {"address": "y"},
            record_id=r.record_id,
            expected_version=1,
        )
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    for i in range(7):
        c.put_record(s.subject_id, "user.name", {"first": str(i)})
    assert len(list(c.iter_records(s.subject_id, page_size=3))) == 8
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        rows = db.execute("SELECT envelope FROM records").fetchall()
    assert rows and all(canary.encode() not in bytes(env) for (env,) in rows)
    c.delete_record(r.record_id)
    assert len(c.list_records(s.subject_id).records) == 7


def test_idempotent_create_on_postgresql(pg_stack: Stack) -> None:
    c = pg_stack.client()
    a = c.create_subject("AT", idempotency_key="pg-1")
    assert c.create_subject("AT", idempotency_key="pg-1").subject_id == a.subject_id


def test_pg_dump_taken_before_erasure_no_longer_decrypts(
    pg_stack: Stack, pg_url: str, tmp_path_factory: pytest.TempPathFactory, canary: str
) -> None:
    """A real pg_dump before the erasure, restored into a fresh database and cell."""
    rights = pg_stack.client(pg_stack.issue("essential.subject_rights"))
    gone = rights.create_subject("DE")
    gone_rec = rights.put_record(gone.subject_id, "user.name", {"first": canary})
    kept = rights.create_subject("DE")
    kept_rec = rights.put_record(kept.subject_id, "user.name", {"first": "Kept"})
    dump = tmp_path_factory.mktemp("pgdump") / "cell.dump"
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), dsn], check=True, timeout=120)
    rights.erase_subject(gone.subject_id)

    restored_db = f"pdvault_restored_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{restored_db}"')
    try:
        restored_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{restored_db}"
        subprocess.run(
            ["pg_restore", "--no-owner", "-d", restored_url.replace("+psycopg", ""), str(dump)],
            check=True,
            timeout=120,
        )
        node = start_stack(
            pg_stack.bao, tmp_path_factory.mktemp("pg-restored"), database_urls={"de": restored_url}
        )
        try:
            c = node.client(node.issue("essential.subject_rights"))
            with pytest.raises(VaultClientError) as e:
                c.get_record(gone_rec.record_id)
            assert e.value.code == grpc.StatusCode.DATA_LOSS
            assert c.get_record(kept_rec.record_id).fields == {"first": "Kept"}
        finally:
            node.stop()
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{restored_db}" WITH (FORCE)')

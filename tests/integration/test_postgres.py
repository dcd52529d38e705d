"""The production store: a cell on the real PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
import yaml
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy.exc import TimeoutError as SATimeoutError

import vault.control
import vault.store
from tests.conftest import Bao, Stack, postgres_database, start_stack
from tests.integration.conftest import PG_ADMIN_DSN
from vault.cli import main as cli_main
from vault.client import VaultClientError
from vault.config import PoolSettings, default_regions_file
from vault.db import make_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pg_stack(bao: Bao, pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("pg-node"), database_urls={"de": pg_url})
    yield s
    s.stop()


def _head(migrations: Path) -> str:
    """The newest revision of an alembic script directory."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations))
    return str(ScriptDirectory.from_config(cfg).get_current_head())


CELL_HEAD = _head(Path(vault.store.__file__).parent / "migrations")
CONTROL_HEAD = _head(Path(vault.control.__file__).parent / "migrations")


def test_schema_is_migrated_by_alembic(pg_stack: Stack, pg_url: str) -> None:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as db:
        (rev,) = db.execute("SELECT version_num FROM alembic_version").fetchone()  # type: ignore[misc]
        cols = {
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'records'"
            )
        }
    assert rev == CELL_HEAD
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
        "dek_generation",
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


def _db_upgrade(*flags: str) -> subprocess.CompletedProcess[str]:
    """``pdvault db upgrade FLAGS`` in this process (the CLI's own entry point)."""
    argv = ["db", "upgrade", *flags]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _regions_file(tmp_path: Path, urls: dict[str, str]) -> Path:
    """The shipped regions file with some databases (region id, or "control") moved."""
    raw = yaml.safe_load(default_regions_file().read_text())
    for r in raw["regions"]:
        r["database_url"] = urls.get(r["id"], r["database_url"])
    raw["control"]["database_url"] = urls.get("control", raw["control"]["database_url"])
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_db_upgrade_migrates_the_chosen_cell_and_the_control_plane(tmp_path: Path) -> None:
    with postgres_database() as cell_url, postgres_database() as control_url:
        regions = _regions_file(tmp_path, {"de": cell_url, "control": control_url})
        done = _db_upgrade("--regions", str(regions), "--data-dir", str(tmp_path), "--region", "de")
        assert done.returncode == 0, done.stderr
        assert f"cell de: schema at revision {CELL_HEAD}" in done.stdout
        assert f"control plane: schema at revision {CONTROL_HEAD}" in done.stdout
        with psycopg.connect(cell_url.replace("+psycopg", "")) as db:
            assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
                (CELL_HEAD,)
            ]
        with psycopg.connect(control_url.replace("+psycopg", "")) as db:
            rows = db.execute("SELECT version_num FROM alembic_version_control").fetchall()
            assert rows == [(CONTROL_HEAD,)]
        # Only the chosen region: no other cell's SQLite file was made.
        assert not list(tmp_path.glob("cells/*.db"))
        again = _db_upgrade(
            "--regions", str(regions), "--data-dir", str(tmp_path), "--region", "de"
        )
        assert again.returncode == 0 and again.stdout == done.stdout


def test_db_upgrade_refuses_an_unknown_region_and_hides_the_url_of_a_dead_database(
    tmp_path: Path,
) -> None:
    unknown = _db_upgrade("--data-dir", str(tmp_path), "--region", "xx")
    assert unknown.returncode == 2 and "xx" in unknown.stderr
    dead = "postgresql+psycopg://postgres:SECRETPW@127.0.0.1:1/nothing"
    regions = _regions_file(tmp_path, {"de": dead})
    failed = _db_upgrade(
        "--regions", str(regions), "--data-dir", str(tmp_path), "--region", "de", "--no-control"
    )
    assert failed.returncode == 1
    assert "cell de: database unavailable" in failed.stderr
    assert "SECRETPW" not in failed.stderr + failed.stdout
    assert not (tmp_path / "control.db").exists()


def test_the_pool_of_a_postgresql_database_is_sized_by_the_settings(pg_url: str) -> None:
    engine = make_engine(pg_url, PoolSettings(size=3, max_overflow=1, timeout_seconds=0.5))
    try:
        held = [engine.connect() for _ in range(4)]
        with pytest.raises(SATimeoutError):
            engine.connect()  # 3 + 1 in use: the fifth waits, then gives up
        for c in held:
            c.close()
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    with pytest.raises(ValueError):
        PoolSettings(size=0)


@pytest.mark.parametrize(
    "flags", [("--db-pool-size", "0"), ("--db-max-overflow", "-1")], ids=["size", "overflow"]
)
def test_a_node_refuses_to_start_with_a_pool_out_of_range(
    tmp_path: Path, flags: tuple[str, str]
) -> None:
    repo = default_regions_file().parent
    done = subprocess.run(
        [
            *(sys.executable, "-m", "vault.cli", "serve", "--region", "de"),
            *("--config", str(repo), "--data-dir", str(tmp_path), *flags),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BAO_TOKEN": "unused", "BAO_ADDR": "http://127.0.0.1:1"},
    )
    assert done.returncode == 2
    assert "refusing to start: pool size must be >= 1, overflow >= 0" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing made


def test_subject_key_rotation_on_postgresql(pg_stack: Stack, bao: Bao) -> None:
    """The rotation job's SQL (claims, cursor, greatest()) on PostgreSQL, twice
    over: the second run finds nothing due and resumes nothing."""
    from vault.keys import TransitKeyRotator
    from vault.rotation import SubjectKeyRotation
    from vault.store import RotationStore

    c = pg_stack.client()
    sid = c.create_subject("DE").subject_id
    rid = c.put_record(sid, "user.contact.email", {"address": "pg@example.org"}).record_id
    store = RotationStore(pg_stack.vault.parts.stores["de"].engine)
    rotator = TransitKeyRotator.connect(bao.address, bao.server.rotator_token(pg_stack.regions))
    first = SubjectKeyRotation(store, rotator, "de").run(0)
    assert first.finished and first.rotated >= 1 and first.failed == 0
    assert store.current(sid) is not None and store.current(sid).key_version == 2  # type: ignore[union-attr]
    again = SubjectKeyRotation(store, rotator, "de").run(3600)
    assert again.finished and again.rotated == 0 and not again.resumed
    pg_stack.vault.parts.data_keys["de"].clear()
    assert c.get_record(rid).fields["address"] == "pg@example.org"

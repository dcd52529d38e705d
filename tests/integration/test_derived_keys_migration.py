"""Revision 0008_derived_keys on a cell that already holds subjects (SQLite and
PostgreSQL): the subjects made before it — non-derived keys, wraps bound by
associated data — are flagged legacy (``key_derived`` false) and stay
readable; a node on the upgraded cell makes derived keys; one rotation job
rotates both kinds (legacy by decrypt+encrypt, derived by Transit rewrap)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

import vault.store._migrate as cell_migrate
from tests.conftest import Bao, start_stack
from vault import ids
from vault.crypto import RecordContext, dek_associated_data, new_data_key, seal_fields
from vault.db import make_engine, now_us
from vault.keys import KeyRef, TransitKeyProvider, TransitKeyRotator
from vault.rotation import SubjectKeyRotation
from vault.store import RotationStore

pytestmark = pytest.mark.integration

RIGHTS = "essential.subject_rights"


def _migrate_to(engine: Engine, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(cell_migrate.__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _old_subject(engine: Engine, keys: TransitKeyProvider) -> tuple[str, str, str]:
    """A subject, its key and one record as a node before 0008 made them, and
    a pool entry minted then, written into the cell at revision 0007;
    (subject id, record id, pool entry id)."""
    sid, rid = ids.new_subject_id("de"), ids.new_record_id("de")
    ref = KeyRef("transit-de", f"subject-{sid}")  # not derived
    keys.create_key(ref)
    dek = new_data_key()
    wrapped = keys.wrap(ref, dek, dek_associated_data(sid, "de"))
    envelope = seal_fields(
        dek, RecordContext(rid, sid, "de", "user.contact.email", 1), {"address": "old@example.org"}
    )
    now = now_us()
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subjects (id, region, state, minor, key_mount, key_name, "
                "wrapped_dek, created_at, updated_at) VALUES "
                "(:id, 'de', 'active', false, :m, :n, :w, :t, :t)"
            ),
            {"id": sid, "m": ref.mount, "n": ref.name, "w": wrapped, "t": now},
        )
        conn.execute(
            text(
                "INSERT INTO records (id, subject_id, category, version, envelope, "
                "created_at, updated_at) VALUES (:id, :s, 'user.contact.email', 1, :e, :t, :t)"
            ),
            {"id": rid, "s": sid, "e": envelope, "t": now},
        )
    pooled = ids.new_subject_id("de")
    ref = KeyRef("transit-de", f"subject-{pooled}")  # not derived
    keys.create_key(ref)
    wrapped = keys.wrap(ref, new_data_key(), dek_associated_data(pooled, "de"))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subject_pool (id, key_mount, key_name, wrapped_dek, created_at) "
                "VALUES (:id, :m, :n, :w, :t)"
            ),
            {"id": pooled, "m": ref.mount, "n": ref.name, "w": wrapped, "t": now},
        )
    return sid, rid, pooled


def test_a_cell_at_0007_upgrades_with_its_subjects_legacy_and_readable(
    bao: Bao, database_url: str, tmp_path: Path
) -> None:
    engine = make_engine(database_url)
    try:
        _migrate_to(engine, "0007_scale_pool")
        keys = TransitKeyProvider.connect(bao.address, bao.node_token)
        old, old_rid, pooled = _old_subject(engine, keys)
    finally:
        engine.dispose()

    stack = start_stack(bao, tmp_path, database_urls={"de": database_url})  # migrates to head
    try:
        engine = stack.vault.parts.stores["de"].engine
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            flags = conn.execute(text("SELECT key_derived FROM subjects")).scalars().all()
            pool_flags = conn.execute(text("SELECT key_derived FROM subject_pool")).scalars().all()
        assert version >= "0008_derived_keys"
        assert [bool(f) for f in flags] == [False] and [bool(f) for f in pool_flags] == [False]

        c = stack.client(stack.issue(RIGHTS))
        assert c.get_record(old_rid).fields == {"address": "old@example.org"}
        # The pool entry minted before the upgrade is claimed first: a legacy key.
        assert c.create_subject("DE").subject_id == pooled
        pooled_rid = c.put_record(
            pooled, "user.contact.email", {"address": "pooled@example.org"}
        ).record_id
        new = c.create_subject("DE").subject_id  # the pool is empty: inline, derived
        new_rid = c.put_record(new, "user.contact.email", {"address": "new@example.org"}).record_id
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, key_derived FROM subjects")).all()
        assert {r[0]: bool(r[1]) for r in rows} == {
            old: False,
            pooled: False,
            new: True,
        }
        root = bao.root().secrets.transit
        assert not root.read_key(name=f"subject-{old}", mount_point="transit-de")["data"]["derived"]
        assert root.read_key(name=f"subject-{new}", mount_point="transit-de")["data"]["derived"]

        rotator = TransitKeyRotator.connect(bao.address, bao.server.rotator_token(stack.regions))
        outcomes: dict[str, str] = {}
        summary = SubjectKeyRotation(RotationStore(engine), rotator, "de").run(
            0, progress=outcomes.__setitem__
        )
        assert summary.finished and summary.failed == 0
        assert outcomes == {old: "rotated", pooled: "rotated", new: "rotated"}
        assert bao.answers(f"transit-de/rewrap/subject-{new}") == [""]
        assert bao.answers(f"transit-de/rewrap/subject-{old}") == []
        assert bao.answers(f"transit-de/rewrap/subject-{pooled}") == []
        stack.vault.parts.data_keys["de"].clear()
        assert c.get_record(old_rid).fields == {"address": "old@example.org"}
        assert c.get_record(pooled_rid).fields == {"address": "pooled@example.org"}
        assert c.get_record(new_rid).fields == {"address": "new@example.org"}
        assert json.dumps(summary.__dict__)  # the summary carries no key material
    finally:
        stack.stop()

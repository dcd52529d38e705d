"""A subject's rekey (``pdvault keys rekey``) against a real OpenBao and real
cell databases: records re-encrypted under a fresh data key one by one while
the subject is read and written, resumable, exclusive, losing to an erasure,
keeping the subject's audit pseudonym; the old data key opens nothing after.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, select, update

from tests.conftest import Bao, Stack, cell_migration_head, start_stack
from vault.audit import audit_url
from vault.audit._store import read_only_engine
from vault.audit._verify import verify_log
from vault.client import VaultClientError
from vault.crypto import (
    RecordContext,
    dek_associated_data,
    new_data_key,
    open_fields,
    open_subject_secret,
    seal_fields,
)
from vault.datadir import DataDir
from vault.errors import DecryptionFailed, Erased, NotFound
from vault.keys import KeyRef, TransitKeyRotator
from vault.rotation import RekeyHeld, SubjectKeyRotation, SubjectRekey
from vault.store import (
    CellStore,
    RecordRow,
    RekeyStore,
    RotationStore,
    SubjectRow,
    SubjectState,
    make_engine,
    migrate,
    records,
    subjects,
)

RIGHTS = "essential.subject_rights"
EMAIL = "user.contact.email"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("rekey"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rotator(bao: Bao, node: Stack) -> TransitKeyRotator:
    return TransitKeyRotator.connect(bao.address, bao.server.rotator_token(node.regions))


def _engine(stack: Stack) -> Engine:
    return stack.vault.parts.stores["de"].engine


def _job(stack: Stack, rotator: Any, **kw: Any) -> SubjectRekey:
    return SubjectRekey(RekeyStore(_engine(stack)), rotator, "de", **kw)


def _person(stack: Stack, n: int) -> tuple[str, dict[str, dict[str, str]]]:
    """A subject of de with n records: its id, record id -> fields."""
    c = stack.client(stack.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    out = {}
    for i in range(n):
        fields = {"address": f"p{i}-{sid[-6:]}@example.org"}
        out[c.put_record(sid, EMAIL, fields).record_id] = fields
    return sid, out


def _subject(stack: Stack, sid: str) -> SubjectRow:
    row = RekeyStore(_engine(stack)).subject(sid)
    assert row is not None
    return row


def _records(stack: Stack, sid: str) -> list[RecordRow]:
    return CellStore(_engine(stack)).all_records(sid)


def _all_open_at_newest(stack: Stack, sid: str, expected: dict[str, dict[str, str]]) -> None:
    """Every record is of the subject's (only) generation and opens, with a
    cold cache, as last written."""
    row = _subject(stack, sid)
    assert row.wrapped_dek_next is None
    assert {r.dek_generation for r in _records(stack, sid)} <= {row.dek_generation}
    stack.vault.parts.data_keys["de"].clear()
    c = stack.client(stack.issue(RIGHTS))
    for rid, fields in expected.items():
        assert dict(c.get_record(rid).fields) == fields


def _unwrap(rotator: TransitKeyRotator, row: SubjectRow, wrapped: str) -> bytes:
    return rotator.unwrap(
        KeyRef(row.key_mount, row.key_name, row.key_derived),
        wrapped,
        dek_associated_data(row.id, "de"),
    )


class Killed(Exception):
    pass


# -- the job itself ------------------------------------------------------------


def test_a_rekey_re_encrypts_every_record_and_the_old_key_opens_nothing(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, recs = _person(node, 5)
    before = _subject(node, sid)
    old_dek = _unwrap(rotator, before, before.wrapped_dek)
    old_envelopes = {r.id: r.envelope for r in _records(node, sid)}

    s = _job(node, rotator).run(sid)

    assert (s.generation, s.reencrypted, s.resumed, s.passes) == (2, 5, False, 1)
    after = _subject(node, sid)
    assert after.dek_generation == 2 and after.wrapped_dek_next is None
    assert after.wrapped_dek != before.wrapped_dek and after.pseudonym_seal is not None
    new_dek = _unwrap(rotator, after, after.wrapped_dek)
    assert new_dek != old_dek
    for r in _records(node, sid):
        assert r.dek_generation == 2 and r.envelope != old_envelopes[r.id]
        ctx = RecordContext(r.id, sid, "de", r.category, r.version)
        with pytest.raises(DecryptionFailed):
            open_fields(old_dek, ctx, r.envelope)
        assert open_fields(new_dek, ctx, r.envelope) == recs[r.id]
    with pytest.raises(DecryptionFailed):  # nor the carried pseudonym key
        assert after.pseudonym_seal is not None
        open_subject_secret(old_dek, "audit-pseudonym", sid, "de", 2, after.pseudonym_seal)
    # The old wrap is nowhere in the cell database any more.
    with sqlite3.connect(node.db_path("de")) as db:
        dump = "\n".join(db.iterdump())
    assert before.wrapped_dek not in dump
    _all_open_at_newest(node, sid, recs)
    # A second rekey moves on to generation 3, the pseudonym key still carried.
    assert _job(node, rotator).run(sid).generation == 3
    _all_open_at_newest(node, sid, recs)


def test_a_job_killed_midway_leaves_everything_readable_and_resumes(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, recs = _person(node, 7)

    def kill_after_three(done: int) -> None:
        if done == 3:
            raise Killed

    with pytest.raises(Killed):
        _job(node, rotator).run(sid, progress=kill_after_three, batch=2)
    mid = _subject(node, sid)
    assert mid.dek_generation == 1 and mid.wrapped_dek_next is not None
    assert sorted(r.dek_generation for r in _records(node, sid)) == [1] * 4 + [2] * 3
    # Meanwhile the node reads both generations and writes under the next one:
    # its cached row of the subject predates the rekey (the records above were
    # put through it), so this write is sealed under generation 1 first,
    # refused by the write's generation check, and sealed again under 2.
    node.vault.parts.data_keys["de"].clear()
    c = node.client(node.issue(RIGHTS))
    for rid, fields in recs.items():
        assert dict(c.get_record(rid).fields) == fields
    new = c.put_record(sid, EMAIL, {"address": "during@example.org"}).record_id
    recs[new] = {"address": "during@example.org"}
    assert {r.id: r.dek_generation for r in _records(node, sid)}[new] == 2

    # A job killed with -9 keeps its claim until it expires; then it is taken over.
    with _engine(node).begin() as conn:
        conn.execute(
            update(subjects)
            .where(subjects.c.id == sid)
            .values(rotation_claim="dead-job", rotation_claimed_until=time.time_ns() // 1000 - 1)
        )
    s = _job(node, rotator).run(sid)
    assert s.resumed and s.generation == 2 and s.reencrypted == 4
    assert _subject(node, sid).wrapped_dek == mid.wrapped_dek_next
    _all_open_at_newest(node, sid, recs)


def test_two_rekeys_of_one_subject_at_once_one_works_the_other_is_held(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, recs = _person(node, 4)
    inside, second_done = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def hold(done: int) -> None:
        inside.set()
        second_done.wait(20)

    def first() -> None:
        outcome["first"] = _job(node, rotator).run(sid, progress=hold)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(20)
    try:
        with pytest.raises(RekeyHeld):
            _job(node, rotator).run(sid)
        # A rotation of the subject's key is held off too.
        seen: dict[str, str] = {}
        rotation = SubjectKeyRotation(RotationStore(_engine(node)), rotator, "de")
        rotation.run(0, progress=seen.__setitem__)
        assert seen[sid] == "held"
    finally:
        second_done.set()
        t.join(30)
    assert outcome["first"].generation == 2 and outcome["first"].reencrypted == 4
    _all_open_at_newest(node, sid, recs)
    # The rotation job that was held finishes once the rekey released the subject.
    assert SubjectKeyRotation(RotationStore(_engine(node)), rotator, "de").run(0).finished
    _all_open_at_newest(node, sid, recs)


def test_a_rotation_between_two_runs_keeps_the_next_key_readable(
    bao: Bao, node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, recs = _person(node, 4)
    with pytest.raises(Killed):
        _job(node, rotator).run(sid, progress=lambda done: (_ for _ in ()).throw(Killed()))
    assert _subject(node, sid).wrapped_dek_next is not None
    seen: dict[str, str] = {}
    SubjectKeyRotation(RotationStore(_engine(node)), rotator, "de").run(
        0, progress=seen.__setitem__
    )
    assert seen[sid] == "rotated"
    row = _subject(node, sid)
    assert row.wrapped_dek.startswith("vault:v2:") and str(row.wrapped_dek_next).startswith(
        "vault:v2:"
    )
    s = _job(node, rotator).run(sid)
    assert s.resumed and s.generation == 2
    _all_open_at_newest(node, sid, recs)


@pytest.mark.parametrize("stage", ["start", "records"])
def test_an_erasure_racing_a_rekey_ends_erased_with_nothing_written_after(
    bao: Bao, node: Stack, rotator: TransitKeyRotator, stage: str
) -> None:
    sid, _ = _person(node, 4)
    eraser = node.client(node.issue(RIGHTS))

    class Racing:
        def unwrap(self, ref: KeyRef, wrapped: str, aad: bytes) -> bytes:
            return rotator.unwrap(ref, wrapped, aad)

        def wrap(self, ref: KeyRef, plaintext: bytes, aad: bytes) -> str:
            if stage == "start":
                eraser.erase_subject(sid)
            return rotator.wrap(ref, plaintext, aad)

    def erase_after_two(done: int) -> None:
        if stage == "records" and done == 2:
            eraser.erase_subject(sid)

    with pytest.raises(Erased):
        SubjectRekey(RekeyStore(_engine(node)), Racing(), "de").run(sid, progress=erase_after_two)
    row = _subject(node, sid)
    assert row.state == SubjectState.ERASED and row.wrapped_dek == ""
    assert row.wrapped_dek_next is None and row.pseudonym_seal is None
    assert row.dek_generation == 1  # never switched
    assert _records(node, sid) == []
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    # Run again: the subject is erased, and said so.
    with pytest.raises(Erased):
        _job(node, rotator).run(sid)


def test_a_rekey_of_a_subject_that_does_not_exist_is_refused(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    with pytest.raises(NotFound):
        _job(node, rotator).run("de_sub_doesnotexist")


def test_the_access_report_of_a_rekeyed_subject_still_lists_earlier_accesses(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, recs = _person(node, 2)
    c = node.client(node.issue(RIGHTS))
    for rid in recs:
        c.get_record(rid)

    def reads() -> int:
        return sum(1 for e in c.access_report(sid) if e.operation == "GetRecord")

    deadline = time.monotonic() + 10
    while reads() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = reads()
    assert before >= 2
    for _ in range(2):  # twice: the carried key is carried again
        _job(node, rotator).run(sid)
        node.node.cells["de"].forget(sid)  # a cold node: keys and row read again
        assert reads() >= before
    c.get_record(next(iter(recs)))
    deadline = time.monotonic() + 10
    while reads() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reads() == before + 1  # after the rekey, under the same pseudonym


def test_an_idempotent_retry_spanning_a_rekey_is_still_a_replay(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, _ = _person(node, 1)
    c = node.client(node.issue(RIGHTS))
    first = c.put_record(sid, EMAIL, {"address": "once@example.org"}, idempotency_key="k-1")
    _job(node, rotator).run(sid)
    again = c.put_record(sid, EMAIL, {"address": "once@example.org"}, idempotency_key="k-1")
    assert again.record_id == first.record_id
    with pytest.raises(VaultClientError) as e:
        c.put_record(sid, EMAIL, {"address": "other@example.org"}, idempotency_key="k-1")
    assert e.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert len(_records(node, sid)) == 2


# -- under load, on both engines ----------------------------------------------------


def test_a_rekey_under_concurrent_reads_and_writes_loses_nothing(db_stack: Stack) -> None:
    stack = db_stack
    rot = TransitKeyRotator.connect(
        stack.bao.address, stack.bao.server.rotator_token(stack.regions)
    )
    sid, recs = _person(stack, 40)
    stop = threading.Event()
    lock = threading.Lock()
    acked: dict[str, dict[str, str]] = dict(recs)
    errors: list[str] = []
    counts = {"reads": 0, "writes": 0}

    def writer(w: int) -> None:
        c = stack.client(stack.issue(RIGHTS))
        mine: dict[str, int] = {}
        i = 0
        while not stop.is_set():
            i += 1
            fields = {"address": f"w{w}-{i}@example.org"}
            try:
                if mine and i % 2:
                    rid = random.choice(list(mine))
                    r = c.put_record(sid, EMAIL, fields, record_id=rid, expected_version=mine[rid])
                else:
                    r = c.put_record(sid, EMAIL, fields)
            except VaultClientError as e:
                errors.append(f"write: {e.reason}")
                continue
            mine[r.record_id] = r.version
            with lock:
                acked[r.record_id] = fields
                counts["writes"] += 1

    def reader() -> None:
        c = stack.client(stack.issue(RIGHTS))
        while not stop.is_set():
            with lock:
                rid = random.choice(list(acked))
            try:
                c.get_record(rid)
                if random.random() < 0.1:
                    list(c.iter_records(sid, page_size=50))
            except VaultClientError as e:
                errors.append(f"read: {e.reason}")
                continue
            with lock:
                counts["reads"] += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        # Slowed down per record, so the load meets every stage of the job.
        s = _job(stack, rot).run(sid, progress=lambda done: time.sleep(0.01), batch=8)
        time.sleep(0.5)  # and the writes after the switch (cached rows are stale)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"rekey under load: {counts}, {s}")
    assert errors == []
    assert counts["reads"] > 20 and counts["writes"] > 10, counts
    assert s.generation == 2 and s.reencrypted + s.by_writers >= 1
    with _engine(stack).begin() as conn:
        gens = conn.execute(
            select(records.c.dek_generation).where(records.c.subject_id == sid)
        ).all()
    assert {g for (g,) in gens} == {2} and len(gens) == len(acked)
    _all_open_at_newest(stack, sid, acked)


# -- the command ---------------------------------------------------------------


def _cli(node: Stack, bao: Bao, *args: str) -> subprocess.CompletedProcess[str]:
    """``pdvault keys rekey`` on the node's data dir, with a rotation token."""
    ports = DataDir(node.data_dir).openbao / "ports.json"
    if not ports.exists():  # the CLI finds the session's OpenBao as a local stack's
        ports.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bao.server.dir / "ports.json", ports)
    token = bao.server.rotator_token(node.regions)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "vault.cli",
            "keys",
            "rekey",
            *args,
            "--data-dir",
            str(node.data_dir),
            "--openbao-token",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_command_rekeys_and_with_rotate_makes_the_old_wrap_useless(
    bao: Bao, node: Stack
) -> None:
    sid, recs = _person(node, 3)
    backup = _subject(node, sid).wrapped_dek
    done = _cli(node, bao, sid, "--rotate")
    assert done.returncode == 0, done.stderr
    assert "generation 2" in done.stdout and "3 records re-encrypted" in done.stdout
    assert "rotation: rotated" in done.stdout
    row = _subject(node, sid)
    assert row.dek_generation == 2 and row.wrapped_dek.startswith("vault:v2:")
    key = bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    assert sorted(int(v) for v in key["data"]["keys"]) == [2]
    with pytest.raises(hvac.exceptions.InvalidRequest):  # the old wrap, from a backup
        bao.root().secrets.transit.decrypt_data(
            name=f"subject-{sid}",
            ciphertext=backup,
            associated_data=__import__("base64").b64encode(dek_associated_data(sid, "de")).decode(),
            mount_point="transit-de",
        )
    _all_open_at_newest(node, sid, recs)
    # The region's audit log records the rekey, under the person's pseudonym.
    report = node.client(node.issue(RIGHTS)).access_report(sid)
    assert [e.operation for e in report].count("rekey") == 1
    log = read_only_engine(audit_url(node.regions.regions["de"].database_url, "de"))
    try:  # appended by another process than the node's: the chain still holds
        verified = verify_log(log, "de", None)
    finally:
        log.dispose()
    assert verified.ok, verified.problem
    # The command's output names no data and no key material.
    for value in (*(f["address"] for f in recs.values()), backup, row.wrapped_dek, "vault:v"):
        assert value not in done.stdout and value not in done.stderr


def test_restoring_the_old_wrap_or_an_old_envelope_after_a_rekey_opens_nothing(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    """Someone writing a backup's rows back (the old wrap, or a record's old
    envelope with its old generation) gets no data from the node, only refusals."""
    sid, recs = _person(node, 2)
    before = _subject(node, sid)
    old = {r.id: r for r in _records(node, sid)}
    _job(node, rotator).run(sid)
    rid, other = list(recs)
    c = node.client(node.issue(RIGHTS))
    with _engine(node).begin() as conn:  # a record's old envelope, generation 1
        conn.execute(
            update(records)
            .where(records.c.id == rid)
            .values(envelope=old[rid].envelope, dek_generation=1)
        )
    node.node.cells["de"].forget(sid)
    with pytest.raises(VaultClientError) as e:
        c.get_record(rid)
    assert e.value.reason == "DECRYPTION_FAILED"
    assert dict(c.get_record(other).fields) == recs[other]
    with _engine(node).begin() as conn:  # the old wrap, as the current one
        conn.execute(
            update(subjects).where(subjects.c.id == sid).values(wrapped_dek=before.wrapped_dek)
        )
    node.node.cells["de"].forget(sid)
    with pytest.raises(VaultClientError) as e:
        c.get_record(other)
    assert e.value.reason == "DECRYPTION_FAILED"


def test_the_command_refuses_a_missing_or_erased_subject_with_a_clear_error(
    bao: Bao, node: Stack
) -> None:
    missing = _cli(node, bao, "de_sub_doesnotexist")
    assert missing.returncode != 0 and "subject not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    sid, _ = _person(node, 1)
    node.client(node.issue(RIGHTS)).erase_subject(sid)
    erased = _cli(node, bao, sid)
    assert erased.returncode != 0 and "erased" in erased.stderr
    assert "Traceback" not in erased.stderr
    held, _ = _person(node, 1)
    assert RekeyStore(_engine(node)).claim(held, "another-job", 0, 2**62)
    refused = _cli(node, bao, held)
    assert refused.returncode != 0 and "another key job" in refused.stderr
    assert "Traceback" not in refused.stderr and _subject(node, held).wrapped_dek_next is None
    RekeyStore(_engine(node)).release(held, "another-job")
    bad_region = _cli(node, bao, sid, "--region", "xx")
    assert bad_region.returncode != 0 and "no region" in bad_region.stderr


# -- the migration ---------------------------------------------------------------


def test_a_cell_migrated_from_0007_keeps_its_data_readable_and_rekeyable(
    tmp_path: Path, node: Stack, rotator: TransitKeyRotator
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(ROOT / "vault" / "store" / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007_scale_pool")
    # A subject and its record as 0007 stored them (its key made in OpenBao).
    sid = f"de_sub_old{int(time.time() * 1000)}"
    ref = KeyRef("transit-de", f"subject-{sid}")
    node.provider.create_key(ref)
    dek = new_data_key()
    wrapped = node.provider.wrap(ref, dek, dek_associated_data(sid, "de"))
    ctx = RecordContext("de_rec_old1", sid, "de", EMAIL, 1)
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute(
            "INSERT INTO subjects (id, region, state, minor, key_mount, key_name, wrapped_dek,"
            " created_at, updated_at) VALUES (?, 'de', 'active', 0, ?, ?, ?, 1, 1)",
            (sid, ref.mount, ref.name, wrapped),
        )
        db.execute(
            "INSERT INTO records (id, subject_id, category, version, envelope, created_at,"
            " updated_at) VALUES ('de_rec_old1', ?, ?, 1, ?, 1, 1)",
            (sid, EMAIL, seal_fields(dek, ctx, {"address": "old@example.org"})),
        )
    assert migrate(engine) == cell_migration_head()
    store = CellStore(engine)
    found = store.get_record("de_rec_old1")
    assert found is not None
    rec, subj = found
    assert (rec.dek_generation, subj.dek_generation, subj.wrapped_dek_next) == (1, 1, None)
    assert open_fields(dek, ctx, rec.envelope) == {"address": "old@example.org"}
    s = SubjectRekey(RekeyStore(engine), rotator, "de").run(sid)
    assert s.generation == 2 and s.reencrypted == 1
    rec2 = store.all_records(sid)[0]
    row = store.get_subject(sid)
    assert row is not None
    new_dek = rotator.unwrap(ref, row.wrapped_dek, dek_associated_data(sid, "de"))
    assert open_fields(new_dek, ctx, rec2.envelope) == {"address": "old@example.org"}
    engine.dispose()


# -- lookup values (sealed under the data key, vault.cell._lookup) ---------------


def _values(stack: Stack, sid: str) -> list[Any]:
    return CellStore(_engine(stack)).lookup_values(sid)


def test_a_rekey_seals_the_lookup_values_again_and_they_still_find_the_subject(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    """Values set before the rekey and one set while it runs (sealed under the
    next key) all end under the new generation, open with the new key only,
    and the lookups keep finding the subject."""
    from vault.crypto import lookup_value_id, open_lookup_value

    c = node.client(node.issue(RIGHTS))
    mail = f"rk-{os.urandom(4).hex()}@example.org"
    sid = c.create_subject("DE", lookups={"email": mail}).subject_id
    for i in range(3):
        c.put_record(sid, EMAIL, {"address": f"r{i}@example.org"})
    phone = "+49 30 " + str(random.randint(1_000_000, 9_999_999))
    before = _subject(node, sid)
    old_dek = _unwrap(rotator, before, before.wrapped_dek)
    assert {v.generation for v in _values(node, sid)} == {1}
    during: list[int] = []

    def set_phone_once(done: int) -> None:
        if not during:  # mid-rekey: the next key is the newest
            during.append(c.set_lookups(sid, {"phone": phone}))

    _job(node, rotator).run(sid, progress=set_phone_once)
    assert during == [1]
    after = _subject(node, sid)
    assert after.dek_generation == 2 and after.wrapped_dek_next is None
    new_dek = _unwrap(rotator, after, after.wrapped_dek)
    values = _values(node, sid)
    assert {v.generation for v in values} == {2} and len(values) == 2
    opened = {v.kind: open_lookup_value(new_dek, sid, "de", v.kind, v.sealed) for v in values}
    assert opened["email"] == mail and opened["phone"].endswith(phone[-7:])
    for v in values:
        assert v.value_id == lookup_value_id(new_dek, v.kind, opened[v.kind])
        with pytest.raises(DecryptionFailed):
            open_lookup_value(old_dek, sid, "de", v.kind, v.sealed)
    assert c.find_subjects("email", mail, region="de") == [sid]
    assert c.find_subjects("phone", phone, region="de") == [sid]


def test_a_lookup_value_sealed_under_a_key_a_rekey_replaced_is_not_stored(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    """A SetLookups that read the subject before a rekey started and writes
    after: its value, sealed under the old generation, is refused
    (DataKeyChanged, nothing written), so nothing is left under a key the
    switch drops; the node's own SetLookups seals again and succeeds."""
    from vault.crypto import lookup_value_id, seal_lookup_value
    from vault.store import DataKeyChanged, LookupWrite, SealedLookup

    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    row = _subject(node, sid)
    old_dek = _unwrap(rotator, row, row.wrapped_dek)
    store = RekeyStore(_engine(node))
    now = int(time.time() * 1e6)
    assert store.claim(sid, "test-owner", now, now + 60_000_000)
    next_wrap = rotator.wrap(
        KeyRef(row.key_mount, row.key_name, row.key_derived),
        new_data_key(),
        dek_associated_data(sid, "de"),
    )
    assert store.start(sid, "test-owner", 1, next_wrap)
    value = "late@example.org"
    stale = SealedLookup(
        lookup_value_id(old_dek, "email", value),
        "email",
        seal_lookup_value(old_dek, sid, "de", "email", value),
        1,
    )
    with pytest.raises(DataKeyChanged):
        CellStore(_engine(node)).add_lookups(sid, LookupWrite((), (), (stale,)), 32)
    assert _values(node, sid) == []
    node.vault.parts.data_keys["de"].clear()
    assert c.set_lookups(sid, {"email": value}) == 1
    assert {v.generation for v in _values(node, sid)} == {2}
    store.release(sid, "test-owner")


def test_an_interrupted_rotation_says_how_to_resume_and_leaves_no_claim(
    node: Stack, bao: Bao
) -> None:
    """Ctrl-C in `pdvault keys rotate` (rate-limited, mid-job): a one-line
    message and exit 130, not a traceback; no subject stays claimed."""
    for _ in range(12):  # at 1/s, more than the job can do before the interrupt
        _person(node, 1)
    ports = DataDir(node.data_dir).openbao / "ports.json"
    if not ports.exists():
        ports.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bao.server.dir / "ports.json", ports)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vault.cli", "keys", "rotate", "--region", "de"),
            *("--older-than", "0s", "--rate", "1/s", "--data-dir", str(node.data_dir)),
            *("--openbao-token", bao.server.rotator_token(node.regions)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3.5)  # started, and sleeping in its rate limit
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "interrupted; run the command again to resume" in err
    assert "Traceback" not in err
    with _engine(node).connect() as conn:
        held = conn.execute(
            select(subjects.c.id).where(subjects.c.rotation_claim.is_not(None))
        ).all()
    assert held == []

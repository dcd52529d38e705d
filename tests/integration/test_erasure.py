"""Crypto-shredding against real OpenBao and real databases: once EraseSubject
returns, no copy of the person's data — live, backup, another node — opens."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import hvac.exceptions
import pytest
import requests

from tests.conftest import Bao, Stack, copy_live_files, files_containing, live_sql, start_stack
from vault.client import VaultClient, VaultClientError
from vault.crypto import dek_associated_data
from vault.erasure import verify_receipt
from vault.errors import DecryptionFailed
from vault.keys import KeyRef
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(db_stack: Stack) -> Stack:
    """Each test of this module runs on SQLite and on PostgreSQL, but for those
    that read the cell's SQLite files (``sqlite_stack``)."""
    return db_stack


RIGHTS = "essential.subject_rights"


def _rights(stack: Stack) -> VaultClient:
    """A client acting on the person's own request: read, write, export, erase."""
    return stack.client(stack.issue(RIGHTS))


def _code(fn, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(VaultClientError) as e:
        fn(*args, **kwargs)
    return e.value.code


def _key_exists(bao: Bao, mount: str, name: str) -> bool:
    try:
        bao.root().secrets.transit.read_key(name=name, mount_point=mount)
    except hvac.exceptions.InvalidPath:
        return False
    return True


def _wrapped_dek(stack: Stack, region: str, sid: str) -> str:
    """The subject's wrapped DEK as stored, read by another process."""
    sql = "SELECT wrapped_dek FROM subjects WHERE id = ?"
    ((wrapped,),) = live_sql(stack.db_path(region), sql, sid)
    assert isinstance(wrapped, str) and wrapped.startswith("vault:v1:")
    return wrapped


def _openbao_refusal(bao: Bao, region: str, sid: str, wrapped: str) -> str:
    """Asks OpenBao itself (root token) whether the subject's key is gone: reading the
    key is 404 and unwrapping the subject's DEK is refused. The evidence a receipt
    must carry: that request and OpenBao's own answer to it."""
    mount, name = f"transit-{region}", f"subject-{sid}"
    key = requests.get(
        f"{bao.address}/v1/{mount}/keys/{name}",
        headers={"X-Vault-Token": bao.server.root_token()},
        timeout=10,
    )
    assert key.status_code == 404, key.text
    with pytest.raises(hvac.exceptions.InvalidRequest) as e:
        bao.root().secrets.transit.decrypt_data(
            name=name,
            ciphertext=wrapped,
            context=base64.b64encode(dek_associated_data(sid, region)).decode(),
            mount_point=mount,
        )
    assert e.value.errors, "OpenBao refused without saying why"
    return f"POST {mount}/decrypt/{name} refused: {'; '.join(e.value.errors)}"


def _person(c: VaultClient, canary: str, n: int = 3, country: str = "DE") -> tuple[str, list[str]]:
    s = c.create_subject(country)
    rids = [
        c.put_record(
            s.subject_id, "user.contact.email", {"address": f"{canary}-{i}@example.org"}
        ).record_id
        for i in range(n)
    ]
    return s.subject_id, rids


def test_erase_destroys_the_key_and_returns_a_signed_receipt(
    sqlite_stack: Stack, canary: str
) -> None:
    c = _rights(sqlite_stack)
    sid, rids = _person(c, canary)
    c.set_consent(sid, "marketing.communications.email", True, source="signup-form")
    wrapped = _wrapped_dek(sqlite_stack, "de", sid)
    receipt = c.erase_subject(sid, reason="subject_request")

    assert receipt.state == pb.ERASURE_STATE_COMPLETED
    assert (receipt.subject_id, receipt.region) == (sid, "de")
    assert receipt.key_name == f"transit-de/subject-{sid}"
    assert list(receipt.key_versions_destroyed) == [1]
    assert receipt.records_affected == 3
    assert receipt.evidence == _openbao_refusal(sqlite_stack.bao, "de", sid, wrapped)

    keys = sqlite_stack.vault.authority.verifier._keys
    doc = verify_receipt(receipt.signed_receipt, keys)
    assert doc["subject_id"] == sid and doc["records_affected"] == 3
    assert doc["key_versions_destroyed"] == [1]
    assert doc["evidence"] == receipt.evidence
    assert canary not in receipt.signed_receipt and canary not in str(doc)

    for rid in rids:  # the records are deleted
        assert _code(c.get_record, rid) == grpc.StatusCode.NOT_FOUND
    assert _code(c.list_records, sid) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(c.export_subject, sid) == grpc.StatusCode.FAILED_PRECONDITION
    assert c.get_subject(sid).state == pb.SUBJECT_STATE_ERASED
    with sqlite3.connect(sqlite_stack.db_path("de")) as db:
        assert db.execute(
            "SELECT count(*) FROM records WHERE subject_id = ?", (sid,)
        ).fetchone() == (0,)
        assert db.execute(
            "SELECT count(*) FROM consents WHERE subject_id = ?", (sid,)
        ).fetchone() == (0,)
        assert db.execute("SELECT wrapped_dek FROM subjects WHERE id = ?", (sid,)).fetchone() == (
            "",
        )

    again = c.erase_subject(sid)  # idempotent: the same receipt
    assert again.signed_receipt == receipt.signed_receipt


def test_tampered_receipt_does_not_verify(stack: Stack, canary: str) -> None:
    from vault.errors import Unauthenticated

    c = _rights(stack)
    sid, _ = _person(c, canary, n=1)
    signed = c.erase_subject(sid).signed_receipt
    keys = stack.vault.authority.verifier._keys
    head, body, foot = signed.rsplit(".", 2)[0], signed.split(".")[2], signed.split(".")[3]
    flipped = body[:10] + ("A" if body[10] != "A" else "B") + body[11:]
    with pytest.raises(Unauthenticated):
        verify_receipt(f"{head}.{flipped}.{foot}", keys)


def test_erase_needs_the_erase_operation(stack: Stack, canary: str) -> None:
    c = stack.client()  # essential.service: read, write, delete — no erase
    sid, rids = _person(c, canary, n=1)
    assert _code(c.erase_subject, sid) == grpc.StatusCode.PERMISSION_DENIED
    assert c.get_record(rids[0]).fields["address"].startswith(canary)


def test_backup_taken_before_erasure_no_longer_decrypts(
    sqlite_stack: Stack, canary: str, tmp_path: Path
) -> None:
    c = _rights(sqlite_stack)
    gone, gone_rids = _person(c, canary)
    _kept, kept_rids = _person(c, "KEPT")
    backup = tmp_path / "backup"
    backup.mkdir()
    # The file and its WAL, as they are.
    copy_live_files(list(sqlite_stack.db_path("de").parent.glob("de.db*")), backup)
    c.erase_subject(gone)

    restored = start_stack(
        sqlite_stack.bao,
        tmp_path / "restored",
        database_urls={"de": f"sqlite:///{backup / 'de.db'}"},
    )
    try:
        r = restored.client(restored.issue(RIGHTS))
        for rid in gone_rids:
            with pytest.raises(VaultClientError) as e:
                r.get_record(rid)
            assert e.value.code == grpc.StatusCode.DATA_LOSS
        assert _code(r.export_subject, gone) == grpc.StatusCode.DATA_LOSS
        for rid in kept_rids:
            assert r.get_record(rid).fields["address"].startswith("KEPT")
    finally:
        restored.stop()


def test_another_node_with_a_warm_cache_refuses_at_once(
    sqlite_stack: Stack, canary: str, tmp_path: Path
) -> None:
    """Node 2 serves the same cells (same files, same OpenBao) with the key cached."""
    urls = {rid: f"sqlite:///{sqlite_stack.db_path(rid)}" for rid in ("de", "us", "cn", "ru", "sg")}
    node2 = start_stack(sqlite_stack.bao, tmp_path / "node2", database_urls=urls)
    try:
        c1 = _rights(sqlite_stack)
        sid, rids = _person(c1, canary)
        c2 = node2.client(node2.issue(RIGHTS))
        assert c2.get_record(rids[0]).fields["address"].startswith(canary)  # node 2 now warm
        assert node2.vault.parts.data_keys["de"].get(sid) is not None
        # With a grace period the rows and the key still exist: only the state protects them.
        c1.erase_subject(sid, grace_period_seconds=3600)
        t0 = time.perf_counter()
        with pytest.raises(VaultClientError) as e:
            c2.get_record(rids[0])
        elapsed_ms = (time.perf_counter() - t0) * 1000
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.reason == "SUBJECT_ERASED"
        assert node2.vault.parts.data_keys["de"].get(sid) is not None  # still cached, still refused
        print(f"node 2 refused the first read after EraseSubject returned ({elapsed_ms:.1f} ms)")
        c1.cancel_erasure(sid)
        c1.erase_subject(sid)
        for rid in rids:
            assert _code(c2.get_record, rid) == grpc.StatusCode.NOT_FOUND
        assert _code(c2.list_records, sid) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        node2.stop()


def test_no_canary_anywhere_after_erasure(sqlite_stack: Stack, canary: str) -> None:
    c = _rights(sqlite_stack)
    sid, _ = _person(c, canary, n=5, country="US")
    c.erase_subject(sid)
    places = [
        *sqlite_stack.db_path("us").parent.glob("*.db*"),
        *sqlite_stack.data_dir.glob("control.db*"),
        *(sqlite_stack.bao.server.dir).glob("*.log"),
    ]
    assert any(p.name.endswith("audit.log") for p in places)
    assert files_containing(places, canary) == []


def test_grace_period_blocks_reads_at_once_and_can_be_cancelled(stack: Stack, canary: str) -> None:
    c = _rights(stack)
    sid, rids = _person(c, canary, n=1, country="SG")
    pending = c.erase_subject(sid, grace_period_seconds=3600)
    assert pending.state == pb.ERASURE_STATE_PENDING and pending.signed_receipt == ""
    assert c.get_subject(sid).state == pb.SUBJECT_STATE_ERASURE_PENDING
    assert _code(c.get_record, rids[0]) == grpc.StatusCode.FAILED_PRECONDITION
    assert _key_exists(stack.bao, "transit-sg", f"subject-{sid}")

    assert c.cancel_erasure(sid).state == pb.SUBJECT_STATE_ACTIVE
    assert c.get_record(rids[0]).fields["address"].startswith(canary)
    assert _code(c.cancel_erasure, sid) == grpc.StatusCode.NOT_FOUND


def test_grace_period_ends_in_destruction_by_the_worker(stack: Stack, canary: str) -> None:
    c = _rights(stack)
    sid, _ = _person(c, canary, n=2, country="RU")
    c.erase_subject(sid, grace_period_seconds=1)
    deadline = time.monotonic() + 15
    while _key_exists(stack.bao, "transit-ru", f"subject-{sid}"):
        assert time.monotonic() < deadline, "the worker did not destroy the key"
        time.sleep(0.1)
    done = c.erase_subject(sid)
    assert done.state == pb.ERASURE_STATE_COMPLETED and done.records_affected == 2
    assert _code(c.cancel_erasure, sid) == grpc.StatusCode.FAILED_PRECONDITION


def test_pending_erasure_survives_a_restart(bao: Bao, canary: str, tmp_path: Path) -> None:
    """A pending erasure is kept by the node's data, not its memory: the key lives
    out its grace period across a restart, then the restarted node destroys it."""
    grace = 3
    first = start_stack(bao, tmp_path, erasure_poll_seconds=60)
    c = first.client(first.issue(RIGHTS))
    sid, _ = _person(c, canary, n=1)
    wrapped = _wrapped_dek(first, "de", sid)
    pending = c.erase_subject(sid, grace_period_seconds=grace)
    assert pending.state == pb.ERASURE_STATE_PENDING and pending.signed_receipt == ""
    destroy_after = pending.destroy_after.seconds + pending.destroy_after.nanos / 1e9
    assert _key_exists(bao, "transit-de", f"subject-{sid}")
    first.stop()
    assert time.time() < destroy_after, "the grace period ended before the node stopped"
    assert _key_exists(bao, "transit-de", f"subject-{sid}")

    second = start_stack(bao, tmp_path, erasure_poll_seconds=0.2)  # same data dir
    try:
        # Never destroyed before the grace period ends (if the restart came in time
        # to see it), and destroyed by the restarted node's worker after it.
        while time.time() < destroy_after - 0.2:
            assert _key_exists(bao, "transit-de", f"subject-{sid}"), "destroyed too early"
            time.sleep(0.1)
        deadline = time.monotonic() + 15
        while _key_exists(bao, "transit-de", f"subject-{sid}"):
            assert time.monotonic() < deadline, "the restarted node did not destroy the key"
            time.sleep(0.1)
        assert time.time() >= destroy_after

        c2 = second.client(second.issue(RIGHTS))
        done = c2.erase_subject(sid)  # idempotent: the completed erasure's receipt
        assert done.state == pb.ERASURE_STATE_COMPLETED
        assert list(done.key_versions_destroyed) == [1] and done.records_affected == 1
        assert done.evidence == _openbao_refusal(bao, "de", sid, wrapped)
        doc = verify_receipt(done.signed_receipt, second.vault.authority.verifier._keys)
        assert (doc["subject_id"], doc["key_versions_destroyed"]) == (sid, [1])
        assert doc["evidence"] == done.evidence
        assert c2.get_subject(sid).state == pb.SUBJECT_STATE_ERASED
    finally:
        second.stop()


def test_export_round_trip_of_several_hundred_records(stack: Stack) -> None:
    c = _rights(stack)
    s = c.create_subject("DE")
    written = {}
    for i in range(300):
        cat, fields = (
            ("user.name", {"first": f"Ada{i}", "last": "Lovelace"})
            if i % 2
            else ("user.content", {"note": f"n{i}", "body": "x" * 300})
        )
        written[c.put_record(s.subject_id, cat, fields).record_id] = (cat, fields)
    c.set_consent(s.subject_id, "marketing.communications.email", True, source="web")
    chunks = list(c.export_subject_bytes(s.subject_id))
    assert len(chunks) > 1, "a large export arrives in several chunks"
    import json

    doc = json.loads(b"".join(chunks))
    assert doc["format"] == "pdvault.export" and doc["subject"]["subject_id"] == s.subject_id
    got = {r["record_id"]: (r["category"], r["fields"]) for r in doc["records"]}
    assert got == written
    assert doc["omitted_records"] == 0
    assert [x["purpose"] for x in doc["consents"]] == ["marketing.communications.email"]
    e = stack.client()  # essential.service has no export operation
    assert _code(e.export_subject, s.subject_id) == grpc.StatusCode.PERMISSION_DENIED


def test_snapshot_restore_drill_then_reapply(own_bao: Bao, tmp_path: Path, canary: str) -> None:
    bao, data_dir = own_bao, tmp_path  # OpenBao in the node's data dir, as `pdvault up` has it
    stack = start_stack(bao, data_dir)
    try:
        c = stack.client(stack.issue(RIGHTS))
        sid, rids = _person(c, canary, n=2)
        _other, other_rids = _person(c, "OTHER", n=1)
        with sqlite3.connect(stack.db_path("de")) as db:
            (wrapped,) = db.execute(
                "SELECT wrapped_dek FROM subjects WHERE id = ?", (sid,)
            ).fetchone()
        ref = KeyRef("transit-de", f"subject-{sid}", derived=True)
        aad = dek_associated_data(sid, "de")
        root = bao.root()
        snapshot = root.sys.take_raft_snapshot()
        assert snapshot.status_code == 200
        c.erase_subject(sid)
        assert not _key_exists(bao, "transit-de", f"subject-{sid}")

        root.sys.force_restore_raft_snapshot(snapshot.content)
        deadline = time.monotonic() + 30
        while not _key_exists(bao, "transit-de", f"subject-{sid}"):  # the restore brought it back
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # The danger: with the key back, a backup's wrapped data key opens again.
        assert len(stack.provider.unwrap(ref, wrapped, aad)) == 32

        out = subprocess.run(
            [sys.executable, "-m", "vault.cli", "erasure", "reapply", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "1 key(s) were back and are destroyed again" in out.stdout
        assert sid in out.stdout
        assert not _key_exists(bao, "transit-de", f"subject-{sid}")
        with pytest.raises(DecryptionFailed):
            stack.provider.unwrap(ref, wrapped, aad)
        for rid in rids:
            assert _code(c.get_record, rid) == grpc.StatusCode.NOT_FOUND
        stack.vault.parts.data_keys["de"].clear()
        assert c.get_record(other_rids[0]).fields["address"].startswith("OTHER")
    finally:
        stack.stop()


def test_receipt_verify_cli_offline(stack: Stack, canary: str, tmp_path: Path) -> None:
    c = _rights(stack)
    sid, _ = _person(c, canary, n=1)
    receipt = c.erase_subject(sid)
    f = tmp_path / "receipt.txt"
    f.write_text(receipt.signed_receipt)
    keys = stack.data_dir / "tokens" / "verification-keys.json"
    cmd = [sys.executable, "-m", "vault.cli", "receipt", "verify", str(f), "--keys", str(keys)]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert '"verified": true' in ok.stdout and sid in ok.stdout
    signed = receipt.signed_receipt
    payload = signed.split(".")[2]
    f.write_text(
        signed.replace(payload, payload[:-5] + ("AAAAA" if payload[-5:] != "AAAAA" else "BBBBB"))
    )
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "INVALID" in bad.stderr


def test_export_cli_writes_the_document(stack: Stack, tmp_path: Path) -> None:
    c = _rights(stack)
    s = c.create_subject("CN")
    c.put_record(s.subject_id, "user.name", {"first": "Li", "last": "Na"})
    out = tmp_path / "export.json"
    token = stack.issue(RIGHTS)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault.cli",
            "export",
            s.subject_id,
            "-o",
            str(out),
            "--target",
            stack.target,
            "--token",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(out.read_text())
    assert [rec["fields"] for rec in doc["records"]] == [{"first": "Li", "last": "Na"}]


def test_a_retry_after_the_key_was_destroyed_still_names_its_versions(
    sqlite_stack: Stack, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt destroys the key and dies before its receipt; the
    retry finds no key left, and its receipt names the versions the first
    attempt noted in the ledger before destroying (it listed none before)."""
    import vault.erasure._service as service

    c = _rights(sqlite_stack)
    sid, _ = _person(c, canary, n=1)
    wrapped = _wrapped_dek(sqlite_stack, "de", sid)

    def died() -> None:
        raise RuntimeError("killed after the destroy")

    monkeypatch.setattr(service, "_after_destroy", died)
    assert _code(c.erase_subject, sid) == grpc.StatusCode.INTERNAL
    assert not _key_exists(sqlite_stack.bao, "transit-de", f"subject-{sid}")
    entry = sqlite_stack.vault.control.erasure(sid)
    assert entry is not None and entry.destroyed_at is None and entry.key_versions == (1,)

    monkeypatch.undo()
    receipt = c.erase_subject(sid)
    assert receipt.state == pb.ERASURE_STATE_COMPLETED
    assert list(receipt.key_versions_destroyed) == [1]
    doc = verify_receipt(receipt.signed_receipt, sqlite_stack.vault.authority.verifier._keys)
    assert doc["key_versions_destroyed"] == [1]
    assert receipt.evidence == _openbao_refusal(sqlite_stack.bao, "de", sid, wrapped)
    assert c.get_subject(sid).state == pb.SUBJECT_STATE_ERASED

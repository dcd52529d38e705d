"""The audit log against a real node, real OpenBao and real SQLite files: every
call leaves a chained entry before it answers, nothing in it names the person
once erased, and a log that cannot be written stops the call."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event

from tests.conftest import Bao, Stack, files_containing, live_sql, start_stack
from vault.audit import (
    CONTROL_LOG,
    SIGNING_KEY_NAME,
    AuditStore,
    AuditWriter,
    pseudonym,
    pseudonym_key,
)
from vault.audit._checkpoint import save_public_keys
from vault.audit._store import read_log, read_only_engine
from vault.audit._verify import verify_log
from vault.client import VaultClient, VaultClientError
from vault.errors import StoreUnavailable
from vault.keys import KeyRef, TransitSigner

pytestmark = pytest.mark.integration

RIGHTS = "essential.subject_rights"
MARKETING = "marketing.communications.email"
POLICY_BASIS = "contract"  # essential.service's legal basis


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("audited"), audit_timeout_seconds=1.0)
    yield s
    s.stop()


def audit_file(stack: Stack, log: str) -> Path:
    if log == CONTROL_LOG:
        return stack.data_dir / "audit-control.sqlite"
    return stack.data_dir / "cells" / f"audit-{log}.sqlite"


def entries(stack: Stack, log: str) -> list[dict[str, Any]]:
    rows = live_sql(
        audit_file(stack, log), "SELECT entry FROM audit_entries WHERE log = ? ORDER BY seq", log
    )
    return [json.loads(r[0]) for r in rows]


def subject_pseudonym(stack: Stack, region: str, sid: str) -> str:
    """What the audit calls a subject, from its data key (held by the node's cache)."""
    dek = stack.vault.parts.data_keys[region].get(sid)
    assert dek is not None
    return pseudonym(pseudonym_key(dek), sid)


def public_keys(bao: Bao, stack: Stack, path: Path) -> Path:
    """The audit keys' public halves, read from OpenBao (root), saved to ``path``."""
    keys = {}
    for log, mount in [
        *((r, rc.transit_mounts[0]) for r, rc in stack.regions.regions.items()),
        (CONTROL_LOG, stack.regions.control.transit_mount),
    ]:
        signer = TransitSigner(bao.root(), KeyRef(mount, SIGNING_KEY_NAME))
        keys[log] = signer.public_keys()
    save_public_keys(path, keys)
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _code(fn, *args, **kwargs) -> VaultClientError:  # type: ignore[no-untyped-def]
    with pytest.raises(VaultClientError) as e:
        fn(*args, **kwargs)
    return e.value


def test_every_call_is_recorded_under_a_pseudonym(node: Stack, canary: str) -> None:
    rights = node.client()  # essential.service: read, write, delete
    marketing = node.client(node.issue(MARKETING))
    sid = rights.create_subject("DE").subject_id
    rec = rights.put_record(sid, "user.contact.email", {"address": f"{canary}@example.com"})
    assert rights.get_record(rec.record_id).fields["address"].startswith(canary)
    denied = _code(marketing.get_record, rec.record_id)
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    rights.list_records(sid)
    rights.delete_record(rec.record_id)

    who = subject_pseudonym(node, "de", sid)
    mine = [e for e in entries(node, "de") if e.get("subject") == who]
    assert [(e["operation"], e["decision"]) for e in mine] == [
        ("CreateSubject", "ok"),
        ("PutRecord", "ok"),
        ("GetRecord", "ok"),
        ("GetRecord", denied.reason),
        ("ListRecords", "ok"),
        ("DeleteRecord", "ok"),
    ]
    dek = node.vault.parts.data_keys["de"].get(sid)
    assert dek is not None
    assert mine[1]["record"] == pseudonym(pseudonym_key(dek), rec.record_id)
    assert mine[2]["categories"] == ["user.contact.email"]
    assert mine[2]["fields"] == ["address"]
    assert mine[2]["purpose"] == "essential.service" and mine[2]["service"] == "test-service"
    assert mine[3]["purpose"] == MARKETING and mine[3]["legal_basis"] == "consent"
    assert all(e["token_id"] and e["request_id"] and e["region"] == "de" for e in mine)
    # Nothing in the audit files names the person, the record, the value or a token.
    files = [audit_file(node, "de"), audit_file(node, CONTROL_LOG)]
    files += [f.with_name(f.name + "-wal") for f in files]
    assert files_containing(files, sid, rec.record_id, canary, rights.token or "x") == []


def test_token_events_are_in_the_control_log(node: Stack) -> None:
    before = len(entries(node, CONTROL_LOG))
    token = node.issue(RIGHTS, service="svc-audit")
    child = node.client(token)
    narrowed = child.exchange_token(categories=["user.contact.email"])
    child.revoke_token(narrowed.token_id)
    new = entries(node, CONTROL_LOG)[before:]
    ops = [(e["operation"], e["decision"]) for e in new]
    assert ops == [("IssueToken", "ok"), ("ExchangeToken", "ok"), ("RevokeToken", "ok")]
    issued, exchanged, revoked = new
    assert issued["service"] == "admin" and issued["detail"]["for_service"] == "svc-audit"
    assert exchanged["detail"]["issued"] == narrowed.token_id
    assert exchanged["detail"]["parent"] == issued["detail"]["issued"]
    assert revoked["detail"]["revoked"] == narrowed.token_id


def test_unauthenticated_calls_are_recorded_as_refusals(node: Stack) -> None:
    before = len(entries(node, CONTROL_LOG))
    anon = node.client(anonymous=True)
    err = _code(anon.get_subject, "de_sub_" + "a" * 26)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    new = entries(node, CONTROL_LOG)[before:]
    assert [(e["operation"], e["decision"]) for e in new] == [("GetSubject", err.reason)]


def test_the_chain_verifies_with_signed_checkpoints(node: Stack, bao: Bao, tmp_path: Path) -> None:
    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    for i in range(5):
        c.put_record(sid, "user.contact.email", {"address": f"p{i}@example.com"})
    for w in node.vault.audit.writers.values():  # type: ignore[union-attr]
        assert w.checkpoint() is not None
    keys = public_keys(bao, node, tmp_path / "keys.json")
    witness = tmp_path / "witness.jsonl"
    saved = cli("audit", "checkpoint", "--data-dir", str(node.data_dir), "--out", str(witness))
    assert saved.returncode == 0, saved.stderr
    out = cli(
        "audit", "verify", "--data-dir", str(node.data_dir), "--public-key", str(keys),
        "--checkpoint", str(witness),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    de = next(line for line in out.stdout.splitlines() if line.startswith("de "))
    assert int(de.split()[1]) >= 6 and int(de.split()[2]) >= 1 and de.endswith("ok")


def _fails_closed(c: VaultClient, record_id: str) -> None:
    err = _code(c.get_record, record_id)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.reason == "AUDIT_UNAVAILABLE"


def test_an_audit_write_that_fails_stops_the_call(
    node: Stack, canary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    rid = c.put_record(sid, "user.contact.email", {"address": f"{canary}@x.example"}).record_id
    assert node.vault.audit is not None
    store = node.vault.audit.writers["de"].store

    def broken(batch: object) -> tuple[int, bytes]:
        raise StoreUnavailable("audit database unavailable")

    monkeypatch.setattr(store, "append", broken)  # the writer thread's path
    monkeypatch.setattr(store, "append_nowait", broken)  # the event loop's
    _fails_closed(c, rid)
    monkeypatch.undo()
    assert c.get_record(rid).record_id == rid


def test_a_full_audit_disk_stops_the_call(node: Stack) -> None:
    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    rid = c.put_record(sid, "user.contact.email", {"address": "full@x.example"}).record_id
    assert node.vault.audit is not None
    store = node.vault.audit.writers["de"].store
    engines = [store._writer]

    def full(dbapi_conn: Any, _record: Any) -> None:
        # The file may not grow: SQLite answers SQLITE_FULL, as on a full disk.
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count={pages}")

    for engine in engines:
        event.listen(engine, "connect", full)
        engine.dispose()
    loop_conn = store._raw  # the event loop's own connection (made by the calls above)
    assert loop_conn is not None
    full(loop_conn, None)
    try:
        for _ in range(30):  # fill the last free pages, then every write fails
            try:
                c.get_record(rid)
            except VaultClientError:
                break
        _fails_closed(c, rid)
    finally:
        loop_conn.execute("PRAGMA max_page_count=1073741823")
        for engine in engines:
            event.remove(engine, "connect", full)
            engine.dispose()
    assert c.get_record(rid).record_id == rid


_HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def test_a_locked_audit_database_stops_the_call(node: Stack) -> None:
    c = node.client(node.issue(RIGHTS))
    sid = c.create_subject("DE").subject_id
    rid = c.put_record(sid, "user.contact.email", {"address": "lock@x.example"}).record_id
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(audit_file(node, "de")), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        _fails_closed(c, rid)
    finally:
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    deadline = time.monotonic() + 20
    while True:
        try:
            assert c.get_record(rid).record_id == rid
            break
        except VaultClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_after_erasure_nothing_links_the_log_to_the_person(
    node: Stack, bao: Bao, canary: str, tmp_path: Path
) -> None:
    c = node.client(node.issue(RIGHTS))
    email = f"{canary}@erase.example"
    sid = c.create_subject("DE", lookups={"email": email}).subject_id
    rids = [c.put_record(sid, "user.contact.email", {"address": email}).record_id for _ in range(2)]
    for r in rids:
        c.get_record(r)
    assert c.find_subjects("email", email, region="de") == [sid]
    ((digest,),) = live_sql(
        node.db_path("de"), "SELECT digest FROM lookups WHERE subject_id = ?", sid
    )
    who = subject_pseudonym(node, "de", sid)
    assert sum(e.get("subject") == who for e in entries(node, "de")) >= 5

    c.erase_subject(sid)

    # The entries are still there (the chain is whole) ...
    assert sum(e.get("subject") == who for e in entries(node, "de")) >= 5
    keys = public_keys(bao, node, tmp_path / "keys.json")
    out = cli("audit", "verify", "--data-dir", str(node.data_dir), "--public-key", str(keys))
    assert out.returncode == 0, out.stdout + out.stderr
    # ... but the key that made the pseudonym is gone with the person's key,
    assert node.vault.parts.data_keys["de"].get(sid) is None
    # and no audit or database file holds the ids, records or lookup hashes.
    audit_files = [p for p in node.data_dir.rglob("audit-*.sqlite*")]
    assert audit_files
    assert files_containing(audit_files, sid, *rids, str(digest), email) == []
    every_db = [p for p in node.data_dir.rglob("*") if p.suffix in (".db", ".sqlite")]
    for p in every_db:  # old pages leave the write-ahead log (secure_delete zeroes them)
        live_sql(p, "PRAGMA wal_checkpoint(TRUNCATE)")
    every_db += [p.with_name(p.name + "-wal") for p in every_db]
    assert files_containing(every_db, *rids, str(digest), email) == []


def _row(e: Any) -> tuple[object, ...]:
    return (
        e.operation,
        e.decision,
        e.service,
        e.purpose,
        e.legal_basis,
        tuple(e.categories),
        tuple(e.fields),
        e.region,
        e.entry_region,
    )


def test_the_access_report_lists_exactly_the_accesses_made(node: Stack) -> None:
    svc = node.client(node.issue(service="shop"))
    marketing = node.client(node.issue(MARKETING, service="mailer"))
    rights = node.client(node.issue(RIGHTS, service="dpo"))
    sid = svc.create_subject("FR").subject_id
    rid = svc.put_record(sid, "user.contact.email", {"address": "a@x.example"}).record_id
    svc.get_record(rid)
    denied = _code(marketing.get_record, rid)
    svc.list_records(sid)
    other = svc.create_subject("FR").subject_id  # someone else: not in the report
    svc.put_record(other, "user.contact.email", {"address": "b@x.example"})

    report = rights.access_report(sid)
    email = ("user.contact.email",)
    legal = POLICY_BASIS
    assert [_row(e) for e in report] == [
        ("CreateSubject", "ok", "shop", "essential.service", legal, (), (), "de", ""),
        ("PutRecord", "ok", "shop", "essential.service", legal, email, ("address",), "de", ""),
        ("GetRecord", "ok", "shop", "essential.service", legal, email, ("address",), "de", ""),
        ("GetRecord", denied.reason, "mailer", MARKETING, "consent", email, (), "de", ""),
        ("ListRecords", "ok", "shop", "essential.service", legal, email, ("address",), "de", ""),
    ]
    assert [e.sequence for e in report] == sorted(e.sequence for e in report)
    # The report is itself an access: the next one lists it, and `since` cuts.
    again = rights.access_report(sid)
    assert [_row(e)[:3] for e in again[len(report) :]] == [("GetAccessReport", "ok", "dpo")]
    cut = report[3].time.ToMicroseconds()
    since = [e.sequence for e in rights.access_report(sid, since_us=cut)]
    assert since[:2] == [report[3].sequence, report[4].sequence]
    # The export document carries the same report.
    doc = rights.export_subject(sid)
    assert [(a["operation"], a["decision"]) for a in doc["access_report"]][:5] == [
        (e.operation, e.decision) for e in report
    ]
    # Only with the export operation, and only within the token's subjects.
    assert _code(svc.access_report, sid).code == grpc.StatusCode.PERMISSION_DENIED
    narrow = node.client(node.issue(RIGHTS, subjects=[other]))
    assert _code(narrow.access_report, sid).code == grpc.StatusCode.PERMISSION_DENIED


def test_access_report_command_prints_a_table(node: Stack) -> None:
    svc = node.client(node.issue(service="shop"))
    sid = svc.create_subject("FR").subject_id
    svc.put_record(sid, "user.contact.email", {"address": "a@x.example"})
    out = cli(
        "access-report", sid, "--target", node.target, "--token", node.issue(RIGHTS),
        "--data-dir", str(node.data_dir),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "PutRecord" in out.stdout and "shop" in out.stdout and "2 access(es)" in out.stdout


def _shared_log(url: str) -> None:
    """Two nodes' writers on one log at once: one chain, every entry once."""
    stores = [AuditStore.open(url, "de"), AuditStore.open(url, "de")]
    writers = [AuditWriter(s) for s in stores]
    futures = [
        writers[i % 2].submit([{"time_us": i, "node": f"n{i % 2}", "operation": "GetRecord",
                                "decision": "ok", "request_id": f"r{i}"}])
        for i in range(200)
    ]  # fmt: skip
    for f in futures:
        f.result(timeout=60)
    for w in writers:
        w.close()
    for s in stores:
        s.close()
    engine = read_only_engine(url)
    try:
        report = verify_log(engine, "de", None)
        ids = sorted(json.loads(e.entry)["request_id"] for e in read_log(engine, "de"))
    finally:
        engine.dispose()
    assert report.ok, report.problem
    assert report.entries == 200 and ids == sorted(f"r{i}" for i in range(200))


def test_two_nodes_share_one_log_on_postgres(pg_url: str) -> None:
    _shared_log(pg_url)


def test_two_nodes_share_one_log_on_sqlite(tmp_path: Path) -> None:
    _shared_log(f"sqlite:///{tmp_path / 'audit-de.sqlite'}")

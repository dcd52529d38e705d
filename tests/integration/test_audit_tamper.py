"""The tamper suite: a real audit log of a few thousand entries, signed
checkpoints from OpenBao Transit, and generated mutations of every kind — one
byte of any field, a deleted entry, two swapped, a truncated tail, a forged
checkpoint, a forked chain, a database rolled back behind a saved checkpoint.
``audit verify`` must detect every one (the count is in the run's summary,
"audit tamper mutations")."""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Bao
from vault.audit import SIGNING_KEY_NAME, AuditStore, AuditWriter, CheckpointPolicy
from vault.audit._checkpoint import Checkpoint, sign_checkpoint
from vault.audit._entry import canonical, chain_hash
from vault.audit._store import read_only_engine
from vault.audit._verify import LogReport, verify_log
from vault.keys import KeyRef, TransitSigner

pytestmark = pytest.mark.integration

SIZE = 2000
ROLLBACK_AT = 1500
LOG = "de"
KEY = KeyRef("transit-de", SIGNING_KEY_NAME)
OPS = ["GetRecord", "PutRecord", "ListRecords", "DeleteRecord", "SetConsent", "ExportSubject"]


@dataclass
class Log:
    path: Path
    rollback: Path
    keys: dict[int, bytes]
    witness: list[str]
    other_signer: TransitSigner


def _entry(rng: random.Random, i: int) -> dict[str, object]:
    return {
        "time_us": 1_700_000_000_000_000 + i * 1000,
        "node": "node-a:1",
        "operation": rng.choice(OPS),
        "decision": rng.choice(["ok", "ok", "ok", "PURPOSE_NOT_ALLOWED"]),
        "service": "svc",
        "token_id": f"{rng.getrandbits(64):016x}",
        "purpose": "essential.service",
        "legal_basis": "contract",
        "region": LOG,
        "subject": f"{rng.getrandbits(256):064x}",
        "record": f"{rng.getrandbits(256):064x}",
        "categories": ["user.contact.email"],
        "fields": ["address"],
        "request_id": f"r{i}",
    }


def _write(
    store: AuditStore, signer: TransitSigner, rng: random.Random, n: int, start: int
) -> None:
    writer = AuditWriter(
        store,
        signer=signer,
        key_name=f"{KEY.mount}/{KEY.name}",
        checkpoints=CheckpointPolicy(every_entries=400, every_seconds=3600),
    )
    futures = [writer.submit([_entry(rng, start + i)]) for i in range(n)]
    for f in futures:
        f.result(timeout=60)
    writer.close()  # signs a last checkpoint


@pytest.fixture(scope="module")
def log(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    d = tmp_path_factory.mktemp("tamper")
    path = d / "audit-de.sqlite"
    signer = TransitSigner.for_key(bao.address, bao.node_token, KEY)
    rng = random.Random(7)
    store = AuditStore.open(f"sqlite:///{path}", LOG)
    _write(store, signer, rng, ROLLBACK_AT, 0)
    store.close()
    shutil.copy(path, d / "rollback.sqlite")
    store = AuditStore.open(f"sqlite:///{path}", LOG)
    _write(store, signer, rng, SIZE - ROLLBACK_AT, ROLLBACK_AT)
    store.close()
    with sqlite3.connect(path) as db:
        (note,) = db.execute(
            "SELECT note FROM audit_checkpoints ORDER BY size DESC, id DESC LIMIT 1"
        ).fetchone()
    other = TransitSigner.for_key(bao.address, bao.node_token, KeyRef("transit-us", KEY.name))
    yield Log(path, d / "rollback.sqlite", signer.public_keys(), [note], other)


def _verify(log: Log, path: Path) -> LogReport:
    engine = read_only_engine(f"sqlite:///{path}")
    try:
        return verify_log(engine, LOG, log.keys, log.witness)
    finally:
        engine.dispose()


def test_the_untouched_log_verifies(log: Log) -> None:
    report = _verify(log, log.path)
    assert report.ok, report.problem
    # At least the one each writer signs when it closes (more as batches allow).
    assert report.entries == SIZE and report.checkpoints >= 2
    # The saved checkpoint alone proves the rolled-back copy is behind.
    behind = _verify(log, log.rollback)
    assert not behind.ok and f"entry {ROLLBACK_AT + 1}" in str(behind.problem)


# -- the mutations -------------------------------------------------------------

Mutation = Callable[[sqlite3.Connection, Log], None]


def _flip_byte(seq: int, column: str, pos: int) -> Mutation:
    def m(db: sqlite3.Connection, _: Log) -> None:
        (value,) = db.execute(
            f"SELECT {column} FROM audit_entries WHERE seq = ?", (seq,)
        ).fetchone()
        if value is None:
            value = "0"
        text = str(value)
        i = pos % len(text)
        repl = "1" if text[i] != "1" else "2"
        new: object = text[:i] + repl + text[i + 1 :]
        if column == "seq":  # a digit put in front: a position no entry holds
            new = int("9" + text)
        elif isinstance(value, int):
            new = int(str(new))
        db.execute(f"UPDATE audit_entries SET {column} = ? WHERE seq = ?", (new, seq))

    return m


def _delete(seq: int) -> Mutation:
    return lambda db, _: db.execute("DELETE FROM audit_entries WHERE seq = ?", (seq,)) and None


def _swap(a: int, b: int) -> Mutation:
    def m(db: sqlite3.Connection, _: Log) -> None:
        cols = "at_us, subject, entry, hash"
        ra = db.execute(f"SELECT {cols} FROM audit_entries WHERE seq = ?", (a,)).fetchone()
        rb = db.execute(f"SELECT {cols} FROM audit_entries WHERE seq = ?", (b,)).fetchone()
        sql = "UPDATE audit_entries SET at_us=?, subject=?, entry=?, hash=? WHERE seq = ?"
        db.execute(sql, (*rb, a))
        db.execute(sql, (*ra, b))

    return m


def _truncate(keep: int) -> Mutation:
    """A careful attacker: drops the tail, moves the head back, drops the
    checkpoints beyond it."""

    def m(db: sqlite3.Connection, _: Log) -> None:
        (h,) = db.execute("SELECT hash FROM audit_entries WHERE seq = ?", (keep,)).fetchone()
        db.execute("DELETE FROM audit_entries WHERE seq > ?", (keep,))
        db.execute("UPDATE audit_heads SET seq = ?, hash = ?", (keep, h))
        db.execute("DELETE FROM audit_checkpoints WHERE size > ?", (keep,))

    return m


def _fork(seq: int) -> Mutation:
    """Rewrites an entry and re-chains everything after it, head included, and
    drops the checkpoints that no longer match: only signatures can tell."""

    def m(db: sqlite3.Connection, _: Log) -> None:
        rows = db.execute(
            "SELECT seq, entry FROM audit_entries WHERE seq >= ? ORDER BY seq", (seq - 1,)
        ).fetchall()
        prev = bytes(32)
        if seq > 1:
            (ph,) = db.execute(
                "SELECT hash FROM audit_entries WHERE seq = ?", (seq - 1,)
            ).fetchone()
            prev = bytes.fromhex(ph)
        for s, text in rows:
            if s < seq:
                continue
            if s == seq:
                entry = json.loads(text)
                entry["decision"] = "ok" if entry["decision"] != "ok" else "PURPOSE_NOT_ALLOWED"
                text = canonical(entry).decode()
            prev = chain_hash(prev, text.encode())
            db.execute(
                "UPDATE audit_entries SET entry = ?, hash = ? WHERE seq = ?", (text, prev.hex(), s)
            )
        db.execute("UPDATE audit_heads SET hash = ?", (prev.hex(),))
        db.execute("DELETE FROM audit_checkpoints WHERE size >= ?", (seq,))

    return m


def _forge_checkpoint(kind: str) -> Mutation:
    def m(db: sqlite3.Connection, log: Log) -> None:
        size, h, note = db.execute(
            "SELECT size, hash, note FROM audit_checkpoints ORDER BY id LIMIT 1"
        ).fetchone()
        if kind == "size":  # the signed body edited
            note = note.replace(f"\n{size}\n", f"\n{size + 1}\n", 1)
        elif kind == "signature":  # one signature byte changed
            i = note.rindex(" ") + 5
            note = note[:i] + ("A" if note[i] != "A" else "B") + note[i + 1 :]
        else:  # a real signature by another region's key
            note = sign_checkpoint(
                Checkpoint(LOG, size, bytes.fromhex(h)), log.other_signer, "transit-us/x"
            )
        db.execute(
            "INSERT INTO audit_checkpoints (log, size, hash, at_us, note) VALUES (?, ?, ?, 0, ?)",
            (LOG, size, h, note),
        )

    return m


def _head(seq_delta: int) -> Mutation:
    def m(db: sqlite3.Connection, _: Log) -> None:
        if seq_delta:
            db.execute("UPDATE audit_heads SET seq = seq + ?", (seq_delta,))
        else:
            db.execute("UPDATE audit_heads SET hash = ?", ("00" * 32,))

    return m


def _mutations() -> list[tuple[str, Mutation]]:
    rng = random.Random(2026)
    out: list[tuple[str, Mutation]] = []
    for column, n in (("entry", 30), ("hash", 10), ("at_us", 5), ("subject", 5), ("seq", 3)):
        for _ in range(n):
            seq = rng.randint(1, SIZE)
            out.append((f"byte-{column}-{seq}", _flip_byte(seq, column, rng.randint(0, 4000))))
    for seq in (1, SIZE, *rng.sample(range(2, SIZE), 8)):
        out.append((f"delete-{seq}", _delete(seq)))
    for _ in range(10):
        a, b = sorted(rng.sample(range(1, SIZE + 1), 2))
        out.append((f"swap-{a}-{b}", _swap(a, b)))
    out.append(("swap-neighbours", _swap(1000, 1001)))
    for keep in (SIZE - 1, SIZE - 10, 1999 - 400, 1):
        out.append((f"truncate-to-{keep}", _truncate(keep)))
    for seq in (1, 10, ROLLBACK_AT + 1, SIZE - 1, SIZE):
        out.append((f"fork-at-{seq}", _fork(seq)))
    for kind in ("size", "signature", "wrong-key"):
        out.append((f"forged-checkpoint-{kind}", _forge_checkpoint(kind)))
    out.append(("head-seq", _head(1)))
    out.append(("head-hash", _head(0)))
    return out


MUTATIONS = _mutations()


@pytest.mark.parametrize("mutation", [m for _, m in MUTATIONS], ids=[n for n, _ in MUTATIONS])
def test_audit_tamper_mutation_is_detected(log: Log, mutation: Mutation, tmp_path: Path) -> None:
    copy = tmp_path / "audit-de.sqlite"
    shutil.copy(log.path, copy)
    with sqlite3.connect(copy) as db:
        before = db.execute("SELECT count(*), sum(length(entry)) FROM audit_entries").fetchone()
        mutation(db, log)
    report = _verify(log, copy)
    assert not report.ok, f"undetected (entries {before})"
    assert report.problem


def test_a_rolled_back_database_is_detected_by_a_newer_saved_checkpoint(log: Log) -> None:
    report = _verify(log, log.rollback)
    assert not report.ok
    assert "truncated or rolled back" in str(report.problem)
    # Without the witness copy the copy is a consistent older log: that is
    # what saving checkpoints elsewhere is for.
    engine = read_only_engine(f"sqlite:///{log.rollback}")
    try:
        assert verify_log(engine, LOG, log.keys, []).ok
    finally:
        engine.dispose()

"""The audit log's pure parts: canonical form, chain, pseudonyms, signed notes,
request notes, and group commit on a real SQLite file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vault.audit import (
    CONTROL_LOG,
    DEFAULT_BATCH_WINDOW,
    Auditor,
    AuditStore,
    AuditWriter,
    BadCheckpoint,
    Checkpoint,
    RequestNote,
    about,
    canonical,
    chain_hash,
    noting,
    open_checkpoint,
    pseudonym,
    pseudonym_key,
    sign_checkpoint,
    touched,
)
from vault.audit._store import read_log, read_only_engine
from vault.audit._verify import verify_log
from vault.config import NodeSettings, default_regions_file


class LocalSigner:
    """An Ed25519 key in memory (the node signs with OpenBao Transit)."""

    def __init__(self, version: int = 1) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.version = version

    def sign(self, message: bytes) -> tuple[int, bytes]:
        return self.version, self.key.sign(message)

    def public(self) -> dict[int, bytes]:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {self.version: raw}


def test_canonical_form_is_sorted_compact_utf8() -> None:
    assert canonical({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


def test_chain_hash_is_domain_separated_and_ordered() -> None:
    e1, e2 = b'{"seq":1}', b'{"seq":2}'
    h1 = chain_hash(bytes(32), e1)
    assert h1 != hashlib.sha256(bytes(32) + e1).digest()
    assert chain_hash(h1, e2) != chain_hash(chain_hash(bytes(32), e2), e1)


def test_pseudonyms_depend_on_the_data_key() -> None:
    k1, k2 = pseudonym_key(b"\x01" * 32), pseudonym_key(b"\x02" * 32)
    assert pseudonym(k1, "de_sub_x") == pseudonym(k1, "de_sub_x")
    assert pseudonym(k1, "de_sub_x") != pseudonym(k2, "de_sub_x")
    assert pseudonym(k1, "de_sub_x") != pseudonym(k1, "de_sub_y")
    assert "de_sub_x" not in pseudonym(k1, "de_sub_x")


def test_a_signed_checkpoint_opens_only_unaltered_and_with_its_key() -> None:
    signer = LocalSigner()
    cp = Checkpoint("de", 42, b"\x07" * 32)
    note = sign_checkpoint(cp, signer, "transit-de/pdvault-audit")
    assert note.startswith("pdvault audit de\n42\n")
    assert open_checkpoint(note, signer.public()) == cp
    with pytest.raises(BadCheckpoint):
        open_checkpoint(note.replace("\n42\n", "\n43\n"), signer.public())
    with pytest.raises(BadCheckpoint):
        open_checkpoint(note, LocalSigner().public())
    with pytest.raises(BadCheckpoint):
        open_checkpoint(note, {2: signer.public()[1]})  # another key version
    with pytest.raises(BadCheckpoint):
        open_checkpoint("pdvault audit de\n42\n", signer.public())


def test_a_request_note_gives_entries_per_log_with_pseudonyms() -> None:
    note = RequestNote("GetRecord", "rid-1")
    with noting(note):
        about("de", "de_sub_a", "de_rec_1", lambda _: pseudonym_key(b"\x01" * 32))
        touched("user.name", ["first", "last"])
        about("us", "us_sub_b", None, lambda _: None)  # gone: no pseudonym
    touched("user.contact.email", ["address"])  # outside the request: ignored
    note.decision = "ok"
    note.seal()
    by_log = note.entries("node-1", 5)
    k = pseudonym_key(b"\x01" * 32)
    (de,) = by_log["de"]
    assert de["subject"] == pseudonym(k, "de_sub_a") and de["record"] == pseudonym(k, "de_rec_1")
    assert de["categories"] == ["user.name"] and de["fields"] == ["first", "last"]
    (us,) = by_log["us"]
    assert us["subject"] is None and us["record"] is None
    assert "de_sub_a" not in repr(by_log) and "us_sub_b" not in repr(by_log)
    refused = RequestNote("GetSubject", "rid-2", decision="UNAUTHENTICATED")
    assert list(refused.entries("node-1", 6)) == [CONTROL_LOG]


def _entry(i: int) -> dict[str, Any]:
    return {"time_us": i, "node": "n", "operation": "GetRecord", "decision": "ok"}


def test_group_commit_batches_waiting_entries_into_one_transaction(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit-de.sqlite'}"
    store = AuditStore.open(url, "de")
    calls: list[int] = []
    first_in = threading.Event()
    release = threading.Event()
    real_append = store.append

    def append(batch: Any) -> tuple[int, bytes]:
        calls.append(len(batch))
        if len(calls) == 1:
            first_in.set()
            release.wait(10)
        return real_append(batch)

    store.append = append  # type: ignore[method-assign]
    signer = LocalSigner()
    writer = AuditWriter(store, signer=signer, key_name="k")
    first = writer.submit([_entry(0)])
    assert first_in.wait(10)
    waiting = [writer.submit([_entry(i)]) for i in range(1, 51)]
    release.set()
    assert first.result(10) == 1
    assert [f.result(10) for f in waiting] == [51] * 50
    assert calls == [1, 50]  # the 50 that waited went in one transaction
    writer.close()  # signs a last checkpoint
    store.close()
    engine = read_only_engine(url)
    try:
        assert [e.seq for e in read_log(engine, "de")] == list(range(1, 52))
        report = verify_log(engine, "de", signer.public())
    finally:
        engine.dispose()
    assert report.ok and report.entries == 51 and report.checkpoints == 1


@pytest.mark.parametrize(("window", "commits"), [(0.0, [1, 1, 1, 1, 1]), (0.2, [5])])
def test_the_batch_window_puts_entries_of_several_loop_turns_in_one_commit(
    tmp_path: Path, window: float, commits: list[int]
) -> None:
    url = f"sqlite:///{tmp_path / 'audit-de.sqlite'}"
    store = AuditStore.open(url, "de")
    calls: list[int] = []
    real_append = store.append_nowait

    def append_nowait(batch: Any) -> tuple[int, bytes]:
        calls.append(len(batch))
        return real_append(batch)

    store.append_nowait = append_nowait  # type: ignore[method-assign]
    writer = AuditWriter(store, batch_window=window)

    async def five_calls() -> list[int]:
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(5):  # one entry per loop turn, as gRPC hands calls over
            futures.append(writer.submit_on_loop([_entry(i)], loop, now=False))
            await asyncio.sleep(0)
        return list(await asyncio.gather(*futures))

    sizes = asyncio.run(five_calls())
    writer.close()
    store.close()
    assert calls == commits
    assert sizes == ([1, 2, 3, 4, 5] if window == 0 else [5] * 5)
    engine = read_only_engine(url)
    try:
        assert verify_log(engine, "de", {}).entries == 5
    finally:
        engine.dispose()


def test_the_auditor_waits_for_the_callers_it_saw_and_never_holds_a_lone_one(
    tmp_path: Path,
) -> None:
    """A lone call is committed after its turn (no wait, even with a long
    window); once three calls were in progress at once, the third waiting call
    brings the commit of all three at once — long before the window ends."""
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit-de.sqlite'}", "de")
    calls: list[int] = []
    real_append = store.append_nowait

    def append_nowait(batch: Any) -> tuple[int, bytes]:
        calls.append(len(batch))
        return real_append(batch)

    store.append_nowait = append_nowait  # type: ignore[method-assign]
    auditor = Auditor({"de": AuditWriter(store, batch_window=30.0)}, node="n")

    def note(i: int) -> RequestNote:
        n = RequestNote("GetRecord", f"r{i}")
        n.region = "de"
        return n

    async def run() -> float:
        loop = asyncio.get_running_loop()
        lone = note(0)
        auditor.begin(lone)
        started = time.monotonic()
        await asyncio.gather(*auditor.submit_on_loop(lone, loop))
        auditor.end(lone)
        assert calls == [1] and time.monotonic() - started < 1
        three = [note(i) for i in (1, 2, 3)]
        for n in three:
            auditor.begin(n)
        futures = []
        for n in three:
            futures += auditor.submit_on_loop(n, loop)
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
        for n in three:
            auditor.end(n)
        return time.monotonic() - started

    took = asyncio.run(run())
    auditor.close()
    assert calls == [1, 3] and took < 5  # one commit for the three, no 30 s window


def test_a_negative_batch_window_is_refused(tmp_path: Path) -> None:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit-de.sqlite'}", "de")
    try:
        with pytest.raises(ValueError, match="batch window"):
            AuditWriter(store, batch_window=-0.001)
    finally:
        store.close()


def test_a_failed_batch_fails_every_request_in_it(tmp_path: Path) -> None:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit-de.sqlite'}", "de")

    def broken(batch: Any) -> tuple[int, bytes]:
        raise OSError("disk full")

    store.append = broken  # type: ignore[method-assign]
    writer = AuditWriter(store)
    futures = [writer.submit([_entry(i)]) for i in range(3)]
    for f in futures:
        with pytest.raises(OSError):
            f.result(10)
    writer.close()
    store.close()


def test_appends_on_the_loop_chain_onto_what_another_writer_appended_meanwhile(
    tmp_path: Path,
) -> None:
    """The loop's connection remembers the head it wrote; when another
    process's writer moved it since, the entries are chained onto the head
    as it is, not onto the remembered one (the chain verifies, no seq twice)."""
    url = f"sqlite:///{tmp_path / 'audit-de.sqlite'}"
    ours, theirs = AuditStore.open(url, "de"), AuditStore.open(url, "de")
    try:
        assert ours.append_nowait([_entry(1)])[0] == 1
        assert theirs.append_nowait([_entry(2), _entry(3)])[0] == 3  # our head is stale now
        assert theirs.append([_entry(4)])[0] == 4  # the writer thread's path too
        size, head = ours.append_nowait([_entry(5)])
        assert size == 5 and (size, head) == ours.head()
        assert ours.append_nowait([_entry(6)])[0] == 6  # its own head again
    finally:
        ours.close()
        theirs.close()
    engine = read_only_engine(url)
    try:
        assert [e.seq for e in read_log(engine, "de")] == [1, 2, 3, 4, 5, 6]
        assert verify_log(engine, "de", {}).entries == 6
    finally:
        engine.dispose()


def test_after_a_failed_append_on_the_loop_the_chain_goes_on_from_the_stored_head(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'audit-de.sqlite'}"
    store = AuditStore.open(url, "de")
    try:
        store.append_nowait([_entry(1)])
        with pytest.raises(ValueError, match="unknown audit fields"):
            store.append_nowait([{**_entry(2), "value": "x"}])
        assert store._raw_head is None  # read again under the next append's lock
        store.append([_entry(3)])
        assert store.append_nowait([_entry(4)])[0] == 3
    finally:
        store.close()
    engine = read_only_engine(url)
    try:
        assert verify_log(engine, "de", {}).entries == 3
    finally:
        engine.dispose()


def test_the_writer_thread_copies_the_write_ahead_log_of_the_loops_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's connection never checkpoints (SQLite would do it inside a
    commit, on the loop); the writer thread does, every so many commits."""
    monkeypatch.setattr("vault.audit._writer.WAL_CHECKPOINT_COMMITS", 3)
    path = tmp_path / "audit-de.sqlite"
    store = AuditStore.open(f"sqlite:///{path}", "de")
    threads: list[str] = []
    real = store.checkpoint_wal

    def checkpoint_wal() -> None:
        threads.append(threading.current_thread().name)
        real()

    store.checkpoint_wal = checkpoint_wal  # type: ignore[method-assign]
    writer = AuditWriter(store, batch_window=0.0)

    async def commits(n: int) -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            await writer.submit_on_loop([_entry(i)], loop)

    asyncio.run(commits(7))
    assert store._raw is not None
    assert store._raw.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    deadline = time.monotonic() + 10
    while not threads and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    store.close()
    # After commits 3 and 6 (one copy for both if the thread comes late), on
    # the thread, never on the loop.
    assert threads in (["audit-de"], ["audit-de", "audit-de"])


def test_a_batch_handed_to_a_stuck_writer_thread_fails_after_the_timeout(
    tmp_path: Path,
) -> None:
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit-de.sqlite'}", "de")
    release = threading.Event()
    real_append = store.append

    def stuck(batch: Any) -> tuple[int, bytes]:
        release.wait(30)
        return real_append(batch)

    def locked(batch: Any) -> tuple[int, bytes]:
        raise sqlite3.OperationalError("database is locked")

    store.append = stuck  # type: ignore[method-assign]
    store.append_nowait = locked  # type: ignore[method-assign]
    writer = AuditWriter(store, batch_window=0.0, timeout=0.3)

    async def call() -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await writer.submit_on_loop([_entry(1)], asyncio.get_running_loop())
        return time.monotonic() - started

    try:
        took = asyncio.run(call())
    finally:
        release.set()
        writer.close()
        store.close()
    assert 0.25 < took < 5


def test_the_settings_default_is_the_writers() -> None:
    assert NodeSettings.audit_batch_window_seconds == DEFAULT_BATCH_WINDOW


@pytest.mark.parametrize("command", ["up", "serve"])
@pytest.mark.parametrize("ms", ["-1", "100.5"])
def test_a_node_refuses_an_audit_batch_window_out_of_range(
    tmp_path: Path, command: str, ms: str
) -> None:
    extra = (
        ("--region", "de", "--config", str(default_regions_file().parent))
        if command == "serve"
        else ()
    )
    done = subprocess.run(
        [
            *(sys.executable, "-m", "vault.cli", command, *extra),
            *("--data-dir", str(tmp_path / "d"), "--audit-batch-ms", ms),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "BAO_TOKEN": "unused", "BAO_ADDR": "http://127.0.0.1:1"},
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to start: --audit-batch-ms must be between 0 and 100" in done.stderr
    assert not (tmp_path / "d").exists()  # nothing made

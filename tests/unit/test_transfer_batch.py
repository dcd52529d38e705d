"""Transfer entries of audited reads are stored in batches on the event loop,
in a real SQLite cell database: one transaction for the reads of several loop
turns, every read told when its entry is stored (or that it could not be),
and flushed together with the audit entries the auditor commits at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from vault import audit
from vault.audit import Auditor, AuditStore, AuditWriter, RequestNote, noting
from vault.residency import TransferBatch, TransferNotRecorded
from vault.store import CellTransferLog, TransferEntry, make_engine, migrate
from vault.store._models import transfers


def _entry(i: int) -> TransferEntry:
    return TransferEntry(
        at_us=i + 1,
        from_region="de",
        to_region="us",
        direction="read",
        operation="GetRecord",
        basis="scc",
        purpose="essential.service",
        service="svc",
        token_id=f"t{i}",
        subject_id=f"s{i}",
        record_id=f"r{i}",
        categories=("user.name",),
        allowed=True,
        rule="de->us",
        reason="TRANSFER_ALLOWED",
    )


class CountingLog(CellTransferLog):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[int] = []

    def record_many(self, entries: Any) -> None:
        self.batches.append(len(entries))
        super().record_many(entries)


@pytest.fixture
def log(tmp_path: Path) -> CountingLog:
    engine = make_engine(f"sqlite:///{tmp_path / 'de.db'}")
    migrate(engine)
    return CountingLog(engine)


def _stored(log: CellTransferLog) -> int:
    with log._engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(transfers)).scalar_one())


def test_reads_of_several_loop_turns_share_one_transaction(log: CountingLog) -> None:
    batch = TransferBatch(log, window=0.2)

    async def five_reads() -> None:
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(5):
            futures.append(batch.submit_on_loop([_entry(i)], loop, now=False))
            await asyncio.sleep(0)
        assert _stored(log) == 0  # not before the window ends
        await asyncio.gather(*futures)

    asyncio.run(five_reads())
    assert log.batches == [5] and _stored(log) == 5
    assert {e.token_id for e in log.for_subject("s3")} == {"t3"}


def test_a_batch_that_cannot_be_stored_fails_every_read_in_it(log: CountingLog) -> None:
    def broken(entries: Any) -> None:
        raise OSError("disk full")

    log.record_many = broken  # type: ignore[method-assign]
    batch = TransferBatch(log, window=0.0)

    async def reads() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        futures = [batch.submit_on_loop([_entry(i)], loop, now=False) for i in range(3)]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    outcomes = asyncio.run(reads())
    assert all(isinstance(o, TransferNotRecorded) for o in outcomes)
    assert all(o.reason == "STORE_UNAVAILABLE" for o in outcomes)  # type: ignore[union-attr]
    assert "disk full" not in str(outcomes[0])


def test_the_auditor_stores_a_calls_deferred_entries_with_its_audit_entry(
    log: CountingLog, tmp_path: Path
) -> None:
    """A lone call is committed at once (no window wait): its transfer entry
    too, in the same loop turn as its audit entry."""
    store = AuditStore.open(f"sqlite:///{tmp_path / 'audit-de.sqlite'}", "de")
    auditor = Auditor({"de": AuditWriter(store, batch_window=30.0)}, node="n")
    batch = TransferBatch(log, window=30.0)
    note = RequestNote("GetRecord", "r1")
    note.region = "de"
    with noting(note):
        assert audit.defer(batch, _entry(1))
    assert not audit.defer(batch, _entry(2))  # outside a call: the caller stores it

    async def call() -> None:
        auditor.begin(note)
        await asyncio.wait_for(
            asyncio.gather(*auditor.submit_on_loop(note, asyncio.get_running_loop())), 10
        )
        auditor.end(note)

    try:
        asyncio.run(call())
    finally:
        auditor.close()
    assert log.batches == [1] and _stored(log) == 1
    note.restart()
    assert note.deferred == {}

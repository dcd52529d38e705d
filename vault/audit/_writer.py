"""Group commit: concurrent entries go into one transaction — on the event
loop (:meth:`AuditWriter.submit_on_loop`, local SQLite), or through the log's
writer thread (:meth:`AuditWriter.submit`), which also signs a checkpoint
every N entries or T seconds.

On the event loop, a commit costs about as much as the rest of a cached read,
and a busy node's calls reach their audit step one loop turn apart (gRPC
hands them over one per turn), so committing after every turn writes about
one entry per transaction. The writers therefore wait, up to a *batch window*
(``--audit-batch-ms``, 8 ms by default), for the calls of the other callers:
:class:`vault.audit.Auditor` counts the calls in progress, and commits at once
when as many calls wait for their commit as were lately in progress at once
(a lone caller, or every caller of a busy node, waits for nobody).

A request waits on the returned future before it returns anything; the
future fails when the batch could not be made durable (the request then
fails, see :mod:`vault.service._servicer`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from vault import metrics
from vault.audit._checkpoint import Checkpoint, Signer, sign_checkpoint
from vault.audit._store import AuditStore
from vault.loopbatch import LoopBatch

log = logging.getLogger("vault.audit")

MAX_BATCH = 512
#: Commits on the event loop between two copies of the write-ahead log into
#: the database, which the writer thread makes (see
#: :meth:`AuditStore.defer_wal_checkpoints`); SQLite's own threshold is 1,000
#: pages, a few hundred commits of a busy node.
WAL_CHECKPOINT_COMMITS = 200
#: The longest an entry on the event loop waits for others to share its
#: commit; 0: the commit follows the loop turn.
DEFAULT_BATCH_WINDOW = 0.008


@dataclass(frozen=True)
class CheckpointPolicy:
    """When a writer signs a checkpoint: after ``every_entries`` new entries, or
    ``every_seconds`` after the last one if any entry came since."""

    every_entries: int = 1000
    every_seconds: float = 60.0


_Item = tuple[Sequence[Mapping[str, Any]], "Future[int]"]


class AuditWriter(LoopBatch[Mapping[str, Any], int]):
    """The one writer of a log in this process."""

    def __init__(
        self,
        store: AuditStore,
        *,
        signer: Signer | None = None,
        key_name: str = "",
        checkpoints: CheckpointPolicy | None = None,
        batch_window: float = DEFAULT_BATCH_WINDOW,
        timeout: float = 5.0,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        super().__init__(batch_window)
        self.store = store
        self._timeout = timeout
        self._signer = signer
        self._key_name = key_name
        self._policy = checkpoints or CheckpointPolicy()
        self._clock = clock
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._signed_size, _ = store.head()
        #: The log's size after this process's last commit (another process's
        #: appends show when the head is read).
        self._committed_size = self._signed_size
        self._last_checkpoint = time.monotonic()
        self._closed = False
        self._on_flush: Callable[[int], None] | None = None
        self._inline_since_poke = 0
        self._commits_since_wal = 0
        self._wal_due = False  # the thread copies the write-ahead log on its next round
        if store.inline_capable:
            store.defer_wal_checkpoints()
        # Bound once: a batch costs two increments.
        self._ok = metrics.AUDIT_BATCHES.labels(store.log, "ok")
        self._failed = metrics.AUDIT_BATCHES.labels(store.log, "failed")
        self._entries = metrics.AUDIT_ENTRIES.labels(store.log)
        self._thread = threading.Thread(target=self._run, name=f"audit-{store.log}", daemon=True)
        self._thread.start()

    def submit_on_loop(
        self,
        batch: Sequence[Mapping[str, Any]],
        loop: asyncio.AbstractEventLoop,
        *,
        now: bool = True,
        flushed: Callable[[int], None] | None = None,
    ) -> asyncio.Future[int]:
        """Like :meth:`submit`, for a caller on the event loop ``loop``.

        With a local SQLite file the entries are appended on the loop itself,
        with the others pending, in one transaction: right after this turn of
        the loop when ``now`` (or without a batch window), else when
        :meth:`flush_soon` is called or the batch window ends (no thread
        hand-off: one per call costs more than the insert). ``flushed(n)`` is
        told how many submissions each commit took. When another writer holds
        the lock, or with another database, the batch goes to the writer thread.

        The future is settled at the latest when the batch window ends (the
        commit on the loop, or its failure); a batch handed to the writer
        thread fails ``TimeoutError`` if it is not durable ``timeout`` seconds
        later, so the caller needs no timer of its own.
        """
        fut: asyncio.Future[int] = loop.create_future()
        if not self.store.inline_capable or self._closed:
            self._hand_over([(batch, fut)], loop)
            return fut
        self._on_flush = flushed
        self._add(batch, fut, loop, now)
        return fut

    def _write(
        self,
        items: list[tuple[Sequence[Mapping[str, Any]], asyncio.Future[int]]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """The commit on the loop of what calls handed over (see :meth:`submit_on_loop`)."""
        if self._on_flush is not None:
            self._on_flush(len(items))
        entries = [e for batch, _ in items for e in batch]
        try:
            size, _ = self.store.append_nowait(entries)
        except Exception:
            # Locked by another writer (or failing): the thread waits and retries.
            self._hand_over(items, loop, entries)
            return
        self._counted(len(entries))
        self._committed_size = size
        for _, fut in items:
            if not fut.done():
                fut.set_result(size)
        self._inline_since_poke += len(entries)
        self._commits_since_wal += 1
        poke = False
        if self._signer is not None and self._inline_since_poke >= self._policy.every_entries:
            self._inline_since_poke = 0
            poke = True  # the thread looks whether a checkpoint is due
        if self._commits_since_wal >= WAL_CHECKPOINT_COMMITS:
            self._commits_since_wal = 0
            self._wal_due = poke = True
        if poke:
            self._queue.put(((), Future()))

    def _hand_over(
        self,
        items: list[tuple[Sequence[Mapping[str, Any]], asyncio.Future[int]]],
        loop: asyncio.AbstractEventLoop,
        entries: list[Mapping[str, Any]] | None = None,
    ) -> None:
        """Gives the batch to the writer thread; its futures fail with
        ``TimeoutError`` if it is not durable within the timeout."""
        if entries is None:
            entries = [e for batch, _ in items for e in batch]
        handed = self.submit(entries)
        futures = [fut for _, fut in items]
        timer = loop.call_later(
            self._timeout,
            _settle_all,
            futures,
            TimeoutError("the audit batch was not durable in time"),
        )

        def done(src: Future[int]) -> None:  # on the loop, once the thread is done
            timer.cancel()
            if src.cancelled():
                for fut in futures:
                    fut.cancel()
                return
            error = src.exception()
            _settle_all(futures, error, None if error is not None else src.result())

        handed.add_done_callback(lambda src: loop.call_soon_threadsafe(done, src))

    def submit(self, batch: Sequence[Mapping[str, Any]]) -> Future[int]:
        """Queues entries; the future gives the log size once they are durable."""
        fut: Future[int] = Future()
        if self._closed:
            fut.set_exception(RuntimeError("audit writer closed"))
        else:
            self._queue.put((batch, fut))
        return fut

    def close(self) -> None:
        """Writes what is queued, signs a last checkpoint, stops the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=max(0.05, self._policy.every_seconds))
            except queue.Empty:
                self._maybe_checkpoint(idle=True)
                continue
            items: list[_Item] = []
            if first is None:
                stop = True
            else:
                items.append(first)
            while len(items) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    continue
                items.append(nxt)
            if items:
                self._commit(items)
            if self._wal_due:
                self._wal_due = False
                self._checkpoint_wal()
            self._maybe_checkpoint(idle=stop)

    def _commit(self, items: list[_Item]) -> None:
        entries = [e for batch, _ in items for e in batch]
        try:
            size, _ = self.store.append(entries)
        except Exception as e:
            log.error(
                "audit %s: batch of %d not written: %s",
                self.store.log,
                len(entries),
                type(e).__name__,
            )
            self._failed.inc()
            for _, fut in items:
                _settle(fut, error=e)
            return
        if entries:
            self._counted(len(entries))
        self._committed_size = size
        for _, fut in items:
            _settle(fut, size)

    def _checkpoint_wal(self) -> None:
        try:
            self.store.checkpoint_wal()
        except Exception as e:  # busy or failing: the next round tries again
            log.debug("audit %s: write-ahead log not copied: %s", self.store.log, type(e).__name__)

    def _counted(self, entries: int) -> None:
        self._ok.inc()
        self._entries.inc(entries)

    def _maybe_checkpoint(self, *, idle: bool) -> None:
        if self._signer is None:
            return
        if (
            not idle
            and self._committed_size - self._signed_size < self._policy.every_entries
            and time.monotonic() - self._last_checkpoint < self._policy.every_seconds
        ):
            return  # not due: the head need not be read after every commit
        try:
            size, head = self.store.head()
        except Exception as e:
            log.warning("audit %s: head unreadable: %s", self.store.log, type(e).__name__)
            return
        if size <= self._signed_size:
            return
        due = size - self._signed_size >= self._policy.every_entries or (
            time.monotonic() - self._last_checkpoint >= self._policy.every_seconds
        )
        if not (due or idle):
            return
        self.checkpoint(size, head)

    def checkpoint(self, size: int | None = None, head: bytes | None = None) -> str | None:
        """Signs and stores a checkpoint of the head (or of ``size``/``head``);
        the signed note, or None if the key service or the database failed."""
        if self._signer is None:
            return None
        try:
            if size is None or head is None:
                size, head = self.store.head()
            note = sign_checkpoint(
                Checkpoint(self.store.log, size, head), self._signer, self._key_name
            )
            self.store.add_checkpoint(size, head, self._clock(), note)
        except Exception as e:  # the next round retries; requests are not held up
            log.warning("audit %s: checkpoint not signed: %s", self.store.log, type(e).__name__)
            return None
        self._signed_size = size
        self._last_checkpoint = time.monotonic()
        return note


def _settle_all(
    futures: list[asyncio.Future[int]], error: BaseException | None, size: int | None = None
) -> None:
    """Resolves the loop's futures of a batch (those still waiting)."""
    for fut in futures:
        if fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            assert size is not None
            fut.set_result(size)


def _settle(fut: Future[int], size: int = 0, error: Exception | None = None) -> None:
    """Resolves a request's future, unless the request stopped waiting."""
    if fut.cancelled():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(size)
    except InvalidStateError:  # cancelled meanwhile (the request timed out)
        pass

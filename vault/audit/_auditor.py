"""The audit logs of a node: one writer per log, and what a request submits."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from vault.audit._note import CONTROL_LOG, DeferredSink, RequestNote
from vault.audit._writer import AuditWriter
from vault.errors import StoreUnavailable


class AuditUnavailable(StoreUnavailable):
    """An audit entry could not be made durable: the request fails, returns nothing."""

    reason = "AUDIT_UNAVAILABLE"


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Auditor:
    """Every audit log a node writes: its served regions' and ``control``."""

    def __init__(
        self,
        writers: Mapping[str, AuditWriter],
        *,
        node: str | None = None,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.writers = dict(writers)
        self.node = node or node_name()
        self._clock = clock
        # The batch window's bookkeeping (calls on the event loop only): calls
        # in progress, calls waiting for their commit, and the most calls in
        # progress at once in this second and the last (how many callers there
        # are, as far as the node can tell).
        self._in_progress = 0
        self._waiting = 0
        self._peak = self._peak_before = 1
        self._peak_second = 0
        #: The deferred sinks calls used (flushed with the writers).
        self._sinks: set[DeferredSink] = set()

    def begin(self, note: RequestNote) -> None:
        """A call on the event loop that will submit entries started."""
        if note.active:
            return
        note.active = True
        self._in_progress += 1
        second = int(time.monotonic())
        if second != self._peak_second:
            self._peak_before = self._peak if second == self._peak_second + 1 else 1
            self._peak, self._peak_second = 1, second
        self._peak = max(self._peak, self._in_progress)

    def end(self, note: RequestNote) -> None:
        """The call ended (answered or failed)."""
        if note.active:
            note.active = False
            self._in_progress -= 1

    def callers(self) -> int:
        """How many calls were in progress at once lately (at least 1)."""
        return max(self._peak, self._peak_before, 1)

    def _flushed(self, submissions: int) -> None:
        self._waiting = max(0, self._waiting - submissions)

    def writer(self, log: str) -> AuditWriter:
        w = self.writers.get(log)
        if w is None:
            raise AuditUnavailable(f"no audit log {log!r} on this node")
        return w

    def submit_on_loop(
        self, note: RequestNote, loop: asyncio.AbstractEventLoop
    ) -> list[asyncio.Future[Any]]:
        """Queues the note's entries (sealed) in their logs, and its deferred
        records in their sinks, for a caller on the event loop (see
        :meth:`AuditWriter.submit_on_loop`): the futures settle once each is
        durable."""
        out: list[asyncio.Future[Any]] = []
        # Commit at once when every caller seen lately is waiting for its
        # commit (nobody else will come to share it); else the batch window.
        by_log = note.entries(self.node, self._clock())
        self._waiting += len(by_log)
        now = self._waiting >= self.callers()
        for log, batch in by_log.items():
            w = self.writers.get(log) or self.writers.get(CONTROL_LOG)
            if w is None:
                f: asyncio.Future[int] = loop.create_future()
                f.set_exception(AuditUnavailable(f"no audit log {log!r} on this node"))
                out.append(f)
                self._flushed(1)
            else:
                out.append(w.submit_on_loop(batch, loop, now=now, flushed=self._flushed))
        for sink, items in note.deferred.items():
            out.append(sink.submit_on_loop(items, loop, now=now))
            self._sinks.add(sink)
        if now:
            for w in self.writers.values():
                w.flush_soon(loop)
            for sink in self._sinks:
                sink.flush_soon(loop)
        return out

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        for w in self.writers.values():
            w.store.close()

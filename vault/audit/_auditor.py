"""The audit logs of a node: one writer per log, and what a request submits."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from vault.audit._note import CONTROL_LOG, RequestNote
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

    def writer(self, log: str) -> AuditWriter:
        w = self.writers.get(log)
        if w is None:
            raise AuditUnavailable(f"no audit log {log!r} on this node")
        return w

    def submit(self, note: RequestNote) -> list[Future[int]]:
        """Queues the note's entries (sealed) in their logs."""
        return self.submit_entries(note.entries(self.node, self._clock()))

    def submit_on_loop(
        self, note: RequestNote, loop: asyncio.AbstractEventLoop
    ) -> list[asyncio.Future[int]]:
        """Like :meth:`submit`, for a caller on the event loop (see
        :meth:`AuditWriter.submit_on_loop`)."""
        out = []
        for log, batch in note.entries(self.node, self._clock()).items():
            w = self.writers.get(log) or self.writers.get(CONTROL_LOG)
            if w is None:
                f: asyncio.Future[int] = loop.create_future()
                f.set_exception(AuditUnavailable(f"no audit log {log!r} on this node"))
                out.append(f)
            else:
                out.append(w.submit_on_loop(batch, loop))
        return out

    def submit_entries(self, by_log: Mapping[str, list[dict[str, Any]]]) -> list[Future[int]]:
        out = []
        for log, batch in by_log.items():
            w = self.writers.get(log) or self.writers.get(CONTROL_LOG)
            if w is None:
                f: Future[int] = Future()
                f.set_exception(AuditUnavailable(f"no audit log {log!r} on this node"))
                out.append(f)
            else:
                out.append(w.submit(batch))
        return out

    def record_now(self, note: RequestNote, timeout: float) -> None:
        """Submits and waits (for callers off the event loop)."""
        for f in self.submit(note):
            try:
                f.result(timeout=timeout)
            except Exception as e:
                raise AuditUnavailable("the audit log is unavailable; nothing was done") from e

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        for w in self.writers.values():
            w.store.close()

"""Batches of records that calls on the event loop hand over, written together.

A busy node's calls reach the point where their records must be durable one
loop turn apart, so writing each call's alone costs a transaction per call.
A :class:`LoopBatch` keeps what the calls hand over and writes it in one go:
right after the current turn of the loop when asked (:meth:`flush_soon`),
else when its window ends. Used by the audit writers
(:class:`vault.audit.AuditWriter`) and the transfer log of forwarded reads
(:class:`vault.residency.TransferBatch`).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class LoopBatch(ABC, Generic[T, R]):
    """Items of calls on one event loop, written by :meth:`_write` in batches.

    ``window``: the longest a batch waits for more calls (0: the write follows
    the loop turn). For one event loop's use only.
    """

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError("the batch window must not be negative")
        self._window = window
        self._pending: list[tuple[Sequence[T], asyncio.Future[R]]] = []
        self._soon = False  # a write is queued for the next turn of the loop
        self._timer: asyncio.TimerHandle | None = None  # the window's end

    def _add(
        self,
        items: Sequence[T],
        fut: asyncio.Future[R],
        loop: asyncio.AbstractEventLoop,
        now: bool,
    ) -> None:
        """Keeps a call's items; written after this turn if ``now`` (or
        without a window), else when the window ends or :meth:`flush_soon`."""
        self._pending.append((items, fut))
        if now or not self._window:
            self.flush_soon(loop)
        elif self._timer is None and not self._soon:
            self._timer = loop.call_later(self._window, self._flush_pending, loop)

    def flush_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writes what is pending right after this turn of the loop."""
        if self._pending and not self._soon:
            self._soon = True
            loop.call_soon(self._flush_pending, loop)

    def _flush_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        self._soon = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self._write(batch, loop)

    @abstractmethod
    def _write(
        self, batch: list[tuple[Sequence[T], asyncio.Future[R]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Writes the batch and settles every call's future (never raises)."""

"""Where a cross-border transfer is decided and recorded: :class:`TransferGate`.

The home node's cell asks its gate after the policy check and before it opens
any record or writes anything (:mod:`vault.cell`); the entry node asks the same
:func:`transfer_decision` again about the reply (defence in depth, see
:mod:`vault.service._forward`). A caller's entry region is set only from a
verified node certificate (:attr:`vault.policy.Caller.entry_region`); a caller
that entered by the home region itself crosses no border and nothing is
recorded.

Every decision about a crossing, allowed or refused, is recorded in the home
region through :class:`TransferLog`: a write's before anything is written, a
read's before the call answers (with the call's audit entries, in batches:
:class:`TransferBatch`). If it cannot be recorded, the request fails and
nothing crosses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vault import audit
from vault.audit import AuditUnavailable
from vault.errors import AccessDenied
from vault.loopbatch import LoopBatch
from vault.policy import Caller
from vault.residency._transfers import TransferDecision, TransferRules
from vault.store import TransferEntry

log = logging.getLogger("vault.residency")


class TransferLog(Protocol):
    """Where transfer decisions are kept (the cell database today; a
    tamper-evident audit log can chain the same entries)."""

    def record(self, entry: TransferEntry) -> None: ...

    def record_many(self, entries: Sequence[TransferEntry]) -> None: ...

    def for_subject(self, subject_id: str) -> list[TransferEntry]: ...


class TransferRefused(AccessDenied):
    """The transfer rules refuse this crossing; ``reason`` is the decision's."""

    reason = "TRANSFER_NOT_ALLOWED"

    def __init__(self, decision: TransferDecision) -> None:
        super().__init__(
            f"cross-border transfer refused by rule {decision.rule}; "
            "enter by a node of the home region",
            reason=decision.reason,
        )
        self.rule = decision.rule


def transfer_decision(
    rules: TransferRules,
    home: str,
    entry: str,
    basis: str | None,
    purpose: str,
    categories: Sequence[str | None],
) -> TransferDecision:
    """``decide(home, entry, basis, purpose, category)`` for every category
    concerned (``[None]`` for a request about no single category): the first
    refusal, else the decision about the last."""
    decision: TransferDecision | None = None
    for category in categories or (None,):
        decision = rules.decide(home, entry, basis, purpose, category)
        if not decision.allowed:
            return decision
    assert decision is not None
    return decision


#: The reads whose transfer entry goes with the call's audit entries (the
#: export and the access report list the subject's transfers, their own
#: included: theirs is stored before they read them).
DEFERRED_READS = frozenset({"GetRecord", "ListRecords"})


class TransferNotRecorded(AuditUnavailable):
    """A batch of transfer entries could not be stored: its calls fail
    UNAVAILABLE and return nothing (handled like an audit entry that could
    not be made durable, under the cell database's reason)."""

    reason = "STORE_UNAVAILABLE"


class TransferBatch(LoopBatch[TransferEntry, None]):
    """The transfer entries of audited reads, stored in one transaction per
    batch on the event loop (a :class:`vault.audit.DeferredSink`): a read
    that crosses a border answers only once its entry is stored, like its
    audit entry, and waits for it no longer than the audit's batch window.
    A write's entry is stored before the write (:meth:`TransferGate.check`)."""

    def __init__(self, log: TransferLog, window: float) -> None:
        super().__init__(window)
        self._log = log

    def submit_on_loop(
        self, items: list[Any], loop: asyncio.AbstractEventLoop, *, now: bool
    ) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = loop.create_future()
        self._add(items, fut, loop, now)
        return fut

    def _write(
        self,
        items: list[tuple[Sequence[TransferEntry], asyncio.Future[None]]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        try:
            self._log.record_many([e for batch, _ in items for e in batch])
        except Exception as e:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(TransferNotRecorded("transfer record not stored"))
            log.error("transfer entries not stored: %s", type(e).__name__)
            return
        for _, fut in items:
            if not fut.done():
                fut.set_result(None)


class TransferGate:
    """The transfer decisions of one home region, each recorded in its log
    (a read's through ``batch`` when the call is audited)."""

    def __init__(
        self,
        rules: TransferRules,
        home: str,
        log: TransferLog,
        clock: Callable[[], int],
        batch: TransferBatch | None = None,
    ) -> None:
        self.rules = rules
        self.home = home
        self.log = log
        self._clock = clock
        self._batch = batch

    def check(
        self,
        caller: Caller,
        *,
        operation: str,
        write: bool,
        subject_id: str,
        record_id: str | None,
        categories: Sequence[str | None],
    ) -> None:
        """Raises :class:`TransferRefused` (after recording it) unless allowed."""
        entry = caller.entry_region
        if entry is None or entry == self.home:
            return
        claims = caller.claims
        decision = transfer_decision(
            self.rules, self.home, entry, claims.transfer_basis, claims.purpose, categories
        )
        record = TransferEntry(
            at_us=self._clock(),
            from_region=entry if write else self.home,
            to_region=self.home if write else entry,
            direction="write" if write else "read",
            operation=operation,
            basis=claims.transfer_basis,
            purpose=claims.purpose,
            service=claims.sub,
            token_id=claims.jti,
            subject_id=subject_id,
            record_id=record_id,
            categories=tuple(sorted({c for c in categories if c is not None})),
            allowed=decision.allowed,
            rule=decision.rule,
            reason=decision.reason,
        )
        # A read's entry is stored with the call's audit entries, before it
        # answers; a write's now, before anything is written (and so is the
        # entry of a read whose answer lists the subject's transfers).
        batch = None if write or operation not in DEFERRED_READS else self._batch
        if batch is None or not audit.defer(batch, record):
            self.log.record(record)
        # Chained into the home region's audit with the request (pseudonymised).
        audit.transfer(
            {
                "from": record.from_region,
                "to": record.to_region,
                "direction": record.direction,
                "rule": record.rule,
                "allowed": record.allowed,
                "reason": record.reason,
            }
        )
        if not decision.allowed:
            raise TransferRefused(decision)

    def history(self, subject_id: str) -> list[dict[str, Any]]:
        """The subject's transfer entries as plain data (for the export document)."""
        return [e.as_dict() for e in self.log.for_subject(subject_id)]

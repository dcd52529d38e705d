"""Where a cross-border transfer is decided and recorded: :class:`TransferGate`.

The home node's cell asks its gate after the policy check and before it opens
any record or writes anything (:mod:`vault.cell`); the entry node asks the same
:func:`transfer_decision` again about the reply (defence in depth, see
:mod:`vault.service._forward`). A caller's entry region is set only from a
verified node certificate (:attr:`vault.policy.Caller.entry_region`); a caller
that entered by the home region itself crosses no border and nothing is
recorded.

Every decision about a crossing, allowed or refused, is recorded in the home
region through :class:`TransferLog` before the request goes on: if it cannot
be recorded, the request fails and nothing crosses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from vault import audit
from vault.errors import AccessDenied
from vault.policy import Caller
from vault.residency._transfers import TransferDecision, TransferRules
from vault.store import TransferEntry


class TransferLog(Protocol):
    """Where transfer decisions are kept (the cell database today; a
    tamper-evident audit log can chain the same entries)."""

    def record(self, entry: TransferEntry) -> None: ...

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


class TransferGate:
    """The transfer decisions of one home region, each recorded in its log."""

    def __init__(
        self, rules: TransferRules, home: str, log: TransferLog, clock: Callable[[], int]
    ) -> None:
        self.rules = rules
        self.home = home
        self.log = log
        self._clock = clock

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

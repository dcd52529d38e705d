"""What one request did, noted as it goes, for its audit entries.

The servicer opens a :class:`RequestNote` per call (:func:`noting`); domain
code adds to the current one through the module functions (:func:`about`,
:func:`touched`, :func:`transfer`), which do nothing outside a request. After
the call — done or refused — :meth:`RequestNote.seal` computes the pseudonyms
(it may need the key service: see :mod:`vault.inline`) and
:meth:`RequestNote.entries` gives the entries per log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from vault.audit._entry import pseudonym
from vault.policy import Caller

#: The log of requests refused before any region is known (unauthenticated,
#: malformed ids) and of token events.
CONTROL_LOG = "control"

_CURRENT: ContextVar[RequestNote | None] = ContextVar("pdvault_audit_note", default=None)

#: Gives the subject's pseudonym key (:func:`vault.audit.pseudonym_key` of its
#: data key, or the key a rekey carried over), or None when it is gone (erased)
#: or unreadable; its argument says whether it may ask the key service (else:
#: cached only).
DataKeySource = Callable[[bool], bytes | None]

#: Refusals by the key service or a database: asking the key service again
#: only for a pseudonym would double the load on what is failing.
_KEY_FAILURES = frozenset(
    {"DECRYPTION_FAILED", "KEY_SERVICE_UNAVAILABLE", "STORE_UNAVAILABLE", "INTERNAL"}
)


@dataclass
class _Target:
    region: str
    subject_id: str
    record_id: str | None
    data_key: DataKeySource | None
    subject: str | None = None
    record: str | None = None


@dataclass
class RequestNote:
    """The facts of one request that its audit entries record (no data)."""

    operation: str
    request_id: str
    caller: Caller | None = None
    service: str | None = None
    decision: str = "ok"
    region: str | None = None
    targets: list[_Target] = field(default_factory=list)
    categories: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    #: Ids and names only (the token id issued or revoked…), never data.
    detail: dict[str, Any] = field(default_factory=dict)
    #: Pseudonym keys of the subjects whose data key the call itself used, by
    #: subject id: its pseudonyms need no second unwrap.
    keys_used: dict[str, bytes] = field(default_factory=dict, repr=False)
    sealed: bool = False
    #: Counted by the auditor among the calls in progress (its batch window).
    active: bool = False
    #: Records other than audit entries that must be durable before the call
    #: answers, by the sink that writes them in batches (see :func:`defer`).
    deferred: dict[Any, list[Any]] = field(default_factory=dict, repr=False)

    def restart(self) -> None:
        """Forgets what a try noted (the call is run again on the thread pool)."""
        self.targets.clear()
        self.categories.clear()
        self.fields.clear()
        self.transfers.clear()
        self.detail.clear()
        self.keys_used.clear()
        self.deferred.clear()
        self.region = None
        self.decision = "ok"

    def seal(self) -> None:
        """Computes the pseudonyms (idempotent; may raise WouldBlock)."""
        if self.sealed:
            return
        may_unwrap = self.decision not in _KEY_FAILURES
        for t in self.targets:
            key = self.keys_used.get(t.subject_id)
            if key is None and t.data_key is not None:
                key = t.data_key(may_unwrap)
            if key is not None:
                k = key
                t.subject = pseudonym(k, t.subject_id)
                t.record = pseudonym(k, t.record_id) if t.record_id else None
        self.sealed = True

    def entries(self, node: str, time_us: int) -> dict[str, list[dict[str, Any]]]:
        """The entries of this request, by log (sealed first)."""
        base: dict[str, Any] = {
            "time_us": time_us,
            "node": node,
            "operation": self.operation,
            "decision": self.decision,
            "request_id": self.request_id,
        }
        c = self.caller
        if c is not None:
            base |= {
                "service": c.service,
                "client": c.client_identity,
                "token_id": c.claims.jti,
                "purpose": c.purpose.name,
                "legal_basis": c.purpose.legal_basis,
                "transfer_basis": c.claims.transfer_basis,
                "entry_region": c.entry_region,
            }
        elif self.service is not None:
            base["service"] = self.service
        if self.categories:
            base["categories"] = sorted(self.categories)
        if self.fields:
            base["fields"] = sorted(self.fields)
        detail = dict(self.detail)
        if self.transfers:
            detail["transfers"] = self.transfers
        if detail:
            base["detail"] = detail
        out: dict[str, list[dict[str, Any]]] = {}
        if not self.targets:
            log = self.region or CONTROL_LOG
            out[log] = [{**base, "region": self.region}]
        for t in self.targets:
            out.setdefault(t.region, []).append(
                {**base, "region": t.region, "subject": t.subject, "record": t.record}
            )
        return out


@contextmanager
def noting(note: RequestNote) -> Iterator[RequestNote]:
    token = _CURRENT.set(note)
    try:
        yield note
    finally:
        _CURRENT.reset(token)


def current() -> RequestNote | None:
    return _CURRENT.get()


def served_by(region: str) -> None:
    """The request is served by ``region``'s cell (its log records it)."""
    n = _CURRENT.get()
    if n is not None:
        n.region = region


def about(
    region: str,
    subject_id: str,
    record_id: str | None = None,
    data_key: DataKeySource | None = None,
) -> None:
    """The request concerns this subject (and record); ``data_key`` gives the
    subject's pseudonym key. A second call for the same subject
    and record replaces the first."""
    n = _CURRENT.get()
    if n is None:
        return
    n.region = region
    for i, t in enumerate(n.targets):
        if t.subject_id == subject_id and t.record_id in (None, record_id):
            n.targets[i] = _Target(region, subject_id, record_id or t.record_id, data_key)
            return
    n.targets.append(_Target(region, subject_id, record_id, data_key))


def key_used(subject_id: str, pseudonym_key: bytes) -> None:
    """The call used this subject's data key; its pseudonym key (for the
    entries' pseudonyms)."""
    n = _CURRENT.get()
    if n is not None:
        n.keys_used[subject_id] = pseudonym_key


def touched(category: str | None, fields: Any = ()) -> None:
    """The categories and field names (never values) read or written."""
    n = _CURRENT.get()
    if n is None:
        return
    if category:
        n.categories.add(category)
    n.fields.update(str(f) for f in fields)


class DeferredSink(Protocol):
    """Writes records of calls in batches on the event loop: each call's are
    durable when the future settles (the call waits for it with its audit
    entries). :class:`vault.audit.Auditor` flushes every sink when it commits
    its own entries at once, so that a batch of calls waits once."""

    def submit_on_loop(
        self, items: list[Any], loop: asyncio.AbstractEventLoop, *, now: bool
    ) -> asyncio.Future[None]: ...

    def flush_soon(self, loop: asyncio.AbstractEventLoop) -> None: ...


def defer(sink: DeferredSink, item: Any) -> bool:
    """Hands ``item`` to ``sink``, to be durable before the current call
    answers; False outside an audited call (the caller then writes it itself)."""
    n = _CURRENT.get()
    if n is None:
        return False
    n.deferred.setdefault(sink, []).append(item)
    return True


def transfer(record: dict[str, Any]) -> None:
    """A cross-border transfer decision of this request (chained with it)."""
    n = _CURRENT.get()
    if n is not None:
        n.transfers.append(record)

"""The erasure workflow.

``erase`` runs, in this order, each step safe to repeat:

1. the subject is marked erased (or erasure-pending) in its cell: from this
   moment every node refuses to decrypt, whatever its key cache holds;
2. the erasure is written to the ledger in the control plane;
3. when the grace period is over (at once by default): the subject's Transit
   key is destroyed (``deletion_allowed`` then delete), OpenBao is asked to
   unwrap the subject's data key and its refusal kept as evidence, the
   records and consents are deleted, and a receipt signed by the vault is
   stored in the ledger and returned.

A crash between steps is repaired by calling ``erase`` again or by the
background worker (:meth:`Eraser.process_due`), which finishes due erasures,
so erasures survive restarts. ``reapply`` destroys again every key the ledger
lists — for after an OpenBao snapshot restore brought some back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vault.cell import GONE_STATES, STATE_ACTIVE, STATE_ERASURE_PENDING, SubjectView
from vault.control import ControlStore, ErasureEntry
from vault.crypto import dek_associated_data
from vault.erasure._receipt import sign_receipt, verify_receipt
from vault.errors import Erased, FieldViolation, InvalidArgument, NotFound, VaultError
from vault.keys import KeyRef, TransitKeyShredder
from vault.node import Node
from vault.policy import Caller
from vault.tokens import KeySet, SigningKey

MAX_GRACE_SECONDS = 30 * 24 * 3600
#: A claim on an erasure older than this is taken to belong to a dead node.
CLAIM_STALE_US = 60 * 1_000_000
CLAIM_WAIT_SECONDS = 15.0


def _now_us() -> int:
    return time.time_ns() // 1000


def _rfc3339(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class ErasureView:
    subject_id: str
    region: str
    completed: bool
    key_name: str
    key_versions_destroyed: tuple[int, ...]
    records_affected: int
    requested_at_us: int
    erased_at_us: int
    destroy_after_us: int
    evidence: str
    signed_receipt: str


@dataclass
class ReapplySummary:
    checked: int = 0
    destroyed_again: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Eraser:
    def __init__(
        self,
        node: Node,
        control: ControlStore,
        shredders: dict[str, TransitKeyShredder],
        signing: SigningKey,
        keys: KeySet,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        self._keys = keys
        self._node = node
        self._cells = node.cells
        self._control = control
        self._shredders = shredders
        self._signing = signing
        self._clock = clock

    # -- the RPCs ------------------------------------------------------------

    def erase(
        self, caller: Caller, subject_id: str, reason: str, grace_seconds: int
    ) -> ErasureView:
        cell, sid = self._node.subject_cell(subject_id)
        cell.authz.scope(caller, "erase", cell.region.id, sid)
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise InvalidArgument(
                FieldViolation("grace_period", f"must be between 0 and {MAX_GRACE_SECONDS} s")
            )
        row = cell.store.get_subject(sid)
        if row is None:
            raise NotFound("subject not found")
        entry = self._control.erasure(sid)
        if entry is None:
            now = self._clock()
            # 1. Nobody decrypts from here on.
            cell.store.force_state(sid, STATE_ERASURE_PENDING, now)
            cell.forget(sid)
            # 2. The ledger.
            entry = ErasureEntry(
                subject_id=sid,
                region=cell.region.id,
                key_mount=row.key_mount,
                key_name=row.key_name,
                reason=reason,
                requested_at=now,
                destroy_after=now + grace_seconds * 1_000_000,
            )
            if not self._control.add_erasure(entry):
                entry = self._control.erasure(sid) or entry
        if entry.destroyed_at is None and entry.destroy_after <= self._clock():
            entry = self._finish(entry)
        return self._view(entry)

    def cancel(self, caller: Caller, subject_id: str) -> SubjectView:
        cell, sid = self._node.subject_cell(subject_id)
        cell.authz.scope(caller, "erase", cell.region.id, sid)
        if not self._control.cancel_erasure(sid):
            entry = self._control.erasure(sid)
            if entry is not None:
                raise Erased("the erasure is complete and cannot be cancelled")
            raise NotFound("no pending erasure for this subject")
        cell.store.force_state(sid, STATE_ACTIVE, self._clock())
        row = cell.store.get_subject(sid)
        assert row is not None
        return SubjectView(row.id, row.region, row.state, row.minor, row.created_at)

    # -- background work -------------------------------------------------------

    def process_due(self) -> int:
        """Finishes every erasure whose grace period is over; returns how many."""
        done = 0
        for region in self._cells:
            for entry in self._control.due_erasures(self._clock(), region):
                if self._finish(entry, wait=False).destroyed_at is not None:
                    done += 1
        return done

    def _finish(self, entry: ErasureEntry, *, wait: bool = True) -> ErasureEntry:
        """Destroys the key of a due erasure unless another caller or node already
        is; with ``wait``, waits for that one to finish. Returns the ledger entry."""
        if self._control.claim_erasure(entry.subject_id, self._clock(), CLAIM_STALE_US):
            self._destroy(entry)
        deadline = time.monotonic() + (CLAIM_WAIT_SECONDS if wait else 0)
        while True:
            current = self._control.erasure(entry.subject_id) or entry
            if current.destroyed_at is not None or time.monotonic() >= deadline:
                return current
            time.sleep(0.05)

    def reapply(
        self, progress: Callable[[ErasureEntry, bool], None] | None = None
    ) -> ReapplySummary:
        """Destroys again every key the ledger lists as destroyed (after a restore)."""
        return reapply(self._control, self._shredder, progress)

    # -- internals -------------------------------------------------------------

    def _shredder(self, region: str) -> TransitKeyShredder:
        s = self._shredders.get(region)
        if s is None:
            raise RuntimeError("no key-destruction credential for this region")
        return s

    def _destroy(self, entry: ErasureEntry) -> None:
        cell = self._cells[entry.region]
        row = cell.store.get_subject(entry.subject_id)
        if row is None:  # pragma: no cover - the ledger only names existing subjects
            raise NotFound("subject not found")
        if row.state not in GONE_STATES:
            cell.store.force_state(row.id, STATE_ERASURE_PENDING, self._clock())
        ref = KeyRef(entry.key_mount, entry.key_name)
        shredder = self._shredder(entry.region)
        versions = shredder.destroy(ref)
        evidence = ""
        if row.wrapped_dek:
            evidence = shredder.prove_destroyed(
                ref, row.wrapped_dek, dek_associated_data(row.id, row.region)
            )
        records = cell.store.erase_subject_data(row.id, self._clock())
        cell.forget(row.id)
        erased_at = self._clock()
        signed = sign_receipt(
            {
                "subject_id": row.id,
                "region": entry.region,
                "reason": entry.reason,
                "key": f"{ref.mount}/{ref.name}",
                "key_versions_destroyed": list(versions),
                "records_affected": records,
                "requested_at": _rfc3339(entry.requested_at),
                "erased_at": _rfc3339(erased_at),
                "evidence": evidence,
            },
            self._signing,
        )
        self._control.mark_destroyed(row.id, erased_at, signed)

    def _view(self, entry: ErasureEntry) -> ErasureView:
        if entry.destroyed_at is None or entry.receipt is None:
            return ErasureView(
                subject_id=entry.subject_id,
                region=entry.region,
                completed=False,
                key_name=f"{entry.key_mount}/{entry.key_name}",
                key_versions_destroyed=(),
                records_affected=0,
                requested_at_us=entry.requested_at,
                erased_at_us=0,
                destroy_after_us=entry.destroy_after,
                evidence="",
                signed_receipt="",
            )
        # The signed receipt in the ledger is the source of truth (idempotent replies).
        doc = verify_receipt(entry.receipt, self._keys)
        return ErasureView(
            entry.subject_id,
            entry.region,
            True,
            str(doc["key"]),
            tuple(int(v) for v in doc["key_versions_destroyed"]),
            int(doc["records_affected"]),
            entry.requested_at,
            entry.destroyed_at,
            entry.destroy_after,
            str(doc["evidence"]),
            entry.receipt,
        )


def reapply(
    control: ControlStore,
    shredder_for: Callable[[str], TransitKeyShredder],
    progress: Callable[[ErasureEntry, bool], None] | None = None,
) -> ReapplySummary:
    """Destroys again every key the ledger lists as destroyed.

    After an OpenBao snapshot restore, keys destroyed since the snapshot exist
    again; this finds and destroys them. Keys already gone are left alone.
    ``shredder_for(region)`` gives the key-destruction client of a region.
    """
    summary = ReapplySummary()
    for entry in control.destroyed_erasures():
        summary.checked += 1
        again = False
        try:
            ref = KeyRef(entry.key_mount, entry.key_name)
            again = bool(shredder_for(entry.region).destroy(ref))
        except VaultError:
            summary.failed.append(entry.subject_id)
        if again:
            summary.destroyed_again.append(entry.subject_id)
        if progress is not None:
            progress(entry, again)
    return summary

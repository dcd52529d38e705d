"""The erasure workflow.

``erase`` runs, in this order, each step safe to repeat:

1. the erasure is written to the ledger in the control plane (the durable
   intent: a crash after it is finished by the worker, not left half-done);
2. the subject is marked erasure-pending in its cell: from this moment every
   node refuses to decrypt, whatever its key cache holds (repeated on every
   call until the erasure is complete);
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

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vault import metrics
from vault.cell import Cell, SubjectView
from vault.control import ControlStore, ErasureEntry
from vault.erasure._receipt import sign_receipt, verify_receipt
from vault.errors import Erased, NotFound, VaultError
from vault.failpoints import failpoint
from vault.keys import KeyRef
from vault.policy import Caller
from vault.tokens import KeySet, SigningKey

#: A claim on an erasure older than this is taken to belong to a dead node.
CLAIM_STALE_US = 60 * 1_000_000
CLAIM_WAIT_SECONDS = 15.0


def _now_us() -> int:
    return time.time_ns() // 1000


def _after_destroy() -> None:
    failpoint("erasure.after_destroy")


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
    """Runs erasures against the cells it is given, with the ledger in ``control``."""

    def __init__(
        self,
        cells: dict[str, Cell],
        control: ControlStore,
        signing: SigningKey,
        keys: KeySet,
        clock: Callable[[], int] = _now_us,
    ) -> None:
        #: The signing-key history: every receipt ever signed verifies under it.
        self._keys = keys
        self._cells = cells
        self._control = control
        self._signing = signing
        self._clock = clock

    def use_keys(self, signing: SigningKey, receipts: KeySet) -> None:
        """Signs receipts with ``signing`` and checks them against ``receipts``
        (the signing-key history) from now on: a key rotation."""
        self._signing, self._keys = signing, receipts

    # -- the RPCs ------------------------------------------------------------

    def erase(
        self, caller: Caller, cell: Cell, subject_id: str, reason: str, grace_seconds: int
    ) -> ErasureView:
        """Erases ``subject_id`` of ``cell`` (``grace_seconds`` already validated)."""
        target = cell.erasure_target(caller, subject_id)
        entry = self._control.erasure(subject_id)
        if entry is None:
            now = self._clock()
            # 1. The ledger first: from here a crash is finished by the worker
            # (or the next call), never left as a hidden subject nobody erases.
            entry = ErasureEntry(
                subject_id=subject_id,
                region=target.region,
                key_mount=target.key.mount,
                key_name=target.key.name,
                reason=reason,
                requested_at=now,
                destroy_after=now + grace_seconds * 1_000_000,
            )
            if self._control.add_erasure(entry):
                metrics.ERASURES.labels("requested").inc()
            else:
                entry = self._control.erasure(subject_id) or entry
            failpoint("erasure.after_ledger")
        if entry.destroyed_at is None:
            # 2. Nobody decrypts from here on (again, if a crash came between).
            cell.hide(subject_id)
            failpoint("erasure.after_hide")
            if entry.destroy_after <= self._clock():
                entry = self._finish(entry)
        return self._view(entry)

    def cancel(self, caller: Caller, cell: Cell, subject_id: str) -> SubjectView:
        """Cancels an erasure whose key nobody has started destroying, and gives
        the subject back the state it had (restricted stays restricted)."""
        cell.erasure_target(caller, subject_id)
        if not self._control.cancel_erasure(subject_id):
            entry = self._control.erasure(subject_id)
            if entry is None:
                raise NotFound("no pending erasure for this subject")
            if entry.destroyed_at is None:
                # Claimed: a worker is destroying the key right now. Cancelling
                # would drop the ledger entry `erasure reapply` relies on.
                raise Erased(
                    "the erasure is being carried out and cannot be cancelled",
                    reason="ERASURE_IN_PROGRESS",
                )
            raise Erased("the erasure is complete and cannot be cancelled")
        metrics.ERASURES.labels("cancelled").inc()
        return cell.unhide(subject_id)

    # -- background work -------------------------------------------------------

    def process_due(self) -> int:
        """Finishes every erasure whose grace period is over; returns how many."""
        done = 0
        for region in self._cells:
            for entry in self._control.due_erasures(self._clock(), region):
                if self._finish(entry, wait=False).destroyed_at is not None:
                    done += 1
        metrics.ERASURES_PENDING.set(self._control.pending_erasures(sorted(self._cells)))
        return done

    def _finish(self, entry: ErasureEntry, *, wait: bool = True) -> ErasureEntry:
        """Destroys the key of a due erasure unless another caller or node already
        is; with ``wait``, waits for that one to finish. Returns the ledger entry."""
        claimed_at = self._clock()
        if self._control.claim_erasure(entry.subject_id, claimed_at, CLAIM_STALE_US):
            try:
                self._destroy(entry)
            except BaseException:
                # A failed step (database, key service) must not hold the claim
                # until it goes stale: the retry or the worker carries on now.
                with contextlib.suppress(VaultError):
                    self._control.release_claim(entry.subject_id, claimed_at)
                raise
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
        return reapply(self._control, self._cells, progress)

    # -- internals -------------------------------------------------------------

    def _destroy(self, entry: ErasureEntry) -> None:
        cell = self._cells[entry.region]
        key = KeyRef(entry.key_mount, entry.key_name)

        def note(versions: tuple[int, ...]) -> None:
            if versions:  # a retry after the destroy finds none: keep the first note
                self._control.note_key_versions(entry.subject_id, versions)

        shredded = cell.shred(
            entry.subject_id, key, before_destroy=note, after_destroy=_after_destroy
        )
        # The key already gone (an earlier attempt destroyed it and died before
        # its receipt): the versions that attempt noted.
        destroyed = shredded.key_versions_destroyed or self._noted_versions(entry.subject_id)
        erased_at = self._clock()
        signed = sign_receipt(
            {
                "subject_id": entry.subject_id,
                "region": entry.region,
                "reason": entry.reason,
                "key": f"{key.mount}/{key.name}",
                "key_versions_destroyed": list(destroyed),
                "records_affected": shredded.records_affected,
                "requested_at": _rfc3339(entry.requested_at),
                "erased_at": _rfc3339(erased_at),
                "evidence": shredded.evidence,
            },
            self._signing,
        )
        self._control.mark_destroyed(entry.subject_id, erased_at, signed)
        metrics.ERASURES.labels("completed").inc()

    def _noted_versions(self, subject_id: str) -> tuple[int, ...]:
        current = self._control.erasure(subject_id)
        return current.key_versions if current is not None else ()

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
    cells: Mapping[str, Cell],
    progress: Callable[[ErasureEntry, bool], None] | None = None,
) -> ReapplySummary:
    """Destroys again every key the ledger lists as destroyed.

    After an OpenBao snapshot restore, keys destroyed since the snapshot exist
    again; this finds and destroys them. Keys already gone are left alone.
    """
    summary = ReapplySummary()
    for entry in control.destroyed_erasures():
        summary.checked += 1
        again = False
        try:
            cell = cells.get(entry.region)
            if cell is None:
                raise NotFound("the ledger names a region this configuration does not serve")
            again = cell.destroy_key_again(KeyRef(entry.key_mount, entry.key_name))
        except VaultError:
            summary.failed.append(entry.subject_id)
        if again:
            summary.destroyed_again.append(entry.subject_id)
        if progress is not None:
            progress(entry, again)
    return summary

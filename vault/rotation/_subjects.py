"""Subject key rotation as a resumable, rate-limited job safe to run on several nodes.

For each live subject whose key was last rotated (or created) before the
job's cutoff, in id order:

1. **claim** the subject (compare-and-set; another job skips it);
2. **rotate** its Transit key (a new version);
3. **re-wrap** its data key under the new version and store the new wrap
   with its key version, only if the subject is still live and still holds
   the old wrap. A derived subject key (every key made since revision 0008:
   its wrap is bound to the subject by the key-derivation context) is
   re-wrapped by Transit ``rewrap`` with that context: one call, and the data
   key never leaves OpenBao in clear. A legacy key (its wrap bound by
   associated data, which OpenBao's rewrap does not take) is unwrapped and
   wrapped again, the data key held in memory for those two calls only, as a
   node does on every cache miss;
4. **retire** the old versions: every wrapped data key of the subject (it has
   one) is now on the newest version, so ``min_decryption_version`` is raised
   and the old versions are trimmed. A backup holding the old wrap no longer
   opens;
5. release the claim and move the job's cursor (in the cell database).

A job that stops (killed, OpenBao down) is resumed by running it again: the
unfinished job's row keeps its cutoff and cursor. A subject claimed by a job
that died is taken over once its claim expires. An erasure racing a rotation
wins: the new wrap is not stored for a subject no longer live, and a key
destroyed meanwhile ends the subject's rotation (``gone``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vault import metrics
from vault.crypto import dek_associated_data
from vault.errors import KeyServiceUnavailable
from vault.keys import KeyGone, KeyRef
from vault.store._cellstore import wrap_key_version
from vault.store._rotation import Candidate, RotationStore

JOB_KIND = "rotate"


class KeyRotator(Protocol):
    """The key service as rotation uses it (:class:`vault.keys.TransitKeyRotator`).

    Raises :class:`~vault.keys.KeyGone` for a key that no longer exists and
    :class:`~vault.errors.KeyServiceUnavailable` for anything else.
    """

    def rotate(self, ref: KeyRef) -> int: ...

    def rewrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str: ...

    def retire_below(self, ref: KeyRef, version: int) -> None: ...


class RateLimiter:
    """At most ``rate`` acquisitions per second (None: unlimited); thread-safe."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("the rate must be positive")
        self._interval = 0.0 if rate is None else 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + self._interval
        if at > now:
            self._sleep(at - now)


@dataclass
class RotationSummary:
    """What one run of a job did (``held``: due, but claimed by another job)."""

    job_id: str
    region: str
    resumed: bool
    rotated: int = 0
    gone: int = 0
    held: int = 0
    failed: int = 0
    finished: bool = False
    seconds: float = 0.0


class SubjectKeyRotation:
    """Rotates the subject keys of one cell (see the module docstring)."""

    def __init__(
        self,
        store: RotationStore,
        rotator: KeyRotator,
        region: str,
        *,
        claim_seconds: float = 60.0,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._store = store
        self._rotator = rotator
        self._region = region
        self._claim_us = int(claim_seconds * 1_000_000)
        self._clock = clock
        #: This run's claims carry this id (a job on another node has its own).
        self.owner = uuid.uuid4().hex

    def run(
        self,
        older_than_seconds: float,
        *,
        limiter: RateLimiter | None = None,
        progress: Callable[[str, str], None] | None = None,
        batch: int = 100,
    ) -> RotationSummary:
        """Rotates every due subject; resumes the cell's unfinished job if any.

        ``progress(subject_id, outcome)`` is called after each subject
        (outcome: rotated, gone, held, failed).
        """
        started = time.monotonic()
        now = self._clock()
        job = self._store.open_job(JOB_KIND, now - int(older_than_seconds * 1_000_000), now)
        summary = RotationSummary(job.id, self._region, resumed=bool(job.cursor))
        cursor = job.cursor
        for _ in range(2):
            while candidates := self._store.due(cursor, job.cutoff_us, batch):
                for cand in candidates:
                    outcome = self._one(cand, job.cutoff_us, limiter)
                    self._count(summary, outcome)
                    self._store.advance(
                        job.id,
                        cand.id,
                        rotated=int(outcome == "rotated"),
                        skipped=int(outcome in ("gone", "held")),
                        failed=int(outcome == "failed"),
                    )
                    metrics.KEY_ROTATIONS.labels(self._region, outcome).inc()
                    if progress is not None:
                        progress(cand.id, outcome)
                    cursor = cand.id
            if summary.failed or not self._store.due("", job.cutoff_us, 1):
                break
            # Subjects the cursor passed while another job held them and that
            # are still due (a rekey holds a subject without rotating its
            # key): once more from the start.
            cursor = ""
        # Finished only when nothing due is left: not what another job holds
        # (it may die), nor what failed here.
        still_due = self._store.due("", job.cutoff_us, 1)
        if not still_due and not summary.failed:
            self._store.finish(job.id, self._clock())
            summary.finished = True
        summary.seconds = time.monotonic() - started
        return summary

    @staticmethod
    def _count(summary: RotationSummary, outcome: str) -> None:
        setattr(summary, outcome, getattr(summary, outcome) + 1)

    def _one(self, cand: Candidate, cutoff_us: int, limiter: RateLimiter | None) -> str:
        if limiter is not None:
            # Before the claim: a job waiting on its rate limit (or interrupted
            # there) holds no subject.
            limiter.acquire()
        now = self._clock()
        if not self._store.claim(cand.id, self.owner, cutoff_us, now, now + self._claim_us):
            # Claimed by another job (held), or rotated by one meanwhile, or erased.
            return "held" if self._store.is_due(cand.id, cutoff_us) else "gone"
        try:
            return self._rotate(cand)
        except KeyServiceUnavailable:
            return "failed"
        finally:
            self._store.release(cand.id, self.owner)

    def rotate_claimed(self, subject_id: str) -> str:
        """Rotates one subject's key now, under a claim this object's ``owner``
        already holds (a rekey's ``--rotate``); the outcome as for a job."""
        current = self._store.current(subject_id)
        if current is None:
            return "gone"
        try:
            outcome = self._rotate(current)
        except KeyServiceUnavailable:
            outcome = "failed"
        metrics.KEY_ROTATIONS.labels(self._region, outcome).inc()
        return outcome

    def _rotate(self, cand: Candidate) -> str:
        ref = KeyRef(cand.key_mount, cand.key_name, cand.key_derived)
        aad = dek_associated_data(cand.id, self._region)
        try:
            version = self._rotator.rotate(ref)
            current = self._store.current(cand.id)
            if current is None:
                return "gone"  # erased meanwhile: its key is the eraser's
            new = self._rotator.rewrap(ref, current.wrapped_dek, aad)
            wrapped_by = wrap_key_version(new)
            # An unfinished rekey's next data key is wrapped by the same key:
            # re-wrapped too, or the trim below would make it unreadable.
            old_next = current.wrapped_dek_next
            new_next = None if old_next is None else self._rotator.rewrap(ref, old_next, aad)
            if new_next is not None:
                wrapped_by = min(wrapped_by, wrap_key_version(new_next))
            if wrapped_by < version or not self._store.store_rewrap(
                cand.id,
                self.owner,
                current.wrapped_dek,
                new,
                wrapped_by,
                self._clock(),
                old_next,
                new_next,
            ):
                return "gone"
            # The subject's only wrapped data key is on the newest version now.
            self._rotator.retire_below(ref, wrapped_by)
        except KeyGone:
            # Erased meanwhile (the eraser destroyed the key), or a wrap that
            # does not open under a key that is still there.
            return "gone" if self._store.current(cand.id) is None else "failed"
        return "rotated"

"""Blind-index re-index: a new index key version, every lookup digest made
again under it from the values sealed under each subject's data key, then the
old version retired. Resumable, rate-limited, safe to run on several nodes.

1. **new version**: unless a re-index is under way (two active versions), the
   Transit key ``lookup-index`` gets a new version and a fresh random index key
   is wrapped under it and stored as index key version N+1, active beside N.
   From then on every node writes digests under both and searches both (the
   write checks the active versions in its transaction), so entries set while
   the job runs are found whatever its progress;
2. **each subject** with digests under N, in id order (the job's cursor, in
   ``key_jobs``, kind ``reindex``): its data key is unwrapped, its sealed lookup
   values opened, and their digests under N+1 inserted if missing — only while
   the subject is live, ``ON CONFLICT DO NOTHING``: the step is idempotent, so
   a resumed job, or two jobs at once, never insert a digest twice (no claim);
3. **retire N**, once every subject has as many digests under N+1 as under N:
   in one transaction, every digest under N and N's wrapped key are deleted
   and N is marked retired; then the Transit key's versions below the one that
   wraps N+1 are trimmed, so N's wrapped key in an old backup no longer opens.
   A digest made under N — a backup's, or one computed with the key held
   before — matches nothing any more.

Subjects whose lookups predate sealed values (``unsealed``) cannot be
re-indexed: they are counted, and N is not retired while any exist unless
``drop_unsealed`` is given, which deletes their digests under N with the rest
(their lookups stop finding them; the summary says how many).

Erased subjects have neither digests nor sealed values (the erasure deletes
them, and their data key is destroyed): the job never sees them, or finds them
gone if the erasure lands while it runs. A subject whose erasure is pending
is re-indexed (its lookups come back if the erasure is cancelled). A wrap
re-wrapped by a subject key rotation between the job's read and its unwrap is
read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from vault import metrics
from vault.cell._lookup import INDEX_KEY, digest_with, index_key_aad, index_key_name
from vault.crypto import dek_associated_data, new_data_key, open_lookup_value
from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys import KeyGone, KeyProvider, KeyRef
from vault.rotation._subjects import KeyRotator, RateLimiter
from vault.store import IndexStore, LiveSubject, RotationStore
from vault.store._cellstore import wrap_key_version

JOB_KIND = "reindex"
_ROTATE_ATTEMPTS = 4
log = logging.getLogger("vault.rotation")


@dataclass
class ReindexSummary:
    """What one run of a re-index did."""

    job_id: str
    region: str
    #: The version being built (0: none, nothing was ever indexed).
    version: int
    old_version: int
    resumed: bool
    reindexed: int = 0
    gone: int = 0
    unsealed: int = 0
    failed: int = 0
    #: After the pass: subjects still lacking digests under the new version.
    unsealed_subjects: int = 0
    unsealed_entries: int = 0
    #: Digests without a sealed value deleted with the old version (--drop-unsealed).
    dropped_entries: int = 0
    retired: bool = False
    finished: bool = False
    seconds: float = 0.0


class LookupReindex:
    """Re-indexes the blind index of one cell (see the module docstring).

    ``keys`` unwraps subject data keys and wraps the new index key; ``rotator``
    adds and trims versions of the Transit key ``lookup-index``. Both use the
    rotation role's credential (``rotation.hcl``: encrypt and decrypt on the
    region's mount, rotate, configure and trim keys; no delete, no export).
    """

    def __init__(
        self,
        jobs: RotationStore,
        index: IndexStore,
        keys: KeyProvider,
        rotator: KeyRotator,
        region: str,
        mount: str,
        *,
        clock: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self._jobs = jobs
        self._index = index
        self._keys = keys
        self._rotator = rotator
        self._region = region
        self._mount = mount
        self._ref = KeyRef(mount, INDEX_KEY)
        self._clock = clock

    def _versions(self) -> tuple[int, int] | None:
        """(old, new): the re-index under way, or a new version made for one;
        None when the cell has no index key yet (nothing to re-index)."""
        active = self._index.active()
        if len(active) >= 2:
            return min(active), max(active)
        old = active[0] if active else 1
        if self._index.wrapped(index_key_name(old)) is None:
            return None
        new = old + 1
        for attempt in range(_ROTATE_ATTEMPTS):
            try:
                self._rotator.rotate(self._ref)  # the new key is wrapped by a new Transit version
                break
            except KeyServiceUnavailable:
                # OpenBao refuses a rotation racing another (a second job
                # starting at the same moment): wait, and use its version.
                if attempt == _ROTATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
                active = self._index.active()
                if len(active) >= 2:
                    return min(active), max(active)
        wrapped = self._keys.wrap(self._ref, new_data_key(), index_key_aad(self._mount, new))
        # Two jobs may race here: the first insert wins, both build that version.
        self._index.add_version(
            new, index_key_name(new), self._mount, INDEX_KEY, wrapped, self._clock()
        )
        active = self._index.active()
        return min(active), max(active)

    def due(self, period_seconds: float) -> bool:
        """Whether a re-index is under way (two active versions) or the newest
        active index key version is ``period_seconds`` old; False while the
        cell has no index key."""
        versions = [v for v in self._index.versions() if v.state == "active"]
        if not versions:
            return False
        if len(versions) >= 2:
            return True
        if self._index.wrapped(index_key_name(versions[0].version)) is None:
            return False
        return self._clock() - versions[0].created_at >= period_seconds * 1_000_000

    def run_if_due(
        self, period_seconds: float, *, limiter: RateLimiter | None = None
    ) -> ReindexSummary | None:
        """A scheduled run (never dropping unsealed lookups); None if not due."""
        if not self.due(period_seconds):
            return None
        return self.run(limiter=limiter)

    def run(
        self,
        *,
        drop_unsealed: bool = False,
        limiter: RateLimiter | None = None,
        progress: Callable[[str, str], None] | None = None,
        batch: int = 100,
    ) -> ReindexSummary:
        """Starts a re-index or resumes the one under way (see the module docstring).

        ``progress(subject_id, outcome)`` is called after each subject
        (outcome: reindexed, gone, unsealed, failed).
        """
        started = time.monotonic()
        versions = self._versions()
        if versions is None:
            return ReindexSummary("", self._region, 0, 1, False, finished=True)
        old, new = versions
        job = self._jobs.open_job(JOB_KIND, new, self._clock())
        if job.cutoff_us != new:  # left by a job whose version is built and retired
            self._jobs.finish(job.id, self._clock())
            job = self._jobs.open_job(JOB_KIND, new, self._clock())
        summary = ReindexSummary(job.id, self._region, new, old, resumed=bool(job.cursor))
        wrapped = self._index.wrapped(index_key_name(new))
        if wrapped is None:  # retired meanwhile by another job: nothing left to do
            self._jobs.finish(job.id, self._clock())
            summary.finished = True
            return summary
        key = self._keys.unwrap(self._ref, wrapped, index_key_aad(self._mount, new))
        cursor = job.cursor
        while subject_ids := self._index.candidates(old, cursor, batch):
            for sid in subject_ids:
                outcome = self._one(sid, old, new, key, limiter)
                setattr(summary, outcome, getattr(summary, outcome) + 1)
                self._jobs.advance(
                    job.id,
                    sid,
                    rotated=int(outcome == "reindexed"),
                    skipped=int(outcome in ("gone", "unsealed")),
                    failed=int(outcome == "failed"),
                )
                metrics.LOOKUP_REINDEX.labels(self._region, outcome).inc()
                if progress is not None:
                    progress(sid, outcome)
                cursor = sid
        if summary.failed:
            summary.seconds = time.monotonic() - started
            return summary
        for _ in range(3):
            done = self._index.retire(
                old, new, index_key_name(old), self._clock(), drop_unsealed=drop_unsealed
            )
            if done.repair:
                # Behind the cursor, a write that began before the new version
                # existed and committed after the job passed: done again here.
                for sid in done.repair:
                    if self._one(sid, old, new, key, limiter) == "failed":
                        summary.failed += 1
                if summary.failed:
                    break
                continue
            summary.unsealed_subjects = done.unsealed_subjects
            summary.unsealed_entries = done.unsealed_entries
            if done.retired or done.already:
                summary.retired = done.retired
                summary.dropped_entries = done.unsealed_entries if done.retired else 0
                if done.retired:
                    # Old wraps of the index key (backups) open no more. (A job
                    # that dies just before leaves them to the next re-index's
                    # trim, which goes further.)
                    self._rotator.retire_below(self._ref, wrap_key_version(wrapped))
                self._jobs.finish(job.id, self._clock())
                summary.finished = True
            break  # retired, or refused: subjects without sealed values
        summary.seconds = time.monotonic() - started
        return summary

    def _data_key(self, sid: str, subject: LiveSubject, generation: int) -> bytes | str | None:
        """The subject's data key of ``generation``; None when the subject holds
        no such generation (any more); "gone" or "failed" to end the subject."""
        aad = dek_associated_data(sid, subject.region)
        ref = KeyRef(subject.key_mount, subject.key_name, subject.key_derived)
        wrapped = subject.wrap_of(generation)
        try:
            if wrapped is None:
                raise DecryptionFailed()
            return self._keys.unwrap(ref, wrapped, aad)
        except (DecryptionFailed, KeyGone):
            # A subject key rotation may have re-wrapped the data key and
            # retired the version of the wrap read a moment ago, or a rekey
            # switched generations: read again.
            fresh = self._index.live_subject(sid)
            if fresh is None:
                return "gone"  # erased meanwhile (the key destroyed)
            again = fresh.wrap_of(generation)
            if again is None:
                return None
            if again == wrapped:
                return "failed"  # a wrap that does not open
            try:
                return self._keys.unwrap(ref, again, aad)
            except (DecryptionFailed, KeyGone, KeyServiceUnavailable):
                return "failed"
        except KeyServiceUnavailable:
            return "failed"

    def _one(self, sid: str, old: int, new: int, key: bytes, limiter: RateLimiter | None) -> str:
        subject = self._index.live_subject(sid)
        if subject is None:
            return "gone"
        sealed = self._index.sealed_values(sid)
        if sealed:
            if limiter is not None:
                limiter.acquire()
            # Each value opens with the data key of its generation (two while
            # a rekey of the subject runs).
            deks: dict[int, bytes] = {}
            for generation in sorted({v.generation for v in sealed}):
                got = self._data_key(sid, subject, generation)
                if isinstance(got, str):
                    return got
                if got is not None:
                    deks[generation] = got
            entries = []
            for value in sealed:
                dek = deks.get(value.generation)
                try:
                    if dek is None:
                        raise DecryptionFailed()
                    plain = open_lookup_value(dek, sid, subject.region, value.kind, value.sealed)
                except DecryptionFailed:
                    # Not this subject's (copied, altered), or sealed under a
                    # generation the subject no longer has: never indexed.
                    log.warning("a sealed lookup value of a subject does not open; left out")
                    continue
                entries.append((value.kind, digest_with(key, value.kind, plain)))
            if self._index.add_digests(sid, new, entries) is None:
                return "gone"
        n_old, n_new = self._index.counts(sid, old, new)
        return "unsealed" if n_old > n_new else "reindexed"

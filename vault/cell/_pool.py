"""Subject keys: where a subject's key lives, minting one, and the pool of
subjects minted ahead of sign-up.

Both ways of creating a subject — inline in CreateSubject, or ahead of time by
the pool filler — go through :func:`mint_subject_key`, so a pooled subject's
key and wrapped data key are exactly what the inline path would have made:
same mount choice, same key name, same binding (id and region).

Every subject key minted here is a *derived* Transit key: its wrapped data key
is bound to the subject by the key-derivation context, which Transit
``rewrap`` also takes, so key rotation re-wraps it without the data key ever
leaving OpenBao (:mod:`vault.rotation`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vault import ids, metrics
from vault.config import CacheSettings, KeyPoolSettings, RegionConfig
from vault.crypto import dek_associated_data, new_data_key
from vault.db import now_us
from vault.keys import BoundedCache, KeyProvider, KeyRef
from vault.store import PoolEntry, PoolStatus, PoolStore

log = logging.getLogger("vault.pool")


def key_name_for(subject_id: str) -> str:
    """The Transit key name of a subject: derived from the id, nothing else."""
    return f"subject-{subject_id}"


def mount_for(region: RegionConfig, subject_id: str) -> str:
    """The region's Transit mount of a subject: a stable hash of its id over
    the mounts listed in ``regions/`` (the chosen mount is stored with the
    subject, so a later change of the list moves no existing subject)."""
    mounts = region.transit_mounts
    digest = hashlib.sha256(subject_id.encode()).digest()
    return mounts[int.from_bytes(digest[:8], "big") % len(mounts)]


@dataclass(frozen=True, slots=True)
class MintedKey:
    """A subject's new key: where it is, the data key, and that key wrapped."""

    ref: KeyRef
    dek: bytes
    wrapped: str


def mint_subject_key(keys: KeyProvider, region: RegionConfig, subject_id: str) -> MintedKey:
    """Creates the subject's Transit key (derived) and wraps a fresh data key
    under it, bound to the subject id and the region (the derivation context).
    Raises KeyServiceUnavailable."""
    ref = KeyRef(mount_for(region, subject_id), key_name_for(subject_id), derived=True)
    keys.create_key(ref)
    dek = new_data_key()
    wrapped = keys.wrap(ref, dek, dek_associated_data(subject_id, region.id))
    return MintedKey(ref, dek, wrapped)


class KeyPool:
    """Keeps one region's pool of minted subjects at its configured size.

    Safe on several nodes: each adds whole batches, so the pool may exceed its
    size by at most a batch per node filling at the same moment; claims
    (:meth:`vault.store.CellStore.insert_pooled_subject`) never share an entry.
    """

    def __init__(
        self,
        region: RegionConfig,
        keys: KeyProvider,
        store: PoolStore,
        settings: KeyPoolSettings,
    ) -> None:
        self.region = region
        self.settings = settings
        self._keys = keys
        self._store = store
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: The depth after the last round, and when that round began: the
        #: claims since, per second, tell a burst.
        self._seen: tuple[int, float] | None = None
        # The data keys this node minted and nobody claimed yet: a claim on this
        # node then needs no unwrap. They guard no data until claimed; a restart
        # loses them (the claim then unwraps, as for another node's entry).
        self._fresh: BoundedCache[bytes] = BoundedCache(
            CacheSettings(
                max_entries=max(settings.size + settings.batch, 1024), max_age_seconds=3600.0
            )
        )

    def _mint_one(self, _: int) -> tuple[PoolEntry, bytes]:
        sid = ids.new_subject_id(self.region.id)
        minted = mint_subject_key(self._keys, self.region, sid)
        entry = PoolEntry(
            sid, minted.ref.mount, minted.ref.name, minted.wrapped, now_us(), minted.ref.derived
        )
        return entry, minted.dek

    def take_data_key(self, subject_id: str) -> bytes | None:
        """The data key of an entry this node minted (once), else None."""
        dek = self._fresh.get(subject_id)
        self._fresh.evict(subject_id)
        return dek

    def mint(self, n: int) -> int:
        """Mints ``n`` entries (``concurrency`` key-service calls at a time) and
        adds them in one transaction. Raises KeyServiceUnavailable (nothing is
        added; keys already created guard no data) or StoreUnavailable."""
        if n <= 0:
            return 0
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(
                    max_workers=self.settings.concurrency,
                    thread_name_prefix=f"pool-{self.region.id}",
                )
            threads = self._threads
        started = time.monotonic()
        minted = list(threads.map(self._mint_one, range(n)))
        spent = time.monotonic() - started
        self._store.add([e for e, _ in minted], now_us(), max(1, int(spent * 1e6)))
        for entry, dek in minted:
            self._fresh.put(entry.id, dek)
        return len(minted)

    def refill(self) -> int:
        """One round of the filler: mints up to a batch towards the pool size,
        unless a burst of claims is being served from the pool (see
        :class:`vault.config.KeyPoolSettings`)."""
        depth = self._store.depth()
        now = time.monotonic()
        metrics.KEY_POOL_DEPTH.labels(self.region.id).set(depth)
        seen, self._seen = self._seen, (depth, now)
        if seen is not None and depth > self.settings.batch:
            claimed = seen[0] - depth
            if claimed / max(now - seen[1], 1e-3) > self.settings.burst_claims_per_second:
                return 0
        missing = self.settings.size - depth
        if missing <= 0:
            return 0
        added = self.mint(min(self.settings.batch, missing))
        # Claims made while minting count towards the next round's rate.
        self._seen = (depth + added, now)
        return added

    def status(self) -> PoolStatus:
        return self._store.status(now_us())

    def close(self) -> None:
        self._fresh.clear()
        with self._lock:
            if self._threads is not None:
                self._threads.shutdown(wait=True, cancel_futures=True)
                self._threads = None

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from vault import metrics
from vault.config import CacheSettings

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """A bounded, thread-safe cache: entries expire ``max_age_seconds`` after
    they were put and the least recently used is evicted beyond ``max_entries``.
    Lookups are counted as hits and misses here and in :mod:`vault.metrics`
    under ``metric_name``."""

    metric_name = "subject"

    def __init__(
        self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hit, self._miss = metrics.cache_counters(self.metric_name)
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        if not self._settings.enabled:
            self.misses += 1
            self._miss.inc()
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                self._miss.inc()
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        self._hit.inc()
        return entry[1]

    def put(self, key: str, value: V) -> None:
        if not self._settings.enabled:
            return
        expires = self._clock() + self._settings.max_age_seconds
        with self._lock:
            self._entries[key] = (expires, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._settings.max_entries:
                self._entries.popitem(last=False)

    def evict(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class DataKeyCache(BoundedCache[bytes]):
    """Unwrapped data keys, by subject id and data-key generation.

    Only a performance device: whether a subject may be decrypted at all
    (erasure) is decided from the cell database on every request, never here.
    A subject being rekeyed has two generations in use at once (records not
    yet re-encrypted, and new writes); both are cached, as separate entries.
    ``evict`` drops every generation of the subject.

    Beside the data keys it keeps each subject's audit pseudonym key (derived
    from its first data key, the same for every generation) in a cache of the
    same bounds, dropped with the subject's data keys: a read need not derive
    it again (:meth:`pseudonym_key`, :meth:`put_pseudonym_key`).
    """

    metric_name = "data_key"

    def __init__(
        self, settings: CacheSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(settings, clock)
        #: Subject id -> generations other than 1 put for it (a few subjects
        #: only: those rekeyed while this node ran); kept in step with evictions
        #: by ``evict`` and ``clear`` (an entry left after an LRU eviction only
        #: costs a failed pop).
        self._later: dict[str, set[int]] = {}
        self._pseudonyms = PseudonymKeyCache(settings, clock)

    def pseudonym_key(self, subject_id: str) -> bytes | None:
        return self._pseudonyms.get(subject_id)

    def put_pseudonym_key(self, subject_id: str, key: bytes) -> None:
        self._pseudonyms.put(subject_id, key)

    @staticmethod
    def _key(subject_id: str, generation: int) -> str:
        return subject_id if generation == 1 else f"{subject_id}\x00{generation}"

    def get(self, key: str, generation: int = 1) -> bytes | None:
        return super().get(self._key(key, generation))

    def put(self, key: str, value: bytes, generation: int = 1) -> None:
        if generation != 1:
            with self._lock:
                self._later.setdefault(key, set()).add(generation)
        super().put(self._key(key, generation), value)

    def evict(self, key: str) -> None:
        with self._lock:
            later = self._later.pop(key, set())
            for g in (1, *later):
                self._entries.pop(self._key(key, g), None)
        self._pseudonyms.evict(key)

    def clear(self) -> None:
        with self._lock:
            self._later.clear()
            self._entries.clear()
        self._pseudonyms.clear()


class PseudonymKeyCache(BoundedCache[bytes]):
    """Subjects' audit pseudonym keys (see :class:`DataKeyCache`)."""

    metric_name = "pseudonym_key"

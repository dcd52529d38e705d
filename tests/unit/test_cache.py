from vault.config import CacheSettings
from vault.keys import DataKeyCache


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_entries_expire_after_max_age() -> None:
    clock = Clock()
    cache = DataKeyCache(CacheSettings(max_entries=10, max_age_seconds=30), clock)
    cache.put("s", b"k" * 32)
    clock.t += 29.9
    assert cache.get("s") == b"k" * 32
    clock.t += 0.2
    assert cache.get("s") is None
    assert len(cache) == 0


def test_least_recently_used_is_evicted_beyond_max_entries() -> None:
    cache = DataKeyCache(CacheSettings(max_entries=2, max_age_seconds=60), Clock())
    cache.put("a", b"a")
    cache.put("b", b"b")
    assert cache.get("a") == b"a"  # a is now more recent than b
    cache.put("c", b"c")
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") == b"a"
    assert cache.get("c") == b"c"


def test_disabled_cache_holds_nothing() -> None:
    cache = DataKeyCache(CacheSettings(max_entries=0), Clock())
    cache.put("a", b"a")
    assert cache.get("a") is None
    assert len(cache) == 0


def test_evict_and_counters() -> None:
    cache = DataKeyCache(CacheSettings(), Clock())
    cache.put("a", b"a")
    assert cache.get("a") == b"a"
    cache.evict("a")
    assert cache.get("a") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_an_entry_is_gone_at_exactly_max_age() -> None:
    clock = Clock()
    cache = DataKeyCache(CacheSettings(max_entries=10, max_age_seconds=30), clock)
    cache.put("s", b"k")
    clock.t += 30
    assert cache.get("s") is None
    assert len(cache) == 0


def test_counters_count_every_hit_and_miss() -> None:
    clock = Clock()
    cache = DataKeyCache(CacheSettings(max_entries=10, max_age_seconds=30), clock)
    cache.put("a", b"a")
    for _ in range(3):
        assert cache.get("a") == b"a"
    for _ in range(2):
        assert cache.get("absent") is None
    clock.t += 31
    assert cache.get("a") is None  # expired: a miss too
    assert (cache.hits, cache.misses) == (3, 3)


def test_a_disabled_cache_counts_every_lookup_as_a_miss() -> None:
    cache = DataKeyCache(CacheSettings(max_age_seconds=0), Clock())
    for _ in range(3):
        cache.put("a", b"a")
        assert cache.get("a") is None
    assert (cache.hits, cache.misses) == (0, 3)


def test_evicting_or_clearing_what_is_not_there_is_harmless() -> None:
    cache = DataKeyCache(CacheSettings(), Clock())
    cache.evict("never-put")
    cache.put("a", b"a")
    cache.clear()
    assert len(cache) == 0
    cache.clear()
    assert cache.get("a") is None


def test_pseudonym_keys_go_with_the_subjects_data_keys() -> None:
    cache = DataKeyCache(CacheSettings(max_entries=2, max_age_seconds=60), Clock())
    cache.put("s1", b"k" * 32)
    cache.put_pseudonym_key("s1", b"p" * 32)
    cache.put_pseudonym_key("s2", b"q" * 32)
    assert cache.pseudonym_key("s1") == b"p" * 32
    assert len(cache) == 1  # kept apart: they take no data key's place
    cache.evict("s1")
    assert cache.pseudonym_key("s1") is None and cache.get("s1") is None
    assert cache.pseudonym_key("s2") == b"q" * 32
    cache.put_pseudonym_key("s3", b"r" * 32)
    cache.put_pseudonym_key("s4", b"s" * 32)
    assert cache.pseudonym_key("s2") is None  # bounded like the data keys
    cache.clear()
    assert cache.pseudonym_key("s4") is None


def test_pseudonym_keys_expire_like_data_keys() -> None:
    clock = Clock()
    cache = DataKeyCache(CacheSettings(max_entries=10, max_age_seconds=30), clock)
    cache.put_pseudonym_key("s1", b"p" * 32)
    clock.t += 31
    assert cache.pseudonym_key("s1") is None

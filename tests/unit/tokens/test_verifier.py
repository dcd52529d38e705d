from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.factories import NOW, make_claims
from vault.errors import Unauthenticated
from vault.tokens import KeySet, SigningKey, TokenVerifier, issue


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Revocations:
    def __init__(self) -> None:
        self.jtis: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, jti: str) -> bool:
        self.asked.append(jti)
        return jti in self.jtis


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def make_verifier(
    key: SigningKey, clock: FakeClock | None = None, **kwargs: Any
) -> tuple[TokenVerifier, FakeClock, Revocations]:
    clock = clock or FakeClock()
    revoked = Revocations()
    verifier = TokenVerifier(KeySet([key.public()]), revoked, clock, **kwargs)
    return verifier, clock, revoked


def reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    return caught.value.reason


def test_second_verification_is_a_cache_hit(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key)
    token = issue(make_claims(), key)
    first = verifier.verify(token)
    assert (verifier.hits, verifier.misses) == (0, 1)
    second = verifier.verify(token)
    assert second == first == make_claims()
    assert (verifier.hits, verifier.misses) == (1, 1)
    verifier.verify(token)
    assert (verifier.hits, verifier.misses) == (2, 1)
    assert len(verifier) == 1


def test_cache_is_keyed_by_a_hash_not_the_token(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key)
    token = issue(make_claims(), key)
    verifier.verify(token)
    stored = list(verifier._entries)
    assert stored and all(isinstance(k, bytes) and len(k) == 32 for k in stored)
    assert token.encode() not in stored


def test_revocation_applies_to_a_cached_token(key: SigningKey) -> None:
    verifier, _, revoked = make_verifier(key)
    token = issue(make_claims(), key)
    verifier.verify(token)
    verifier.verify(token)
    assert verifier.hits == 1
    revoked.jtis.add("j" * 22)
    assert reason(verifier, token) == "REVOKED"
    assert reason(verifier, token) == "REVOKED"
    assert len(verifier) == 0
    assert revoked.asked == ["j" * 22] * 4


@pytest.mark.parametrize("revoked_ancestor", ["p" * 22, "g" * 22])
def test_a_token_is_refused_when_an_ancestor_is_revoked(
    key: SigningKey, revoked_ancestor: str
) -> None:
    verifier, _, revoked = make_verifier(key)
    token = issue(make_claims(parent_jti="p" * 22, ancestors=("g" * 22,)), key)
    verifier.verify(token)
    verifier.verify(token)
    assert revoked.asked == ["j" * 22, "p" * 22, "g" * 22] * 2
    revoked.jtis.add(revoked_ancestor)
    assert reason(verifier, token) == "REVOKED"
    assert len(verifier) == 0


def test_a_token_without_the_ancestry_claim_is_refused_with_its_parent(key: SigningKey) -> None:
    verifier, _, revoked = make_verifier(key)
    token = issue(make_claims(parent_jti="p" * 22), key)
    verifier.verify(token)
    revoked.jtis.add("p" * 22)
    assert reason(verifier, token) == "REVOKED"


def test_a_revoked_token_is_refused_on_first_sight_and_not_cached(key: SigningKey) -> None:
    verifier, _, revoked = make_verifier(key)
    revoked.jtis.add("r" * 22)
    token = issue(make_claims(jti="r" * 22), key)
    assert reason(verifier, token) == "REVOKED"
    assert len(verifier) == 0
    revoked.jtis.clear()  # e.g. a revocation list that was wrong and got fixed
    assert verifier.verify(token).jti == "r" * 22


def test_expiry_applies_to_a_cached_token(key: SigningKey) -> None:
    verifier, clock, _ = make_verifier(key)
    token = issue(make_claims(), key)
    verifier.verify(token)
    clock.now = NOW + 299
    verifier.verify(token)
    assert verifier.hits == 1
    clock.now = NOW + 300
    assert reason(verifier, token) == "EXPIRED"
    assert verifier.hits == 2  # served from the cache, and still refused
    assert len(verifier) == 0


def test_failures_are_not_cached(key: SigningKey) -> None:
    verifier, clock, _ = make_verifier(key)
    early = issue(make_claims(nbf=NOW + 100, exp=NOW + 400), key)
    assert reason(verifier, early) == "NOT_YET_VALID"
    assert reason(verifier, "garbage") == "MALFORMED_TOKEN"
    assert reason(verifier, "garbage") == "MALFORMED_TOKEN"
    assert (verifier.hits, verifier.misses) == (0, 3)
    assert len(verifier) == 0
    clock.now = NOW + 100
    assert verifier.verify(early).nbf == NOW + 100


def test_forged_token_is_refused_even_after_the_real_one_was_cached(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key)
    token = issue(make_claims(), key)
    verifier.verify(token)
    head, purpose, body, footer = token.split(".")
    forged = ".".join(
        [head, purpose, body[:-4] + ("AAAA" if body[-4:] != "AAAA" else "BBBB"), footer]
    )
    assert reason(verifier, forged) == "BAD_SIGNATURE"


def test_cache_is_bounded_lru(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key, max_entries=2)
    tokens = [issue(make_claims(jti=f"{i}" * 22), key) for i in range(3)]
    verifier.verify(tokens[0])
    verifier.verify(tokens[1])
    verifier.verify(tokens[0])  # 0 is now the most recent
    verifier.verify(tokens[2])  # evicts 1
    assert len(verifier) == 2
    before = verifier.hits
    verifier.verify(tokens[0])
    assert verifier.hits == before + 1
    verifier.verify(tokens[1])
    assert verifier.hits == before + 1  # was evicted: a miss


def test_zero_entries_disables_the_cache(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key, max_entries=0)
    token = issue(make_claims(), key)
    verifier.verify(token)
    verifier.verify(token)
    assert (verifier.hits, verifier.misses) == (0, 2)


def test_replacing_keys_drops_the_cache(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key)
    token = issue(make_claims(), key)
    verifier.verify(token)
    other = SigningKey.generate()
    verifier.replace_keys(KeySet([other.public()]))
    assert len(verifier) == 0
    assert reason(verifier, token) == "UNKNOWN_KEY"
    assert verifier.verify(issue(make_claims(), other)).jti == "j" * 22


def test_oversized_input_is_refused_before_hashing(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key)
    assert reason(verifier, "v4.public." + "A" * 10_000) == "MALFORMED_TOKEN"
    assert reason(verifier, "v4.public.\ud800.e30") == "MALFORMED_TOKEN"


def test_revocation_check_failure_fails_closed(key: SigningKey) -> None:
    def broken(_jti: str) -> bool:
        raise RuntimeError("revocation list unavailable")

    verifier = TokenVerifier(KeySet([key.public()]), broken, FakeClock())
    with pytest.raises(RuntimeError):
        verifier.verify(issue(make_claims(), key))
    assert len(verifier) == 0


def test_concurrent_verification(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key, max_entries=4)
    jtis = [f"{i}" * 22 for i in range(8)]
    tokens = [issue(make_claims(jti=jti), key) for jti in jtis]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(200):
                i = (n + offset) % len(tokens)
                assert verifier.verify(tokens[i]).jti == jtis[i]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert verifier.hits + verifier.misses == 8 * 200
    assert len(verifier) <= 4


def test_refusals_carry_their_fixed_messages(key: SigningKey) -> None:
    verifier, _, revoked = make_verifier(key)
    revoked.jtis.add("j" * 22)
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(issue(make_claims(), key))
    assert (caught.value.reason, caught.value.message) == ("REVOKED", "the token has been revoked")
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify("v4.public." + "A" * 10_000)
    assert (caught.value.reason, caught.value.message) == (
        "MALFORMED_TOKEN",
        "the token is not a well-formed pdvault token",
    )


@pytest.mark.parametrize("token", [None, b"v4.public.abc.e30", 42, ["v4.public."]])
def test_a_token_that_is_not_a_string_is_malformed(key: SigningKey, token: object) -> None:
    verifier, _, revoked = make_verifier(key)
    assert reason(verifier, token) == "MALFORMED_TOKEN"  # type: ignore[arg-type]
    assert revoked.asked == []
    assert (verifier.hits, verifier.misses) == (0, 0)


def test_negative_max_entries_is_refused(key: SigningKey) -> None:
    with pytest.raises(ValueError, match=r"^max_entries must not be negative$"):
        make_verifier(key, max_entries=-1)


def test_a_one_entry_cache_caches(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key, max_entries=1)
    a, b = issue(make_claims(jti="a" * 22), key), issue(make_claims(jti="b" * 22), key)
    verifier.verify(a)
    verifier.verify(a)
    assert (verifier.hits, verifier.misses) == (1, 1)
    verifier.verify(b)  # evicts a
    verifier.verify(a)
    assert (verifier.hits, verifier.misses) == (1, 3)
    assert len(verifier) == 1


def test_a_verification_that_raced_a_key_change_is_not_cached(key: SigningKey) -> None:
    keys = KeySet([key.public()])
    verifier, _, _ = make_verifier(key)
    verifier.replace_keys(keys)  # not the first change: generations must keep counting
    racing = True

    def revoked(_jti: str) -> bool:
        # Runs after the signature check, outside the lock: the keys change meanwhile.
        nonlocal racing
        if racing:
            racing = False
            verifier.replace_keys(keys)
        return False

    verifier._revoked = revoked
    token = issue(make_claims(), key)
    assert verifier.verify(token).jti == "j" * 22
    assert len(verifier) == 0
    verifier.verify(token)  # no race this time: cached now
    verifier.verify(token)
    assert (verifier.hits, verifier.misses) == (1, 2)
    assert len(verifier) == 1


def test_the_configured_audience_is_checked(key: SigningKey) -> None:
    verifier, _, _ = make_verifier(key, audience="billing")
    assert reason(verifier, issue(make_claims(), key)) == "WRONG_AUDIENCE"
    assert verifier.verify(issue(make_claims(aud="billing"), key)).aud == "billing"


def test_the_configured_nbf_leeway_applies_to_fresh_and_cached_tokens(key: SigningKey) -> None:
    early = issue(make_claims(nbf=NOW + 10, exp=NOW + 400), key)
    strict, _, _ = make_verifier(key, nbf_leeway=0)
    assert reason(strict, early) == "NOT_YET_VALID"
    lenient, clock, _ = make_verifier(key, nbf_leeway=60)
    later = issue(make_claims(jti="l" * 22, nbf=NOW + 45, exp=NOW + 400), key)
    assert lenient.verify(later).nbf == NOW + 45  # beyond the default 30 s
    assert lenient.verify(later).nbf == NOW + 45  # and again from the cache
    assert lenient.hits == 1
    clock.now = NOW - 20  # the cached token is now 65 s early: beyond the leeway
    assert reason(lenient, later) == "NOT_YET_VALID"
    assert len(lenient) == 0

"""Cost of checking a purpose token: cached vs uncached verification.

    .venv/bin/python loadtests/token_bench.py

Uncached = PASETO v4.public signature check (Ed25519) + claims parsing;
cached = SHA-256 of the token + dictionary lookup + expiry + revocation check,
which is what every request after the first pays.
"""

from __future__ import annotations

import time

from vault.tokens import Claims, KeySet, SigningKey, TokenVerifier, issue


def per_call_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(min(n, 1000)):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    key = SigningKey.generate()
    keys = KeySet([key.public()])
    claims = Claims.new(
        sub="bench",
        purpose="essential.service",
        categories={"user.name": None, "user.contact.email": frozenset({"address"})},
        operations=frozenset({"read", "write"}),
        regions=frozenset({"de", "us"}),
        subjects=None,
        ttl=3600,
        now=time.time(),
    )
    token = issue(claims, key)
    revoked: set[str] = set()
    cached = TokenVerifier(keys, revoked.__contains__)
    uncached = TokenVerifier(keys, revoked.__contains__, max_entries=0)
    c = per_call_us(lambda: cached.verify(token), 200_000)
    u = per_call_us(lambda: uncached.verify(token), 5_000)
    print(f"token length {len(token)} chars")
    print(f"uncached verification: {u:8.1f} µs/call")
    print(f"cached verification:   {c:8.1f} µs/call  ({u / c:.0f}x cheaper)")


if __name__ == "__main__":
    main()

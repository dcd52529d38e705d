"""Cached token verification: one signature check per token, revocation on every call."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from vault import metrics
from vault.errors import Unauthenticated
from vault.tokens._claims import AUDIENCE, Claims
from vault.tokens._codec import DEFAULT_NBF_LEEWAY, MAX_TOKEN_LENGTH, decode
from vault.tokens._keys import KeySet


class TokenVerifier:
    """Verifies bearer tokens, caching the claims of each good one until it expires.

    The cache is keyed by the SHA-256 of the token string (the token itself is
    never kept), bounded to ``max_entries`` (least recently used evicted) and
    safe to share between threads; the signature check runs outside the lock.

    Every call — cached or not — checks the validity period against ``clock``
    and asks ``revoked(jti)`` for the token and each token it descends from
    (:attr:`Claims.lineage`), so a revocation takes effect on the next request
    even for a cached token, and revoking a token revokes every token
    exchanged from it, however and wherever those were made. ``revoked``
    should be a cheap in-memory lookup; if it raises, the call fails
    (closed). Failures are never cached.

    ``hits`` counts calls served from the cache, ``misses`` the others
    (including those that then fail).
    """

    def __init__(
        self,
        keys: KeySet,
        revoked: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        max_entries: int = 100_000,
        *,
        audience: str = AUDIENCE,
        nbf_leeway: int = DEFAULT_NBF_LEEWAY,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self._keys = keys
        self._revoked = revoked
        self._clock = clock
        self._max_entries = max_entries
        self._audience = audience
        self._nbf_leeway = nbf_leeway
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, Claims] = OrderedDict()
        # Bumped whenever the keys change, so a verification that raced a
        # key change does not cache a result obtained with the old keys.
        self._generation = 0
        self._hits = 0
        self._misses = 0
        self._hit, self._miss = metrics.cache_counters("token")

    def verify(self, token: str) -> Claims:
        """The claims of ``token`` if it is valid now; ``Unauthenticated`` otherwise.

        Reasons are those of :func:`vault.tokens.decode`, plus ``REVOKED``
        (the token or one of its ancestors is revoked).
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            # Refused before hashing: no work for oversized input.
            raise Unauthenticated(
                "the token is not a well-formed pdvault token", reason="MALFORMED_TOKEN"
            )
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = self._clock()
        with self._lock:
            cached = self._entries.get(digest)
            if cached is not None:
                self._entries.move_to_end(digest)
                self._hits += 1
            else:
                self._misses += 1
            keys, generation = self._keys, self._generation
        (self._hit if cached is not None else self._miss).inc()

        if cached is None:
            claims = decode(
                token, keys, now=now, audience=self._audience, nbf_leeway=self._nbf_leeway
            )
        else:
            claims = cached
            try:
                claims.check_validity_period(now, nbf_leeway=self._nbf_leeway)
            except Unauthenticated:
                self._evict(digest)
                raise

        for jti in claims.lineage:  # the token, its parent, … its issued ancestor
            if self._revoked(jti):
                self._evict(digest)
                raise Unauthenticated("the token has been revoked", reason="REVOKED")

        if cached is None:
            self._store(digest, claims, generation)
        return claims

    def replace_keys(self, keys: KeySet) -> None:
        """Switches to a new key set (rotation) and drops every cached token.

        Dropping the cache makes removing a key effective at once: tokens
        signed by it are verified again, and fail.
        """
        with self._lock:
            self._keys = keys
            self._generation += 1
            self._entries.clear()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    @property
    def hits(self) -> int:
        with self._lock:
            return self._hits

    @property
    def misses(self) -> int:
        with self._lock:
            return self._misses

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _store(self, digest: bytes, claims: Claims, generation: int) -> None:
        with self._lock:
            if generation != self._generation or self._max_entries == 0:
                return
            self._entries[digest] = claims
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def _evict(self, digest: bytes) -> None:
        with self._lock:
            self._entries.pop(digest, None)

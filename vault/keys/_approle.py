"""Logging in to OpenBao with AppRole, and keeping the token fresh.

A node never holds a long-lived token: it holds an AppRole ``role_id`` and
``secret_id`` and exchanges them for a token with a short TTL. :class:`AppRoleLogin`
does that lazily, before a call to the key service, whenever the token has
reached two thirds of its TTL: first by renewing it (``auth/token/renew-self``),
and, when the renewal fails or no longer extends the token by much (its
``token_max_ttl`` is near), by logging in again. A failed login is the caller's
failure (the key service is unavailable); the next call tries again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hvac
import hvac.exceptions
import requests

#: Refresh a token when this share of its TTL has passed.
REFRESH_AT = 2 / 3
#: A renewal that leaves less than this share of the login TTL is not worth
#: keeping (the token is near its max TTL): log in again instead.
MIN_RENEWED = 1 / 3


@dataclass(frozen=True)
class AppRole:
    """An AppRole credential: what a node logs in with (``mount``: the auth mount path)."""

    role_id: str
    secret_id: str = field(repr=False)
    mount: str = "approle"


#: How a node authenticates to OpenBao: a fixed token, or an AppRole login.
OpenBaoCredential = str | AppRole


class AppRoleLogin:
    """Keeps ``client`` logged in with ``role``; call it before each request.

    Thread-safe: concurrent callers wait for one refresh. ``clock`` (seconds,
    monotonic) is injectable for tests.
    """

    def __init__(
        self,
        client: hvac.Client,
        role: AppRole,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._role = role
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh_at = 0.0  # log in on first use
        self._login_ttl = 0.0
        self.logins = 0  # read by tests
        self.renewals = 0

    def __call__(self) -> None:
        if self._clock() < self._refresh_at:
            return
        with self._lock:
            if self._clock() < self._refresh_at:
                return
            if self._client.token and self._login_ttl > 0 and self._renew():
                return
            self._login()

    def _schedule(self, ttl: float) -> None:
        # TTL 0: a token that does not expire (a root or periodic-less token).
        self._refresh_at = float("inf") if ttl <= 0 else self._clock() + ttl * REFRESH_AT

    def _login(self) -> None:
        resp = self._client.auth.approle.login(
            role_id=self._role.role_id,
            secret_id=self._role.secret_id,
            mount_point=self._role.mount,
            use_token=True,
        )
        ttl = float(resp["auth"]["lease_duration"])
        self._login_ttl = ttl
        self.logins += 1
        self._schedule(ttl)

    def _renew(self) -> bool:
        try:
            resp = self._client.auth.token.renew_self()
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException):
            return False
        ttl = float(resp["auth"]["lease_duration"])
        if ttl < self._login_ttl * MIN_RENEWED:
            return False
        self.renewals += 1
        self._schedule(ttl)
        return True

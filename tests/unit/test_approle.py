"""When an AppRole login renews its token and when it logs in again (vault.keys.AppRoleLogin).

The schedule alone, over a stand-in for hvac's client; the login against a
real OpenBao is in tests/integration/test_openbao_policies.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import hvac.exceptions
import pytest

from vault.keys import AppRole, AppRoleLogin


class FakeClient:
    """Answers AppRole logins and renewals with the TTLs it is told."""

    def __init__(self, login_ttl: int = 3600) -> None:
        self.token: str | None = None
        self.login_ttl = login_ttl
        self.renew_ttl: int | Exception = login_ttl
        self.login_error: Exception | None = None
        self.issued = 0
        self.auth = SimpleNamespace(
            approle=SimpleNamespace(login=self._login),
            token=SimpleNamespace(renew_self=self._renew),
        )

    def _login(self, **kw: Any) -> dict[str, Any]:
        assert kw["role_id"] == "role" and kw["secret_id"] == "secret" and kw["use_token"]
        if self.login_error is not None:
            raise self.login_error
        self.issued += 1
        self.token = f"token-{self.issued}"
        return {"auth": {"client_token": self.token, "lease_duration": self.login_ttl}}

    def _renew(self) -> dict[str, Any]:
        if isinstance(self.renew_ttl, Exception):
            raise self.renew_ttl
        return {"auth": {"lease_duration": self.renew_ttl}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _login(client: FakeClient, clock: Clock) -> AppRoleLogin:
    return AppRoleLogin(client, AppRole("role", "secret"), clock)  # type: ignore[arg-type]


def test_logs_in_first_then_waits_two_thirds_of_the_ttl() -> None:
    client, clock = FakeClient(3600), Clock()
    login = _login(client, clock)
    login()
    assert (login.logins, login.renewals, client.token) == (1, 0, "token-1")
    clock.now += 2399
    login()
    assert (login.logins, login.renewals) == (1, 0)
    clock.now += 1
    login()
    assert (login.logins, login.renewals, client.token) == (1, 1, "token-1")


def test_a_renewal_capped_by_the_max_ttl_is_replaced_by_a_login() -> None:
    client, clock = FakeClient(3600), Clock()
    login = _login(client, clock)
    login()
    client.renew_ttl = 1199  # under a third of the login TTL: token_max_ttl is near
    clock.now += 2400
    login()
    assert (login.logins, login.renewals, client.token) == (2, 0, "token-2")
    client.renew_ttl = 1200  # a third: still worth keeping
    clock.now += 2400
    login()
    assert (login.logins, login.renewals, client.token) == (2, 1, "token-2")


def test_a_failed_renewal_logs_in_again() -> None:
    client, clock = FakeClient(60), Clock()
    login = _login(client, clock)
    login()
    client.renew_ttl = hvac.exceptions.Forbidden("permission denied")
    clock.now += 40
    login()
    assert (login.logins, client.token) == (2, "token-2")


def test_a_failed_login_is_the_callers_and_is_tried_again_next_time() -> None:
    client, clock = FakeClient(60), Clock()
    login = _login(client, clock)
    client.login_error = hvac.exceptions.InvalidRequest("invalid role or secret ID")
    with pytest.raises(hvac.exceptions.InvalidRequest):
        login()
    with pytest.raises(hvac.exceptions.InvalidRequest):
        login()
    client.login_error = None
    login()
    assert (login.logins, client.token) == (1, "token-1")


def test_a_token_without_ttl_is_never_refreshed() -> None:
    client, clock = FakeClient(0), Clock()
    login = _login(client, clock)
    login()
    clock.now += 10**9
    login()
    assert (login.logins, login.renewals) == (1, 0)


def test_the_secret_id_is_not_in_the_credentials_repr() -> None:
    assert "secret" not in repr(AppRole("role", "secret"))

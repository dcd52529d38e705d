"""OpenBao / HashiCorp Vault Transit adapter (hvac).

Every failure of the key service is wrapped: unreachable, sealed, forbidden or
erroring → :class:`KeyServiceUnavailable` (the vault fails closed); a wrap that
does not open or a key that no longer exists → :class:`DecryptionFailed`.
Nothing from the key service's answer (which may echo request data) reaches an
error message.
"""

from __future__ import annotations

import base64
import threading
from collections import Counter
from typing import Any, Self

import hvac
import hvac.exceptions
import requests

from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys._approle import AppRole, AppRoleLogin, OpenBaoCredential
from vault.keys._provider import KeyRef

KEY_TYPE = "aes256-gcm96"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


#: What a caller may handle itself (an unwrap that does not open, a key that is
#: gone); every other failure is KeyServiceUnavailable.
_CALLER_HANDLED: tuple[type[hvac.exceptions.VaultError], ...] = (
    hvac.exceptions.InvalidRequest,
    hvac.exceptions.InvalidPath,
)


def _call(
    op: str,
    fn: Any,
    *args: Any,
    handled: tuple[type[Exception], ...] = (),
    **kwargs: Any,
) -> Any:
    """Runs one hvac call. The exceptions in ``handled`` reach the caller; every
    other failure of the key service — unreachable, sealed, forbidden, rate
    limited, erroring, or an answer of any other kind — is KeyServiceUnavailable."""
    try:
        return fn(*args, **kwargs)
    except handled:
        raise
    except (requests.exceptions.RequestException, hvac.exceptions.VaultDown) as e:
        raise KeyServiceUnavailable(f"key service unreachable during {op}") from e
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as e:
        raise KeyServiceUnavailable(f"key service refused {op} (permission)") from e
    except _CALLER_HANDLED as e:
        raise KeyServiceUnavailable(f"key service rejected {op}") from e
    except hvac.exceptions.VaultError as e:
        raise KeyServiceUnavailable(f"key service failed during {op}") from e


def addresses(address: str) -> tuple[str, ...]:
    """The addresses of one OpenBao cluster: ``address`` may list several,
    separated by commas (its nodes, any of which forwards to the active one)."""
    out = tuple(a.strip() for a in address.split(",") if a.strip())
    if not out:
        raise ValueError("no OpenBao address")
    return out


class Failover:
    """Moves an hvac client to the cluster's next address when the one it uses
    cannot be reached (refused, reset) or is sealed.

    A call is tried once per address at most. Any other failure — a node that
    answers but has no active node to forward to during an election, a refusal,
    a timeout — is the call's failure at once: the vault fails closed, and the
    next call tries again.
    """

    def __init__(self, client: hvac.Client, cluster: tuple[str, ...]) -> None:
        self._client = client
        self._cluster = cluster
        self._lock = threading.Lock()

    def run(self, fn: Any) -> Any:
        for attempt in range(len(self._cluster)):
            used = self._client.url
            try:
                return fn()
            except KeyServiceUnavailable as e:
                cause = e.__cause__
                moved = isinstance(
                    cause, requests.exceptions.ConnectionError | hvac.exceptions.VaultDown
                )
                if not moved or attempt == len(self._cluster) - 1:
                    raise
                with self._lock:
                    if self._client.url == used:  # not already moved by another thread
                        i = self._cluster.index(used) if used in self._cluster else -1
                        self._client.url = self._cluster[(i + 1) % len(self._cluster)]
        raise AssertionError("unreachable")  # pragma: no cover


def _client(
    address: str, credential: OpenBaoCredential, timeout: float
) -> tuple[hvac.Client, AppRoleLogin | None, Failover]:
    """An hvac client for ``credential`` (a fixed token, or an AppRole login that
    the client refreshes before its calls) on ``address`` (one or several)."""
    cluster = addresses(address)
    if isinstance(credential, AppRole):
        client = hvac.Client(url=cluster[0], timeout=timeout)
        return client, AppRoleLogin(client, credential), Failover(client, cluster)
    client = hvac.Client(url=cluster[0], token=credential, timeout=timeout)
    return client, None, Failover(client, cluster)


def _run(
    login: AppRoleLogin | None,
    failover: Failover | None,
    op: str,
    fn: Any,
    args: tuple[Any, ...],
    handled: tuple[type[Exception], ...],
    kwargs: dict[str, Any],
) -> Any:
    """One key-service call: log in (or renew) first if due, on the cluster's
    reachable address."""

    def once() -> Any:
        if login is not None:
            _call("login", login)
        return _call(op, fn, *args, handled=handled, **kwargs)

    return once() if failover is None else failover.run(once)


class _TransitClient:
    """One credential's hvac client on one OpenBao cluster; every call through :func:`_run`.

    ``login``, when given, is called before each request to keep the client's
    token fresh (:class:`~vault.keys.AppRoleLogin`); its failures are the key
    service's. ``failover`` moves the client between a cluster's addresses.
    """

    DEFAULT_TIMEOUT = 5.0

    def __init__(
        self,
        client: hvac.Client,
        login: AppRoleLogin | None = None,
        failover: Failover | None = None,
    ) -> None:
        self._client = client
        self._login = login
        self._failover = failover

    @classmethod
    def connect(
        cls, address: str, credential: OpenBaoCredential, timeout: float | None = None
    ) -> Self:
        """A client on ``address`` (one, or a cluster's separated by commas)."""
        return cls(*_client(address, credential, timeout or cls.DEFAULT_TIMEOUT))

    def _call(
        self, op: str, fn: Any, *args: Any, handled: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> Any:
        return _run(self._login, self._failover, op, fn, args, handled, kwargs)


class TransitKeyProvider(_TransitClient):
    """:class:`~vault.keys.KeyProvider` over a Transit secrets engine."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        # Calls made to the key service, by operation; read by tests and metrics.
        self.calls: Counter[str] = Counter()

    def _call(
        self, op: str, fn: Any, *args: Any, handled: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> Any:
        with self._lock:
            self.calls[op] += 1
        return super()._call(op, fn, *args, handled=handled, **kwargs)

    def create_key(self, ref: KeyRef) -> None:
        self._call(
            "create_key",
            self._client.secrets.transit.create_key,
            name=ref.name,
            key_type=KEY_TYPE,
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=ref.mount,
        )

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        resp = self._call(
            "encrypt",
            self._client.secrets.transit.encrypt_data,
            name=ref.name,
            plaintext=_b64(plaintext),
            associated_data=_b64(associated_data),
            mount_point=ref.mount,
        )
        return str(resp["data"]["ciphertext"])

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        try:
            resp = self._call(
                "decrypt",
                self._client.secrets.transit.decrypt_data,
                name=ref.name,
                ciphertext=wrapped,
                associated_data=_b64(associated_data),
                mount_point=ref.mount,
                handled=_CALLER_HANDLED,
            )
        except _CALLER_HANDLED as e:
            # Altered wrap, wrong associated data, or the key no longer exists.
            raise DecryptionFailed() from e
        try:
            return base64.b64decode(resp["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, ValueError) as e:
            raise DecryptionFailed() from e


class TransitKeyShredder(_TransitClient):
    """Destroys subject keys: the erasure workflow's own, separate credential.

    The node's everyday token cannot reconfigure or delete keys; this one can,
    and is used only by the erase flow and ``pdvault erasure reapply``.
    """

    DEFAULT_TIMEOUT = 10.0

    def versions(self, ref: KeyRef) -> tuple[int, ...]:
        """The key's versions; empty when the key does not exist."""
        try:
            resp = self._call(
                "read_key",
                self._client.secrets.transit.read_key,
                name=ref.name,
                mount_point=ref.mount,
                handled=(hvac.exceptions.InvalidPath,),
            )
        except hvac.exceptions.InvalidPath:
            return ()
        return tuple(sorted(int(v) for v in resp["data"]["keys"]))

    def destroy(self, ref: KeyRef) -> tuple[int, ...]:
        """Deletes the key and every version of it; returns the versions destroyed.

        Idempotent: a key that no longer exists destroys nothing and returns ().
        """
        versions = self.versions(ref)
        if not versions:
            return ()
        self._call(
            "update_key_configuration",
            self._client.secrets.transit.update_key_configuration,
            name=ref.name,
            deletion_allowed=True,
            mount_point=ref.mount,
        )
        self._call(
            "delete_key",
            self._client.secrets.transit.delete_key,
            name=ref.name,
            mount_point=ref.mount,
        )
        return versions

    def prove_destroyed(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str:
        """Asks the key service to unwrap the subject's data key and records its refusal.

        Returns the evidence (the request and the key service's answer). Raises
        RuntimeError if the unwrap succeeds: then the key was not destroyed.
        """
        path = f"{ref.mount}/decrypt/{ref.name}"
        try:
            self._call(
                "decrypt",
                self._client.secrets.transit.decrypt_data,
                name=ref.name,
                ciphertext=wrapped,
                associated_data=_b64(associated_data),
                mount_point=ref.mount,
                handled=_CALLER_HANDLED,
            )
        except _CALLER_HANDLED as e:
            answer = "; ".join(str(x) for x in (e.errors or [])) or type(e).__name__
            return f"POST {path} refused: {answer}"
        raise RuntimeError("the subject key still decrypts after its destruction")

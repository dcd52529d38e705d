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
from typing import Any

import hvac
import hvac.exceptions
import requests
import requests.adapters

from vault.errors import DecryptionFailed, KeyServiceUnavailable
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


class TransitKeyProvider:
    """:class:`~vault.keys.KeyProvider` over a Transit secrets engine."""

    def __init__(self, client: hvac.Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        # Calls made to the key service, by operation; read by tests and metrics.
        self.calls: Counter[str] = Counter()

    @classmethod
    def connect(cls, address: str, token: str, timeout: float = 5.0) -> TransitKeyProvider:
        # Keep-alive connections for every thread that may call at once (the
        # node's workers, the pool filler): requests keeps 10 by default.
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return cls(hvac.Client(url=address, token=token, timeout=timeout, session=session))

    def _count(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1

    def _call(
        self, op: str, fn: Any, *args: Any, handled: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> Any:
        self._count(op)
        return _call(op, fn, *args, handled=handled, **kwargs)

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


class TransitKeyShredder:
    """Destroys subject keys: the erasure workflow's own, separate credential.

    The node's everyday token cannot reconfigure or delete keys; this one can,
    and is used only by the erase flow and ``pdvault erasure reapply``.
    """

    def __init__(self, client: hvac.Client) -> None:
        self._client = client

    @classmethod
    def connect(cls, address: str, token: str, timeout: float = 10.0) -> TransitKeyShredder:
        return cls(hvac.Client(url=address, token=token, timeout=timeout))

    def _call(
        self, op: str, fn: Any, *args: Any, handled: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> Any:
        return _call(op, fn, *args, handled=handled, **kwargs)

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

"""OpenBao / HashiCorp Vault Transit adapter (hvac).

Every failure of the key service is wrapped: unreachable, sealed, forbidden or
erroring → :class:`KeyServiceUnavailable` (the vault fails closed); a wrap that
does not open or a key that no longer exists → :class:`DecryptionFailed`.
Nothing from the key service's answer (which may echo request data) reaches an
error message.

A subject key is bound to its subject on every wrap: a derived key
(:attr:`KeyRef.derived`, every subject key made since revision 0008) by the
key-derivation ``context``, a legacy key by ``associated_data``. The callers
pass the same binding bytes either way (:func:`_binding` picks the field).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from typing import Any, Self

import hvac
import hvac.exceptions
import requests
import requests.adapters

from vault import metrics
from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys._approle import AppRole, AppRoleLogin, OpenBaoCredential
from vault.keys._provider import KeyRef

KEY_TYPE = "aes256-gcm96"
#: sys/health answers: active (200), standby (429), DR / performance standby (472, 473).
_READY_STATUSES = frozenset({200, 429, 472, 473})


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _binding(ref: KeyRef, binding: bytes) -> dict[str, Any]:
    """How a wrap is bound to its subject: the derivation context of a derived
    key (which ``transit/rewrap`` also takes), else the associated data."""
    return {"context" if ref.derived else "associated_data": _b64(binding)}


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
    limited, erroring, or an answer of any other kind — is KeyServiceUnavailable.
    Counted and timed in :mod:`vault.metrics`."""
    start = time.perf_counter()
    outcome = "unavailable"
    try:
        result = fn(*args, **kwargs)
        outcome = "ok"
        return result
    except handled:
        outcome = "refused"
        raise
    except (requests.exceptions.RequestException, hvac.exceptions.VaultDown) as e:
        raise KeyServiceUnavailable(f"key service unreachable during {op}") from e
    except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized) as e:
        raise KeyServiceUnavailable(f"key service refused {op} (permission)") from e
    except _CALLER_HANDLED as e:
        raise KeyServiceUnavailable(f"key service rejected {op}") from e
    except hvac.exceptions.VaultError as e:
        raise KeyServiceUnavailable(f"key service failed during {op}") from e
    finally:
        metrics.observe_openbao(op, outcome, time.perf_counter() - start)


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
    # Keep-alive connections for every thread that may call at once (the
    # node's request workers, the pool filler): requests keeps 10 by default.
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if isinstance(credential, AppRole):
        client = hvac.Client(url=cluster[0], timeout=timeout, session=session)
        return client, AppRoleLogin(client, credential), Failover(client, cluster)
    client = hvac.Client(url=cluster[0], token=credential, timeout=timeout, session=session)
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

    def ready(self) -> bool:
        """Whether OpenBao answers and is unsealed now (``sys/health``, no
        credential needed): active, or a standby that forwards to the leader.
        On a cluster, a node that is down or sealed moves the client to the
        next address, as a call would."""

        def probe() -> bool:
            try:
                resp = self._client.sys.read_health_status(method="HEAD")
            except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as e:
                raise KeyServiceUnavailable("key service unreachable") from e
            if getattr(resp, "status_code", 0) not in _READY_STATUSES:
                down = hvac.exceptions.VaultDown("sealed or not initialised")
                raise KeyServiceUnavailable("key service not ready") from down
            return True

        try:
            return probe() if self._failover is None else bool(self._failover.run(probe))
        except KeyServiceUnavailable:
            return False


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
        # Sent only for a derived key: the other keys are created as before.
        derived: dict[str, Any] = {"derived": True} if ref.derived else {}
        self._call(
            "create_key",
            self._client.secrets.transit.create_key,
            name=ref.name,
            key_type=KEY_TYPE,
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=ref.mount,
            **derived,
        )

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        resp = self._call(
            "encrypt",
            self._client.secrets.transit.encrypt_data,
            name=ref.name,
            plaintext=_b64(plaintext),
            mount_point=ref.mount,
            **_binding(ref, associated_data),
        )
        return str(resp["data"]["ciphertext"])

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        try:
            resp = self._call(
                "decrypt",
                self._client.secrets.transit.decrypt_data,
                name=ref.name,
                ciphertext=wrapped,
                mount_point=ref.mount,
                handled=_CALLER_HANDLED,
                **_binding(ref, associated_data),
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

    def _key_versions(self, ref: KeyRef) -> dict[str, Any]:
        """The key's versions, each with its creation time (Unix seconds, for
        symmetric keys); empty when the key does not exist."""
        try:
            resp = self._call(
                "read_key",
                self._client.secrets.transit.read_key,
                name=ref.name,
                mount_point=ref.mount,
                handled=(hvac.exceptions.InvalidPath,),
            )
        except hvac.exceptions.InvalidPath:
            return {}
        return dict(resp["data"]["keys"])

    def versions(self, ref: KeyRef) -> tuple[int, ...]:
        """The key's versions; empty when the key does not exist."""
        return tuple(sorted(int(v) for v in self._key_versions(ref)))

    def created_at(self, ref: KeyRef) -> float | None:
        times = [float(t) for t in self._key_versions(ref).values() if isinstance(t, int | float)]
        return min(times) if times else None

    def key_names(self, mount: str) -> list[str]:
        try:
            resp = self._call(
                "list_keys",
                self._client.secrets.transit.list_keys,
                mount_point=mount,
                handled=(hvac.exceptions.InvalidPath,),
            )
        except hvac.exceptions.InvalidPath:
            return []  # no key at all
        return [str(k) for k in resp["data"]["keys"]]

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
                mount_point=ref.mount,
                handled=_CALLER_HANDLED,
                **_binding(ref, associated_data),
            )
        except _CALLER_HANDLED as e:
            answer = "; ".join(str(x) for x in (e.errors or [])) or type(e).__name__
            return f"POST {path} refused: {answer}"
        raise RuntimeError("the subject key still decrypts after its destruction")


class KeyGone(Exception):
    """The subject key no longer exists (erased while it was being rotated)."""


class TransitKeyRotator(_TransitClient):
    """Rotates subject keys: the rotation role's own, separate credential.

    Its policy (``deploy/openbao/policies/rotation.hcl``) may rotate,
    re-wrap, reconfigure and trim subject keys, never delete or export them
    (decrypt and encrypt only for the legacy, non-derived keys). Every
    failure is KeyServiceUnavailable, except a key that is gone (:class:`KeyGone`):
    for a derived key's rewrap that includes a wrap that does not open.
    """

    DEFAULT_TIMEOUT = 10.0

    def __init__(
        self,
        client: hvac.Client,
        login: AppRoleLogin | None = None,
        failover: Failover | None = None,
    ) -> None:
        super().__init__(client, login, failover)
        self._keys = TransitKeyProvider(client, login, failover)

    def _call(
        self, op: str, fn: Any, *args: Any, handled: tuple[type[Exception], ...] = (), **kwargs: Any
    ) -> Any:
        try:
            return super()._call(op, fn, *args, handled=_CALLER_HANDLED, **kwargs)
        except _CALLER_HANDLED as e:
            raise KeyGone() from e

    def rotate(self, ref: KeyRef) -> int:
        """Adds a key version; returns the newest version."""
        self._call(
            "rotate_key",
            self._client.secrets.transit.rotate_key,
            name=ref.name,
            mount_point=ref.mount,
        )
        return self.latest_version(ref)

    def latest_version(self, ref: KeyRef) -> int:
        resp = self._call(
            "read_key", self._client.secrets.transit.read_key, name=ref.name, mount_point=ref.mount
        )
        return int(resp["data"]["latest_version"])

    def rewrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str:
        """The same data key wrapped by the key's newest version.

        A derived key (``ref.derived``): one Transit ``rewrap`` call with the
        wrap's context; OpenBao opens and re-seals the data key itself, which
        never leaves it in clear (this credential needs no decrypt or encrypt).

        A legacy key (associated data): OpenBao's rewrap takes no associated
        data (it fails authentication on every wrap bound to its subject), so
        the data key is unwrapped and wrapped again here, held in memory for
        the two calls only, never logged or stored.
        """
        if ref.derived:
            resp = self._call(
                "rewrap",
                self._client.secrets.transit.rewrap_data,
                name=ref.name,
                ciphertext=wrapped,
                context=_b64(associated_data),
                mount_point=ref.mount,
            )
            try:
                return str(resp["data"]["ciphertext"])
            except (KeyError, TypeError) as e:
                raise KeyServiceUnavailable("key service returned no wrap") from e
        try:
            data_key = self._keys.unwrap(ref, wrapped, associated_data)
        except DecryptionFailed as e:  # the key is gone, or the wrap does not open
            raise KeyGone() from e
        return self._keys.wrap(ref, data_key, associated_data)

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        """A data key (a rekey's old and next keys), held by the caller only
        for the job's work; :class:`~vault.errors.DecryptionFailed` if the wrap
        does not open (the key is gone, or the wrap was altered)."""
        return self._keys.unwrap(ref, wrapped, associated_data)

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        """A new data key wrapped by the key's newest version (a rekey's next key)."""
        return self._keys.wrap(ref, plaintext, associated_data)

    def retire_below(self, ref: KeyRef, version: int) -> None:
        """No version below ``version`` decrypts any more, and they are deleted
        (``min_decryption_version``, then ``trim``)."""
        self._call(
            "update_key_configuration",
            self._client.write_data,
            path=f"{ref.mount}/keys/{ref.name}/config",
            data={"min_decryption_version": version, "min_encryption_version": version},
        )
        self._call(
            "trim_key",
            self._client.write_data,
            path=f"{ref.mount}/keys/{ref.name}/trim",
            data={"min_available_version": version},
        )


class TransitSigner(_TransitClient):
    """Signs with a non-exportable Ed25519 Transit key (audit checkpoints)."""

    def __init__(
        self,
        client: hvac.Client,
        ref: KeyRef,
        login: AppRoleLogin | None = None,
        failover: Failover | None = None,
    ) -> None:
        super().__init__(client, login, failover)
        self.ref = ref

    @classmethod
    def for_key(
        cls,
        address: str,
        credential: OpenBaoCredential,
        ref: KeyRef,
        timeout: float | None = None,
    ) -> TransitSigner:
        """A signer with ``ref`` on ``address`` (one, or a cluster's separated by commas)."""
        client, login, failover = _client(address, credential, timeout or cls.DEFAULT_TIMEOUT)
        return cls(client, ref, login, failover)

    def ensure_key(self) -> None:
        """Creates the signing key if it does not exist (never exportable)."""
        if self.public_keys():
            return
        self._call(
            "create_key",
            self._client.secrets.transit.create_key,
            name=self.ref.name,
            key_type="ed25519",
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=self.ref.mount,
        )

    def public_keys(self) -> dict[int, bytes]:
        """Every version's raw Ed25519 public key; empty if the key does not exist."""
        try:
            resp = self._call(
                "read_key",
                self._client.secrets.transit.read_key,
                name=self.ref.name,
                mount_point=self.ref.mount,
                handled=(hvac.exceptions.InvalidPath,),
            )
        except hvac.exceptions.InvalidPath:
            return {}
        try:
            return {
                int(v): base64.b64decode(k["public_key"], validate=True)
                for v, k in resp["data"]["keys"].items()
            }
        except (KeyError, TypeError, ValueError) as e:
            raise KeyServiceUnavailable("key service returned no public key") from e

    def sign(self, message: bytes) -> tuple[int, bytes]:
        """(key version, Ed25519 signature) of ``message``."""
        resp = self._call(
            "sign",
            self._client.secrets.transit.sign_data,
            name=self.ref.name,
            hash_input=_b64(message),
            mount_point=self.ref.mount,
        )
        try:
            _, version, sig = str(resp["data"]["signature"]).split(":", 2)
            return int(version.removeprefix("v")), base64.b64decode(sig, validate=True)
        except (KeyError, TypeError, ValueError) as e:
            raise KeyServiceUnavailable("key service returned no signature") from e

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class KeyRef:
    """Where a subject's key-encryption key lives: a Transit mount and key name.

    ``derived``: a Transit key with key derivation (``derived=true``). A wrap
    under it is bound to its subject by the derivation *context* rather than
    by associated data, so OpenBao can re-wrap it to a new key version itself
    (``transit/rewrap`` takes a context, not associated data). Every subject
    key made since revision 0008 is derived; older ones are not (legacy).
    The caller passes the same binding bytes either way.
    """

    mount: str
    name: str
    derived: bool = False


class KeyProvider(Protocol):
    """A key service holding one non-exportable key-encryption key per subject.

    Implementations raise only :class:`~vault.errors.KeyServiceUnavailable`
    (the service cannot be reached or refused the call: fail closed) and
    :class:`~vault.errors.DecryptionFailed` (the wrapped key does not open:
    altered, bound to another subject, or the key is destroyed).
    """

    def create_key(self, ref: KeyRef) -> None:
        """Creates the key (idempotent), non-exportable, no plaintext backup;
        with key derivation when ``ref.derived``."""
        ...

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        """Encrypts ``plaintext`` (a data key) under the key, bound to
        ``associated_data`` (the derivation context of a derived key); returns
        the opaque wrap."""
        ...

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        """Decrypts a wrap made by :meth:`wrap` with the same binding bytes."""
        ...


class KeyShredder(Protocol):
    """Destroys subject keys: the erasure workflow's own, separate credential.

    Implementations raise only :class:`~vault.errors.KeyServiceUnavailable`
    (the service cannot be reached or refused the call: fail closed).
    """

    def versions(self, ref: KeyRef) -> tuple[int, ...]:
        """The key's versions (``()`` when the key does not exist)."""
        ...

    def destroy(self, ref: KeyRef) -> tuple[int, ...]:
        """Deletes the key and every version; returns the versions destroyed
        (``()`` when the key no longer exists: idempotent)."""
        ...

    def prove_destroyed(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str:
        """Asks the key service to unwrap a data key the destroyed key wrapped,
        and returns its refusal as evidence; raises if it still unwraps."""
        ...

    def key_names(self, mount: str) -> list[str]:
        """The names of the keys of ``mount`` (empty when it holds none)."""
        ...

    def created_at(self, ref: KeyRef) -> float | None:
        """When the key's first version was made (seconds since the epoch);
        ``None`` when the key does not exist."""
        ...

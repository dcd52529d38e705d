"""Several OpenBao clusters per region: key calls routed by Transit mount.

A region may spread its subjects' keys over the mounts of several OpenBao
clusters (``openbao.clusters`` in regions.yaml, see
:meth:`vault.config.RegionConfig.address_of`); each subject row stores its
key's mount, so every call about a key goes to the one cluster holding that
mount. A mount no cluster is configured for is refused as the key service
being unavailable (fail closed): nothing guesses where a key lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from vault.errors import KeyServiceUnavailable
from vault.keys._provider import KeyProvider, KeyRef, KeyShredder
from vault.keys._transit import TransitKeyRotator

C = TypeVar("C")


class _ByMount(Generic[C]):
    def __init__(self, clients: Mapping[str, C]) -> None:
        if not clients:
            raise ValueError("no mounts to route")
        self._clients = dict(clients)

    def _for(self, mount: str) -> C:
        client = self._clients.get(mount)
        if client is None:
            raise KeyServiceUnavailable("no OpenBao cluster is configured for the key's mount")
        return client


class RoutedKeyProvider(_ByMount[KeyProvider]):
    """A :class:`KeyProvider` over several clusters (mount → that cluster's provider)."""

    def create_key(self, ref: KeyRef) -> None:
        self._for(ref.mount).create_key(ref)

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        return self._for(ref.mount).wrap(ref, plaintext, associated_data)

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        return self._for(ref.mount).unwrap(ref, wrapped, associated_data)

    def ready(self) -> bool:
        """Whether every cluster answers (see TransitKeyProvider.ready)."""
        seen: set[int] = set()
        for p in self._clients.values():
            if id(p) in seen:
                continue
            seen.add(id(p))
            probe = getattr(p, "ready", None)
            if probe is not None and not probe():
                return False
        return True


class RoutedKeyShredder(_ByMount[KeyShredder]):
    """A :class:`KeyShredder` over several clusters (mount → that cluster's shredder)."""

    def versions(self, ref: KeyRef) -> tuple[int, ...]:
        return self._for(ref.mount).versions(ref)

    def destroy(self, ref: KeyRef) -> tuple[int, ...]:
        return self._for(ref.mount).destroy(ref)

    def prove_destroyed(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str:
        return self._for(ref.mount).prove_destroyed(ref, wrapped, associated_data)

    def key_names(self, mount: str) -> list[str]:
        return self._for(mount).key_names(mount)

    def created_at(self, ref: KeyRef) -> float | None:
        return self._for(ref.mount).created_at(ref)


class RoutedKeyRotator(_ByMount[TransitKeyRotator]):
    """Key rotation over several clusters (mount → that cluster's rotator)."""

    def rotate(self, ref: KeyRef) -> int:
        return self._for(ref.mount).rotate(ref)

    def latest_version(self, ref: KeyRef) -> int:
        return self._for(ref.mount).latest_version(ref)

    def rewrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> str:
        return self._for(ref.mount).rewrap(ref, wrapped, associated_data)

    def retire_below(self, ref: KeyRef, version: int) -> None:
        self._for(ref.mount).retire_below(ref, version)

    def unwrap(self, ref: KeyRef, wrapped: str, associated_data: bytes) -> bytes:
        return self._for(ref.mount).unwrap(ref, wrapped, associated_data)

    def wrap(self, ref: KeyRef, plaintext: bytes, associated_data: bytes) -> str:
        return self._for(ref.mount).wrap(ref, plaintext, associated_data)

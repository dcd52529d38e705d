"""Subject keys: the KeyProvider port, the OpenBao/Vault Transit adapter, the DEK cache."""

from vault.keys._cache import BoundedCache, DataKeyCache
from vault.keys._provider import KeyProvider, KeyRef, KeyShredder
from vault.keys._transit import KeyGone, TransitKeyProvider, TransitKeyRotator, TransitKeyShredder

__all__ = [
    "BoundedCache",
    "DataKeyCache",
    "KeyGone",
    "KeyProvider",
    "KeyRef",
    "KeyShredder",
    "TransitKeyProvider",
    "TransitKeyRotator",
    "TransitKeyShredder",
]

"""Subject keys: the KeyProvider port, the OpenBao/Vault Transit adapter, the DEK cache."""

from vault.keys._cache import BoundedCache, DataKeyCache
from vault.keys._provider import KeyProvider, KeyRef, KeyShredder
from vault.keys._transit import TransitKeyProvider, TransitKeyShredder, TransitSigner

__all__ = [
    "BoundedCache",
    "DataKeyCache",
    "KeyProvider",
    "KeyRef",
    "KeyShredder",
    "TransitKeyProvider",
    "TransitKeyShredder",
    "TransitSigner",
]

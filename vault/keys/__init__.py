"""Subject keys: the KeyProvider port, the OpenBao/Vault Transit adapter, the DEK cache."""

from vault.keys._cache import DataKeyCache
from vault.keys._provider import KeyProvider, KeyRef
from vault.keys._transit import TransitKeyProvider, TransitKeyShredder

__all__ = ["DataKeyCache", "KeyProvider", "KeyRef", "TransitKeyProvider", "TransitKeyShredder"]

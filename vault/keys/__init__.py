"""Subject keys: the KeyProvider port, the OpenBao/Vault Transit adapter, the DEK cache."""

from vault.keys._approle import AppRole, AppRoleLogin, OpenBaoCredential
from vault.keys._cache import BoundedCache, DataKeyCache
from vault.keys._provider import KeyProvider, KeyRef, KeyShredder
from vault.keys._routing import RoutedKeyProvider, RoutedKeyRotator, RoutedKeyShredder
from vault.keys._transit import (
    Failover,
    KeyGone,
    TransitKeyProvider,
    TransitKeyRotator,
    TransitKeyShredder,
    TransitSigner,
)

__all__ = [
    "AppRole",
    "AppRoleLogin",
    "BoundedCache",
    "DataKeyCache",
    "Failover",
    "KeyGone",
    "KeyProvider",
    "KeyRef",
    "KeyShredder",
    "OpenBaoCredential",
    "RoutedKeyProvider",
    "RoutedKeyRotator",
    "RoutedKeyShredder",
    "TransitKeyProvider",
    "TransitKeyRotator",
    "TransitKeyShredder",
    "TransitSigner",
]

"""The control plane shared by every node: token revocations and token events."""

from vault.control._store import (
    ControlStore,
    ErasureEntry,
    Revocation,
    Revocations,
    TokenEvent,
)

__all__ = ["ControlStore", "ErasureEntry", "Revocation", "Revocations", "TokenEvent"]

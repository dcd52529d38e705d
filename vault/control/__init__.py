"""The control plane shared by every node: token revocations and token events."""

from vault.control._store import ControlStore, Revocations, TokenEvent

__all__ = ["ControlStore", "Revocations", "TokenEvent"]

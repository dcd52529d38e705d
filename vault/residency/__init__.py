"""Residency: which region a person's data lives in, and routing requests there."""

from vault.residency._node import Node, RegionNotServed

__all__ = ["Node", "RegionNotServed"]

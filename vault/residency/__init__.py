"""Residency: which region a person's data lives in, routing requests there, and
whether their plaintext may cross a region border (transfer rules)."""

from vault.residency._gate import (
    TransferBatch,
    TransferGate,
    TransferLog,
    TransferNotRecorded,
    TransferRefused,
    transfer_decision,
)
from vault.residency._node import Node, RegionNotServed
from vault.residency._transfers import (
    NO_TRANSFER,
    TRANSFER_ALLOWED,
    TRANSFER_BASIS_MISSING,
    TRANSFER_BASIS_NOT_ACCEPTED,
    TRANSFER_CATEGORY_NOT_ALLOWED,
    TRANSFER_NOT_ALLOWED,
    TRANSFER_PURPOSE_NOT_ALLOWED,
    TRANSFER_UNKNOWN_REGION,
    TransferDecision,
    TransferRule,
    TransferRules,
)

__all__ = [
    "NO_TRANSFER",
    "TRANSFER_ALLOWED",
    "TRANSFER_BASIS_MISSING",
    "TRANSFER_BASIS_NOT_ACCEPTED",
    "TRANSFER_CATEGORY_NOT_ALLOWED",
    "TRANSFER_NOT_ALLOWED",
    "TRANSFER_PURPOSE_NOT_ALLOWED",
    "TRANSFER_UNKNOWN_REGION",
    "Node",
    "RegionNotServed",
    "TransferBatch",
    "TransferDecision",
    "TransferGate",
    "TransferLog",
    "TransferNotRecorded",
    "TransferRefused",
    "TransferRule",
    "TransferRules",
    "transfer_decision",
]

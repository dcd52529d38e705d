"""Crypto-shredding erasure: the workflow, signed receipts, the ledger."""

from vault.erasure._receipt import RECEIPT_PURPOSE, verify_receipt
from vault.erasure._service import Eraser, ErasureView, ReapplySummary, reapply

__all__ = [
    "RECEIPT_PURPOSE",
    "Eraser",
    "ErasureView",
    "ReapplySummary",
    "reapply",
    "verify_receipt",
]

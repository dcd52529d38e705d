"""Erasure receipts: signed by the vault, verifiable offline.

A receipt is a JSON document signed as PASETO v4.public with the vault's token
signing key and the implicit assertion ``pdvault/erasure-receipt/v1`` (so a
receipt can never pass as an access token, nor a token as a receipt)::

    {"type": "pdvault.erasure-receipt", "version": 1,
     "subject_id": "de_sub_…", "region": "de", "reason": "subject_request",
     "key": "transit-de/subject-de_sub_…", "key_versions_destroyed": [1],
     "records_affected": 3,
     "requested_at": "2026-11-29T10:00:00Z", "erased_at": "2026-11-29T10:00:00Z",
     "evidence": "POST transit-de/decrypt/subject-… refused: …"}

It names the subject only by its random id: no personal data.
"""

from __future__ import annotations

from typing import Any, Final

from vault.errors import Unauthenticated
from vault.tokens import KeySet, SigningKey, sign_document, verify_document

RECEIPT_PURPOSE: Final = b"pdvault/erasure-receipt/v1"
RECEIPT_TYPE: Final = "pdvault.erasure-receipt"


def sign_receipt(document: dict[str, Any], key: SigningKey) -> str:
    return sign_document({"type": RECEIPT_TYPE, "version": 1, **document}, key, RECEIPT_PURPOSE)


def verify_receipt(signed: str, keys: KeySet) -> dict[str, Any]:
    """The receipt's content if the vault's signature verifies; Unauthenticated otherwise."""
    doc = verify_document(signed.strip(), keys, RECEIPT_PURPOSE)
    if doc.get("type") != RECEIPT_TYPE:
        raise Unauthenticated("not an erasure receipt", reason="BAD_SIGNATURE")
    return doc

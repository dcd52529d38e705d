"""Erasure receipts: signed by the vault, verifiable offline for years.

A receipt is a JSON document signed as PASETO v4.public with the vault's
signing key and the implicit assertion ``pdvault/erasure-receipt/v1`` (so a
receipt can never pass as an access token, nor a token as a receipt). It names
the key that signed it (``signing_key``, also the footer's kid); receipts are
verified against the signing-key history (``pdvault receipt keys``,
:mod:`vault.tokens._history`), which keeps every key ever used, so rotating the
signing key never invalidates a receipt::

    {"type": "pdvault.erasure-receipt", "version": 1, "signing_key": "k4.pid.…",
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
from vault.tokens import KeySet, SigningKey, sign_document, signed_kid, verify_document

RECEIPT_PURPOSE: Final = b"pdvault/erasure-receipt/v1"
RECEIPT_TYPE: Final = "pdvault.erasure-receipt"


def sign_receipt(document: dict[str, Any], key: SigningKey) -> str:
    return sign_document(
        {"type": RECEIPT_TYPE, "version": 1, "signing_key": key.kid, **document},
        key,
        RECEIPT_PURPOSE,
    )


def verify_receipt(signed: str, keys: KeySet) -> dict[str, Any]:
    """The receipt's content if the vault's signature verifies under one of
    ``keys`` (the signing-key history); Unauthenticated otherwise."""
    doc = verify_document(signed.strip(), keys, RECEIPT_PURPOSE)
    if doc.get("type") != RECEIPT_TYPE:
        raise Unauthenticated("not an erasure receipt", reason="BAD_SIGNATURE")
    named = doc.get("signing_key")
    # Receipts made before receipts named their key carry it in the footer only.
    if named is not None and named != signed_kid(signed.strip()):
        raise Unauthenticated(
            "the receipt names a key it was not signed by", reason="BAD_SIGNATURE"
        )
    return doc

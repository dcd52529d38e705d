"""Keyed digests of requests, for idempotency checks.

``request_digest(key, purpose, payload)`` = hex HMAC-SHA256 under a key derived
from ``key`` for ``purpose`` (HMAC-SHA256(key, "pdvault/digest/v1|" purpose)),
over a canonical JSON encoding of ``payload``. Keyed, so a stored digest of a
request that carried personal data is no dictionary for it; derived, so the
data key itself is never used for two algorithms.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any


def request_digest(key: bytes, purpose: str, payload: Any) -> str:
    derived = hmac.new(key, b"pdvault/digest/v1|" + purpose.encode(), hashlib.sha256).digest()
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(derived, canonical.encode(), hashlib.sha256).hexdigest()


def same_digest(stored: str | None, fresh: str) -> bool:
    """Constant-time comparison; a missing stored digest never matches."""
    return stored is not None and hmac.compare_digest(stored, fresh)

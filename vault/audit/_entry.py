"""The audit entry, its canonical form, the hash chain and the pseudonyms.

An entry is a flat mapping of names to strings, integers, lists of strings or
``None``; never a value of the person's data, a data key or a token. Its
canonical form is compact JSON with sorted keys (UTF-8), and the chain is::

    hash_0 = 32 zero bytes
    hash_i = SHA-256("pdvault/audit/v1\\n" || hash_{i-1} || canonical(entry_i))

Every entry names its own ``seq`` (1, 2, …) and ``log``, so an entry moved to
another position or another log no longer hashes to its place.

Pseudonyms: a subject appears as ``HMAC-SHA256(k, subject_id)`` and a record as
``HMAC-SHA256(k, record_id)``, with ``k = HKDF-SHA256(the subject's data key,
info "pdvault audit pseudonym v1")``. The data key exists only wrapped by the
subject's Transit key, which erasure destroys: after an erasure nobody (the
vault included) can compute ``k`` again, so the subject's entries still verify
but can no longer be linked to the subject id or its record ids.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

GENESIS = bytes(32)
_DOMAIN = b"pdvault/audit/v1\n"
_PSEUDONYM_INFO = b"pdvault audit pseudonym v1"

#: The names an entry may carry (anything else is refused when written).
FIELDS = frozenset(
    {
        "seq",
        "log",
        "time_us",
        "node",
        "operation",
        "decision",
        "service",
        "client",
        "token_id",
        "purpose",
        "legal_basis",
        "transfer_basis",
        "region",
        "entry_region",
        "subject",
        "record",
        "categories",
        "fields",
        "request_id",
        "detail",
    }
)


#: ``json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
#: with one encoder made once (``json.dumps`` makes one per call).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry is hashed and stored as."""
    return _CANONICAL.encode(entry if type(entry) is dict else dict(entry)).encode()


def chain_hash(previous: bytes, canonical_entry: bytes) -> bytes:
    """``hash_i`` from ``hash_{i-1}`` and the canonical entry ``i``."""
    return hashlib.sha256(_DOMAIN + previous + canonical_entry).digest()


def pseudonym_key(data_key: bytes) -> bytes:
    """The subject's pseudonym key, derived from its data key (dies with it)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PSEUDONYM_INFO).derive(
        data_key
    )


def pseudonym(key: bytes, value: str) -> str:
    """A subject or record id under the subject's pseudonym key (hex)."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

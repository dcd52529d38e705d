"""Record encryption: the versioned AES-256-GCM envelope.

The one place record and data-key cryptography happens. ``cryptography.hazmat``
is imported here and in ``vault.tokens._keys`` (Ed25519 keys, which pyseto takes
as ``cryptography`` key objects), nowhere else.
"""

from vault.crypto._digest import request_digest, same_digest
from vault.crypto._envelope import (
    DEK_BYTES,
    ENVELOPE_V1,
    PSEUDONYM_SEAL,
    RecordContext,
    dek_associated_data,
    lookup_value_id,
    new_data_key,
    open_fields,
    open_lookup_value,
    open_subject_secret,
    seal_fields,
    seal_lookup_value,
    seal_subject_secret,
)

__all__ = [
    "DEK_BYTES",
    "ENVELOPE_V1",
    "PSEUDONYM_SEAL",
    "RecordContext",
    "dek_associated_data",
    "lookup_value_id",
    "new_data_key",
    "open_fields",
    "open_lookup_value",
    "open_subject_secret",
    "request_digest",
    "same_digest",
    "seal_fields",
    "seal_lookup_value",
    "seal_subject_secret",
]

"""Record encryption: the versioned AES-256-GCM envelope. The only importer of hazmat."""

from vault.crypto._envelope import (
    DEK_BYTES,
    ENVELOPE_V1,
    RecordContext,
    dek_associated_data,
    new_data_key,
    open_fields,
    seal_fields,
)

__all__ = [
    "DEK_BYTES",
    "ENVELOPE_V1",
    "RecordContext",
    "dek_associated_data",
    "new_data_key",
    "open_fields",
    "seal_fields",
]

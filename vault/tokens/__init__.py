"""Purpose tokens: PASETO v4.public claims, keys, issue/decode, cached verification, exchange."""

from vault.tokens._claims import (
    AUDIENCE,
    ISSUER,
    MAX_EXCHANGE_DEPTH,
    OPERATIONS,
    REGIONS,
    TRANSFER_BASES,
    WILDCARD,
    Claims,
    FieldGrant,
    is_narrowing,
    narrow,
    new_jti,
)
from vault.tokens._codec import (
    DEFAULT_NBF_LEEWAY,
    IMPLICIT_ASSERTION,
    MAX_TOKEN_LENGTH,
    decode,
    issue,
    sign_document,
    signed_kid,
    verify_document,
)
from vault.tokens._history import (
    HistoryEntry,
    HistoryError,
    history_keyset,
    verify_history,
)
from vault.tokens._keys import (
    KeySet,
    SigningKey,
    VerificationKey,
    keyset_from_json,
    keyset_to_json,
)
from vault.tokens._verifier import TokenVerifier

__all__ = [
    "AUDIENCE",
    "DEFAULT_NBF_LEEWAY",
    "IMPLICIT_ASSERTION",
    "ISSUER",
    "MAX_EXCHANGE_DEPTH",
    "MAX_TOKEN_LENGTH",
    "OPERATIONS",
    "REGIONS",
    "TRANSFER_BASES",
    "WILDCARD",
    "Claims",
    "FieldGrant",
    "HistoryEntry",
    "HistoryError",
    "KeySet",
    "SigningKey",
    "TokenVerifier",
    "VerificationKey",
    "decode",
    "history_keyset",
    "is_narrowing",
    "issue",
    "keyset_from_json",
    "keyset_to_json",
    "narrow",
    "new_jti",
    "sign_document",
    "signed_kid",
    "verify_document",
    "verify_history",
]

"""The record envelope, format version 1.

A record's fields are serialised as canonical JSON (sorted keys, UTF-8, no
whitespace) and sealed with AES-256-GCM under the subject's data key (DEK)::

    envelope = version (1 byte, 0x01) || nonce (12 bytes) || ciphertext || tag (16 bytes)

The associated data binds the envelope to where it belongs, so a stored
envelope copied onto another record, subject, region, category or version
fails to open::

    aad = b"pdvault/record/v1" || for each of (record_id, subject_id, region, category):
              len (4 bytes, big-endian) || utf-8 bytes
          || version (8 bytes, big-endian)

Every failure to open — wrong length, unknown format version, wrong key,
altered byte, wrong associated data — is the same :class:`DecryptionFailed`,
so the error says nothing an attacker could use.

The DEK itself is 32 random bytes, stored only wrapped by the subject's
Transit key; the wrap is bound to the subject and region by
:func:`dek_associated_data` (the key-derivation context of a derived subject
key, the associated data of a legacy one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.errors import DecryptionFailed

ENVELOPE_V1 = 0x01
DEK_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER = 1 + _NONCE_BYTES
_MIN_LEN = _HEADER + _TAG_BYTES
_RECORD_AAD_LABEL = b"pdvault/record/v1"
_DEK_AAD_LABEL = b"pdvault/dek/v1"
_LOOKUP_AAD_LABEL = b"pdvault/lookup-value/v1"
_LOOKUP_ID_LABEL = b"pdvault/lookup-value-id/v1"
_SEAL_AAD_LABEL = b"pdvault/seal/v1"
#: What a subject's sealed audit pseudonym key is bound to (``subjects.pseudonym_seal``).
PSEUDONYM_SEAL = "audit-pseudonym"


@dataclass(frozen=True, slots=True)
class RecordContext:
    """Where a record belongs; all of it is authenticated, none of it secret."""

    record_id: str
    subject_id: str
    region: str
    category: str
    version: int

    def associated_data(self) -> bytes:
        parts = [_RECORD_AAD_LABEL]
        for s in (self.record_id, self.subject_id, self.region, self.category):
            b = s.encode("utf-8")
            parts.append(struct.pack(">I", len(b)))
            parts.append(b)
        parts.append(struct.pack(">q", self.version))
        return b"".join(parts)


def new_data_key() -> bytes:
    return os.urandom(DEK_BYTES)


def dek_associated_data(subject_id: str, region: str) -> bytes:
    """What binds the Transit wrap of a subject's DEK to the subject: the
    key-derivation context of a derived subject key, the associated data of a
    legacy (non-derived) one."""
    return b"|".join((_DEK_AAD_LABEL, region.encode(), subject_id.encode()))


def seal_fields(dek: bytes, ctx: RecordContext, fields: dict[str, str]) -> bytes:
    plaintext = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    nonce = os.urandom(_NONCE_BYTES)
    ct = AESGCM(dek).encrypt(nonce, plaintext.encode("utf-8"), ctx.associated_data())
    return bytes((ENVELOPE_V1,)) + nonce + ct


def open_fields(dek: bytes, ctx: RecordContext, envelope: bytes) -> dict[str, str]:
    if len(envelope) < _MIN_LEN or envelope[0] != ENVELOPE_V1 or len(dek) != DEK_BYTES:
        raise DecryptionFailed()
    nonce = envelope[1:_HEADER]
    try:
        plaintext = AESGCM(dek).decrypt(nonce, envelope[_HEADER:], ctx.associated_data())
    except InvalidTag:
        raise DecryptionFailed() from None
    # Authenticated plaintext we wrote ourselves; a parse failure would be a bug,
    # still reported as the one opaque error rather than leaking content.
    try:
        fields = json.loads(plaintext)
    except ValueError:
        raise DecryptionFailed() from None
    if not isinstance(fields, dict):
        raise DecryptionFailed()
    return {str(k): str(v) for k, v in fields.items()}


# -- lookup values -----------------------------------------------------------
#
# A lookup value (a normalised e-mail address, phone number or account id) is
# kept, besides its blind-index digests, sealed under the subject's data key,
# so that the index can be rebuilt under a new index key (``pdvault keys
# reindex``) and dies with the data key at erasure. Same format as a record
# envelope; the associated data binds it to the subject, region and kind::
#
#     aad = b"pdvault/lookup-value/v1" || for each of (subject_id, region, kind):
#               len (4 bytes, big-endian) || utf-8 bytes


def _lookup_associated_data(subject_id: str, region: str, kind: str) -> bytes:
    parts = [_LOOKUP_AAD_LABEL]
    for s in (subject_id, region, kind):
        b = s.encode("utf-8")
        parts.append(struct.pack(">I", len(b)))
        parts.append(b)
    return b"".join(parts)


def lookup_value_id(dek: bytes, kind: str, value: str) -> str:
    """The stored id of a subject's lookup value: HMAC-SHA256 under the
    subject's data key (deterministic per subject, so a value set twice is
    stored once; useless without the data key, and gone with it)."""
    msg = _LOOKUP_ID_LABEL + b"\x00" + kind.encode() + b"\x00" + value.encode("utf-8")
    return hmac.new(dek, msg, hashlib.sha256).hexdigest()


def seal_lookup_value(dek: bytes, subject_id: str, region: str, kind: str, value: str) -> bytes:
    """A normalised lookup value sealed with AES-256-GCM under the subject's data key."""
    if len(dek) != DEK_BYTES:
        raise ValueError("a data key is 32 bytes")
    nonce = os.urandom(_NONCE_BYTES)
    aad = _lookup_associated_data(subject_id, region, kind)
    return bytes((ENVELOPE_V1,)) + nonce + AESGCM(dek).encrypt(nonce, value.encode("utf-8"), aad)


def open_lookup_value(dek: bytes, subject_id: str, region: str, kind: str, sealed: bytes) -> str:
    """The value :func:`seal_lookup_value` sealed; :class:`DecryptionFailed` for
    any other key, subject, region or kind, or an altered byte."""
    if len(sealed) < _MIN_LEN or sealed[0] != ENVELOPE_V1 or len(dek) != DEK_BYTES:
        raise DecryptionFailed()
    aad = _lookup_associated_data(subject_id, region, kind)
    try:
        plaintext = AESGCM(dek).decrypt(sealed[1:_HEADER], sealed[_HEADER:], aad)
        return plaintext.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        raise DecryptionFailed() from None


def _seal_associated_data(what: str, subject_id: str, region: str, generation: int) -> bytes:
    return b"|".join(
        (_SEAL_AAD_LABEL, what.encode(), region.encode(), subject_id.encode(), b"%d" % generation)
    )


def seal_subject_secret(
    dek: bytes, what: str, subject_id: str, region: str, generation: int, secret: bytes
) -> bytes:
    """A secret of the subject (its audit pseudonym key, …) sealed under the
    data key of ``generation``, bound to what it is, the subject, the region
    and the generation: the same envelope format as records (version byte,
    nonce, AES-256-GCM ciphertext and tag)."""
    aad = _seal_associated_data(what, subject_id, region, generation)
    nonce = os.urandom(_NONCE_BYTES)
    return bytes((ENVELOPE_V1,)) + nonce + AESGCM(dek).encrypt(nonce, secret, aad)


def open_subject_secret(
    dek: bytes, what: str, subject_id: str, region: str, generation: int, sealed: bytes
) -> bytes:
    """The secret :func:`seal_subject_secret` sealed; :class:`DecryptionFailed`
    for anything else (other key, subject, region, generation, altered byte)."""
    if len(sealed) < _MIN_LEN or sealed[0] != ENVELOPE_V1 or len(dek) != DEK_BYTES:
        raise DecryptionFailed()
    aad = _seal_associated_data(what, subject_id, region, generation)
    try:
        return AESGCM(dek).decrypt(sealed[1:_HEADER], sealed[_HEADER:], aad)
    except InvalidTag:
        raise DecryptionFailed() from None

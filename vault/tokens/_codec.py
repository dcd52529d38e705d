"""Purpose tokens on the wire: PASETO v4.public (Ed25519), signed and verified by pyseto.

Format::

    token  = "v4.public." base64url(payload || signature) "." base64url(footer)
    payload = canonical JSON of Claims.to_payload() (sorted keys, no whitespace)
    footer  = JSON {"kid": "<k4.pid.…>"} — always present
    implicit assertion = b"pdvault/token/v1" (signed, never transmitted: a
                         token minted for anything else does not verify here)

:func:`decode` checks, in order, and stops at the first failure (every one is
``Unauthenticated``; ``reason`` says which):

1. ``MALFORMED_TOKEN`` — not a string, longer than :data:`MAX_TOKEN_LENGTH`,
   not ``v4.public.``, not exactly payload + footer, or a footer that is not
   canonical base64url of ``{"kid": str}``. Only the footer is read before
   the signature is checked, and only for the kid.
2. ``UNKNOWN_KEY`` — the kid is not in the :class:`KeySet`.
3. ``BAD_SIGNATURE`` — the payload segment is not canonical base64url, is too
   short to hold a signature, or the signature over header, payload, footer
   and implicit assertion does not verify (forged, tampered, truncated).
4. ``MALFORMED_CLAIMS`` — signed, but the claims are not valid (see
   :meth:`Claims.from_payload`).
5. ``EXPIRED`` (``now >= exp``), ``NOT_YET_VALID`` (``now + nbf_leeway < nbf``),
   ``WRONG_AUDIENCE``, ``WRONG_ISSUER`` (a token another issuer signed, even
   with a key this verifier trusts).

Messages never contain the token or claim values, and the errors carry no
``__cause__``: parser exceptions hold the input they failed on.

pyseto quirks handled here: its base64url decoding is lenient (it ignores
characters outside the alphabet and non-zero padding bits), so distinct
strings would verify as the same token — segments are checked for canonical
encoding first; and ``pyseto.decode(..., deserializer=json)`` checks
exp/nbf against the wall clock and only warns on a bad footer, so the payload
is deserialised and the times checked here, against the caller's ``now``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Final, NoReturn

import pyseto

from vault.errors import Unauthenticated
from vault.tokens._claims import AUDIENCE, ISSUER, Claims
from vault.tokens._keys import KeySet, SigningKey

IMPLICIT_ASSERTION: Final = b"pdvault/token/v1"
HEADER: Final = "v4.public."
#: gRPC refuses metadata above 8 KiB by default; a longer token could never arrive.
MAX_TOKEN_LENGTH: Final = 8192
#: Tolerance for an issuing node whose clock runs ahead (nbf only, never exp).
DEFAULT_NBF_LEEWAY: Final = 30

_MAX_FOOTER_SEGMENT = 512
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


def issue(claims: Claims, signing_key: SigningKey) -> str:
    """Signs ``claims`` into a ``v4.public.…`` token whose footer names the key.

    Raises ValueError if the token would exceed :data:`MAX_TOKEN_LENGTH`.
    """
    return _sign(claims.to_payload(), signing_key, IMPLICIT_ASSERTION)


def _sign(document: dict[str, Any], signing_key: SigningKey, implicit: bytes) -> str:
    token = pyseto.encode(
        signing_key._paseto,
        _dumps(document),
        footer=_dumps({"kid": signing_key.kid}),
        implicit_assertion=implicit,
    ).decode("ascii")
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError("too large to sign as a token")
    return token


def _verified_body(token: str, keys: KeySet, implicit: bytes) -> object | None:
    """The JSON payload of ``token`` once its signature for ``implicit`` verifies
    (None if it is not strict JSON); Unauthenticated for anything else."""
    payload_segment, kid = _split(token)
    key = keys.get(kid)
    if key is None:
        raise Unauthenticated("signed by an unknown key", reason="UNKNOWN_KEY")
    if _b64url_decode(payload_segment) is None:
        _bad_signature()
    try:
        verified = pyseto.decode(key._paseto, token, implicit_assertion=implicit)
    except (pyseto.PysetoError, ValueError):
        _bad_signature()
    body = verified.payload
    if not isinstance(body, bytes):  # pragma: no cover - only with a deserializer
        _bad_signature()
    return _loads(body)


def decode(
    token: str,
    keys: KeySet,
    *,
    now: float,
    audience: str = AUDIENCE,
    issuer: str = ISSUER,
    nbf_leeway: int = DEFAULT_NBF_LEEWAY,
) -> Claims:
    """Verifies ``token`` against ``keys`` at time ``now``; returns its claims.

    Raises ``Unauthenticated`` with one of the reasons in the module docstring.
    """
    data = _verified_body(token, keys, IMPLICIT_ASSERTION)
    if data is None:
        raise Unauthenticated("token claims are malformed", reason="MALFORMED_CLAIMS")
    claims = Claims.from_payload(data)
    claims.check_validity_period(now, nbf_leeway=nbf_leeway)
    if claims.aud != audience:
        raise Unauthenticated("the token is meant for another audience", reason="WRONG_AUDIENCE")
    if claims.iss != issuer:
        raise Unauthenticated("the token was issued by someone else", reason="WRONG_ISSUER")
    return claims


def _split(token: object) -> tuple[str, str]:
    """The payload segment and the footer's kid; nothing else is trusted yet."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.startswith(HEADER):
        _malformed()
    parts = token[len(HEADER) :].split(".")
    if len(parts) != 2 or not parts[0] or len(parts[1]) > _MAX_FOOTER_SEGMENT:
        _malformed()
    payload_segment, footer_segment = parts
    footer = _b64url_decode(footer_segment)
    if footer is None:
        _malformed()
    data = _loads(footer)
    if not isinstance(data, dict) or set(data) != {"kid"} or not isinstance(data["kid"], str):
        _malformed()
    kid: str = data["kid"]
    return payload_segment, kid


def _malformed() -> NoReturn:
    raise Unauthenticated("the token is not a well-formed pdvault token", reason="MALFORMED_TOKEN")


def _bad_signature() -> NoReturn:
    raise Unauthenticated("the token signature does not verify", reason="BAD_SIGNATURE")


def _b64url_decode(segment: str) -> bytes | None:
    """Strict unpadded base64url: only the alphabet, and only the canonical encoding."""
    if _B64URL_RE.fullmatch(segment) is None or len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - excluded by the checks above
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
        return None  # non-zero padding bits: another spelling of the same bytes
    return raw


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode(
        "ascii"
    )


def _reject_constant(_name: str) -> NoReturn:
    raise ValueError("non-finite number")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _loads(raw: bytes) -> object | None:
    """Strict JSON (UTF-8, no duplicate keys, no NaN/Infinity); None if it is not."""
    try:
        value: object = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_object,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError):
        return None
    return value


# --- signed documents (erasure receipts) ----------------------------------------


def sign_document(document: dict[str, Any], signing_key: SigningKey, purpose: bytes) -> str:
    """Signs a JSON document as PASETO v4.public, bound to ``purpose`` (the
    implicit assertion), with the key id in the footer. Verifiable offline
    with the public verification keys alone."""
    return _sign(document, signing_key, purpose)


def signed_kid(signed: str) -> str:
    """The kid in the footer of a signed document or token (not verified:
    call this only on what :func:`verify_document` accepted)."""
    return _split(signed)[1]


def verify_document(signed: str, keys: KeySet, purpose: bytes) -> dict[str, Any]:
    """The document inside ``signed`` if its signature verifies for ``purpose``.

    Raises ``Unauthenticated`` (MALFORMED_TOKEN, UNKNOWN_KEY, BAD_SIGNATURE).
    """
    data = _verified_body(signed, keys, purpose)
    if not isinstance(data, dict):
        _bad_signature()
    return data

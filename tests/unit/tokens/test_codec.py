from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pyseto
import pytest
from pyseto import Key

from tests.factories import NOW, SUBJECT, make_claims
from vault.errors import Unauthenticated
from vault.tokens import (
    IMPLICIT_ASSERTION,
    MAX_TOKEN_LENGTH,
    Claims,
    KeySet,
    SigningKey,
    TokenVerifier,
    decode,
    issue,
    sign_document,
    verify_document,
)
from vault.tokens._codec import _b64url_decode


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keys(key: SigningKey) -> KeySet:
    return KeySet([key.public()])


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def sign_raw(
    pem: bytes, payload: bytes, footer: bytes, assertion: bytes = IMPLICIT_ASSERTION
) -> str:
    """A token made with pyseto directly, as an attacker (or a sloppy issuer) could."""
    k = Key.new(version=4, purpose="public", key=pem)
    return pyseto.encode(k, payload, footer=footer, implicit_assertion=assertion).decode()


#: The one message per reason: written for callers, never carrying the token.
MESSAGES = {
    "MALFORMED_TOKEN": "the token is not a well-formed pdvault token",
    "UNKNOWN_KEY": "signed by an unknown key",
    "BAD_SIGNATURE": "the token signature does not verify",
    "MALFORMED_CLAIMS": "token claims are malformed",
    "EXPIRED": "the token has expired",
    "NOT_YET_VALID": "the token is not valid yet",
    "WRONG_AUDIENCE": "the token is meant for another audience",
}


def reason_of(token: object, keys: KeySet, now: float = NOW, **kwargs: Any) -> str:
    with pytest.raises(Unauthenticated) as caught:
        decode(token, keys, now=now, **kwargs)  # type: ignore[arg-type]
    err = caught.value
    if err.reason == "MALFORMED_CLAIMS":  # may name the claim: "… (iss: must be a string)"
        assert err.message.startswith(MESSAGES["MALFORMED_CLAIMS"])
    else:
        assert err.message == MESSAGES[err.reason]
    # Never leak the token or the claims, and carry no cause that could.
    assert err.__cause__ is None
    if isinstance(token, str) and len(token) > 20:
        assert token not in err.message
        assert token[10:30] not in err.message
    for value in ("crm-backend", SUBJECT, "user.name"):
        assert value not in err.message
    return err.reason


def test_round_trip(key: SigningKey, keys: KeySet) -> None:
    claims = make_claims(transfer_basis="scc", parent_jti="p" * 22)
    token = issue(claims, key)
    assert token.startswith("v4.public.")
    assert decode(token, keys, now=NOW + 10) == claims


def test_footer_carries_only_the_kid(key: SigningKey) -> None:
    token = issue(make_claims(), key)
    footer = json.loads(unb64(token.split(".")[3]))
    assert footer == {"kid": key.kid}


def test_token_is_signed_by_pyseto_with_the_implicit_assertion(key: SigningKey) -> None:
    token = issue(make_claims(), key)
    public = Key.from_paserk(key.public().to_paserk())
    verified = pyseto.decode(public, token, implicit_assertion=IMPLICIT_ASSERTION)
    assert json.loads(verified.payload) == make_claims().to_payload()  # type: ignore[arg-type]
    with pytest.raises(pyseto.VerifyError):
        pyseto.decode(public, token, implicit_assertion=b"")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "v4.public.",
        "v4.public",
        "Bearer v4.public.abc.def",
        "v4.public.abc",  # no footer
        "v4.public.abc.def.ghi",
        "v4.public..e30",
        "v4.public.abc." + b64(b"not json"),
        "v4.public.abc." + b64(b'{"kid": 1}'),
        "v4.public.abc." + b64(b'{"kid": "a", "x": 1}'),
        "v4.public.abc." + b64(b'{"kid": "a", "kid": "b"}'),
        "v4.public.abc." + b64(b'["kid"]'),
        "v4.public.abc." + b64(b"\xff\xfe"),
        "v4.public.abc.e30=",  # padded footer
        "v4.public.abc.e3!0",
        "v4.public.abc." + "A" * 600,
        "v4.public.abc.\u00e9",
        "v4.public.abc.\ud800",
        "v4.public." + "A" * MAX_TOKEN_LENGTH,
        None,
        b"v4.public.abc.def",
    ],
)
def test_garbage_is_malformed(token: object, keys: KeySet) -> None:
    assert reason_of(token, keys) == "MALFORMED_TOKEN"


def test_other_versions_and_purposes_are_malformed(key: SigningKey, keys: KeySet) -> None:
    payload = json.dumps(make_claims().to_payload()).encode()
    footer = json.dumps({"kid": key.kid}).encode()
    local = pyseto.encode(
        Key.new(version=4, purpose="local", key=b"k" * 32), payload, footer=footer
    ).decode()
    v2 = pyseto.encode(
        Key.new(version=2, purpose="public", key=key.private_pem()), payload, footer=footer
    ).decode()
    v3 = pyseto.encode(
        Key.new(version=3, purpose="local", key=b"k" * 32), payload, footer=footer
    ).decode()
    for token in (local, v2, v3):
        assert not token.startswith("v4.public.")
        assert reason_of(token, keys) == "MALFORMED_TOKEN"


def test_unknown_kid(key: SigningKey) -> None:
    token = issue(make_claims(), key)
    others = KeySet([SigningKey.generate().public()])
    assert reason_of(token, others) == "UNKNOWN_KEY"


def test_forged_with_another_key_under_the_same_kid(key: SigningKey, keys: KeySet) -> None:
    attacker = SigningKey.generate()
    token = sign_raw(
        attacker.private_pem(),
        json.dumps(make_claims().to_payload()).encode(),
        json.dumps({"kid": key.kid}).encode(),
    )
    assert reason_of(token, keys) == "BAD_SIGNATURE"


def test_other_implicit_assertion_does_not_verify(key: SigningKey, keys: KeySet) -> None:
    token = sign_raw(
        key.private_pem(),
        json.dumps(make_claims().to_payload()).encode(),
        json.dumps({"kid": key.kid}).encode(),
        assertion=b"pdvault/token/v0",
    )
    assert reason_of(token, keys) == "BAD_SIGNATURE"


def test_every_flipped_bit_of_payload_or_signature_is_rejected(
    key: SigningKey, keys: KeySet
) -> None:
    head, purpose, body, footer = issue(make_claims(), key).split(".")
    raw = unb64(body)
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[i] ^= bit
            token = ".".join([head, purpose, b64(bytes(tampered)), footer])
            assert reason_of(token, keys) == "BAD_SIGNATURE", i


def test_truncated_signature_is_rejected(key: SigningKey, keys: KeySet) -> None:
    head, purpose, body, footer = issue(make_claims(), key).split(".")
    raw = unb64(body)
    for cut in (1, 2, 63, 64, 65, len(raw) - 1):
        token = ".".join([head, purpose, b64(raw[:-cut]), footer])
        assert reason_of(token, keys) == "BAD_SIGNATURE", cut
    # Cutting characters off the encoded segment: bad length or bad signature.
    for cut in range(1, 8):
        token = ".".join([head, purpose, body[:-cut], footer])
        assert reason_of(token, keys) == "BAD_SIGNATURE", cut


def test_every_prefix_of_a_token_is_rejected(key: SigningKey, keys: KeySet) -> None:
    token = issue(make_claims(), key)
    for end in range(len(token)):
        assert reason_of(token[:end], keys) in {
            "MALFORMED_TOKEN",
            "UNKNOWN_KEY",
            "BAD_SIGNATURE",
        }, end


def test_non_canonical_base64_is_rejected(key: SigningKey, keys: KeySet) -> None:
    # pyseto alone would accept both of these as the original token.
    head, purpose, body, footer = issue(make_claims(), key).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(body) % 4 in (2, 3)  # the last character carries padding bits
    twin = body[:-1] + alphabet[alphabet.index(body[-1]) ^ 1]
    assert unb64(twin) == unb64(body)
    assert reason_of(".".join([head, purpose, twin, footer]), keys) == "BAD_SIGNATURE"
    for junk in ("!", "=", "\u00e9", " "):
        spoiled = body[:10] + junk + body[10:]
        assert reason_of(".".join([head, purpose, spoiled, footer]), keys) == "BAD_SIGNATURE"


def test_tampered_footer_is_rejected(key: SigningKey, keys: KeySet) -> None:
    head, purpose, body, footer = issue(make_claims(), key).split(".")
    # Same kid, different bytes: the footer is covered by the signature.
    spaced = b64(json.dumps({"kid": key.kid}, separators=(", ", ": ")).encode())
    assert spaced != footer
    assert reason_of(".".join([head, purpose, body, spaced]), keys) == "BAD_SIGNATURE"
    # Another key's kid that the set knows.
    other = SigningKey.generate()
    both = KeySet([key.public(), other.public()])
    swapped = b64(json.dumps({"kid": other.kid}).encode())
    assert reason_of(".".join([head, purpose, body, swapped]), both) == "BAD_SIGNATURE"
    # Every flipped byte of the footer fails one way or another.
    raw = unb64(footer)
    for i in range(len(raw)):
        tampered = bytearray(raw)
        tampered[i] ^= 0x01
        token = ".".join([head, purpose, body, b64(bytes(tampered))])
        assert reason_of(token, keys) in {"MALFORMED_TOKEN", "UNKNOWN_KEY", "BAD_SIGNATURE"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"null",
        b'{"iss": NaN}',
        json.dumps({**make_claims().to_payload(), "operations": ["sudo"]}).encode(),
    ],
)
def test_signed_but_malformed_claims(key: SigningKey, keys: KeySet, payload: bytes) -> None:
    token = sign_raw(key.private_pem(), payload, json.dumps({"kid": key.kid}).encode())
    assert reason_of(token, keys) == "MALFORMED_CLAIMS"


def test_duplicate_claim_keys_are_malformed(key: SigningKey, keys: KeySet) -> None:
    body = json.dumps(make_claims().to_payload())
    duplicated = body[:-1] + ', "aud": "pdvault"}'
    token = sign_raw(key.private_pem(), duplicated.encode(), json.dumps({"kid": key.kid}).encode())
    assert reason_of(token, keys) == "MALFORMED_CLAIMS"


def test_expired(key: SigningKey, keys: KeySet) -> None:
    token = issue(make_claims(), key)
    decode(token, keys, now=NOW + 299.5)
    assert reason_of(token, keys, now=NOW + 300) == "EXPIRED"
    assert reason_of(token, keys, now=NOW + 10**6) == "EXPIRED"


def test_not_yet_valid(key: SigningKey, keys: KeySet) -> None:
    token = issue(make_claims(nbf=NOW + 100, exp=NOW + 400), key)
    assert reason_of(token, keys, now=NOW, nbf_leeway=0) == "NOT_YET_VALID"
    assert reason_of(token, keys, now=NOW + 69) == "NOT_YET_VALID"  # default leeway 30 s
    decode(token, keys, now=NOW + 70)
    decode(token, keys, now=NOW + 100, nbf_leeway=0)


def test_wrong_audience(key: SigningKey, keys: KeySet) -> None:
    token = issue(make_claims(aud="billing"), key)
    assert reason_of(token, keys) == "WRONG_AUDIENCE"
    assert decode(token, keys, now=NOW, audience="billing").aud == "billing"
    good = issue(make_claims(), key)
    assert reason_of(good, keys, audience="billing") == "WRONG_AUDIENCE"


def test_expiry_is_checked_before_audience(key: SigningKey, keys: KeySet) -> None:
    token = issue(make_claims(aud="billing"), key)
    assert reason_of(token, keys, now=NOW + 300) == "EXPIRED"


def test_key_rotation(key: SigningKey) -> None:
    new = SigningKey.generate()
    both = KeySet([key.public(), new.public()])
    old_token = issue(make_claims(jti="o" * 22), key)
    new_token = issue(make_claims(jti="n" * 22), new)
    assert decode(old_token, both, now=NOW).jti == "o" * 22
    assert decode(new_token, both, now=NOW).jti == "n" * 22
    only_new = KeySet([new.public()])
    assert reason_of(old_token, only_new) == "UNKNOWN_KEY"
    assert decode(new_token, only_new, now=NOW).jti == "n" * 22


def test_key_loaded_from_pem_and_paserk_interoperate(key: SigningKey) -> None:
    reloaded = SigningKey.from_pem(key.private_pem())
    token = issue(make_claims(), reloaded)
    public = dataclasses.replace(key.public())
    assert decode(token, KeySet([public]), now=NOW) == make_claims()


def test_oversized_claims_are_refused_at_issue(key: SigningKey) -> None:
    many = {f"user.c{i}": frozenset({f"field{j}" for j in range(20)}) for i in range(40)}
    with pytest.raises(ValueError):
        issue(make_claims(categories=many), key)


# --- the wire format, byte for byte -------------------------------------------------


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def test_payload_and_footer_are_canonical_json(key: SigningKey) -> None:
    claims = make_claims(transfer_basis="scc")
    _, _, body, footer = issue(claims, key).split(".")
    assert unb64(body)[:-64] == canonical(claims.to_payload())  # payload || 64-byte signature
    assert unb64(footer) == b'{"kid":"' + key.kid.encode() + b'"}'


@pytest.mark.parametrize("n", range(41))
def test_every_canonical_base64url_segment_decodes(n: int) -> None:
    raw = bytes((7 * i + n) % 256 for i in range(n))
    assert _b64url_decode(b64(raw)) == raw


def test_every_last_character_of_a_canonical_segment_decodes() -> None:
    # Whatever a segment ends with ("X", "=" lookalikes, "-", "_"), it decodes.
    for b in range(256):
        for raw in (bytes([b]), bytes([0, b]), bytes([0, 0, b]), bytes([b, 0, 0])):
            assert _b64url_decode(b64(raw)) == raw, raw


@pytest.mark.parametrize("segment", ["A", "AAAAA", "e30=", "e3!0", "e30\n", "AB", "AAB"])
def test_non_canonical_base64url_segments_do_not_decode(segment: str) -> None:
    assert _b64url_decode(segment) is None


# --- length limits, at their boundaries ---------------------------------------------


def claims_of_token_length(key: SigningKey, length: int) -> Claims:
    """Claims whose token is exactly ``length`` characters, padded with field names."""
    base = len(issue(make_claims(), key))
    estimate = max((length - base) * 3 // 4 - 200, 0)  # 4 characters per 3 bytes
    for pad in range(estimate, estimate + 600):
        names = {f"f{i:03d}" + "x" * 124 for i in range(pad // 128)}
        if pad % 128:
            names.add("r" * (pad % 128))
        claims = make_claims(categories={"user.name": frozenset(names) or None})
        have = len(issue(claims, key))
        if have == length:
            return claims
        assert have < length, "no padding gives that exact length"
    raise AssertionError("search window too small")


def test_the_longest_token_is_issued_and_accepted(key: SigningKey, keys: KeySet) -> None:
    claims = claims_of_token_length(key, MAX_TOKEN_LENGTH)
    token = issue(claims, key)
    assert len(token) == MAX_TOKEN_LENGTH
    assert decode(token, keys, now=NOW) == claims
    verifier = TokenVerifier(KeySet([key.public()]), lambda _jti: False, lambda: NOW)
    assert verifier.verify(token) == claims
    longer = dict(claims.categories)
    longer["user.contact.email"] = None  # a few bytes more
    with pytest.raises(ValueError, match=r"^too large to sign as a token$"):
        issue(make_claims(categories=longer), key)


def test_the_length_limit_is_the_first_check(key: SigningKey, keys: KeySet) -> None:
    footer = b64(json.dumps({"kid": "k4.pid.unknown"}).encode())
    at_limit = "v4.public." + "A" * (MAX_TOKEN_LENGTH - 11 - len(footer)) + "." + footer
    assert len(at_limit) == MAX_TOKEN_LENGTH
    assert reason_of(at_limit, keys) == "UNKNOWN_KEY"  # read as far as the kid
    over = "v4.public.A" + at_limit[len("v4.public.") :]
    assert reason_of(over, keys) == "MALFORMED_TOKEN"
    verifier = TokenVerifier(keys, lambda _jti: False, lambda: NOW)
    for token, reason in ((at_limit, "UNKNOWN_KEY"), (over, "MALFORMED_TOKEN")):
        with pytest.raises(Unauthenticated) as caught:
            verifier.verify(token)
        assert caught.value.reason == reason


def test_the_footer_segment_limit(keys: KeySet) -> None:
    # 384 bytes of footer JSON encode to exactly 512 characters.
    kid = "k" * (384 - len(b'{"kid":""}'))
    at_limit = b64(json.dumps({"kid": kid}, separators=(",", ":")).encode())
    assert len(at_limit) == 512
    assert reason_of("v4.public.abc." + at_limit, keys) == "UNKNOWN_KEY"
    over = b64(json.dumps({"kid": kid + "kkk"}, separators=(",", ":")).encode())
    assert len(over) == 516
    assert reason_of("v4.public.abc." + over, keys) == "MALFORMED_TOKEN"


def test_an_empty_payload_segment_is_malformed_even_with_a_known_kid(
    key: SigningKey, keys: KeySet
) -> None:
    footer = b64(json.dumps({"kid": key.kid}).encode())
    assert reason_of("v4.public.." + footer, keys) == "MALFORMED_TOKEN"


# --- signed documents (erasure receipts) ----------------------------------------------

PURPOSE = b"pdvault/test-document/v1"


def test_document_round_trip(key: SigningKey, keys: KeySet) -> None:
    document = {"type": "t", "n": 3, "text": "wörk", "list": [1, "a"]}
    signed = sign_document(document, key, PURPOSE)
    assert signed.isascii() and signed.startswith("v4.public.")
    assert verify_document(signed, keys, PURPOSE) == document
    assert unb64(signed.split(".")[2])[:-64] == canonical(document)


def test_document_is_bound_to_its_purpose(key: SigningKey, keys: KeySet) -> None:
    signed = sign_document({"type": "t"}, key, PURPOSE)
    for other in (b"pdvault/test-document/v2", IMPLICIT_ASSERTION, b""):
        with pytest.raises(Unauthenticated) as caught:
            verify_document(signed, keys, other)
        assert caught.value.reason == "BAD_SIGNATURE"
    # Neither a token as a document nor a document as a token.
    token = issue(make_claims(), key)
    with pytest.raises(Unauthenticated) as caught:
        verify_document(token, keys, PURPOSE)
    assert caught.value.reason == "BAD_SIGNATURE"
    as_token = sign_document(make_claims().to_payload(), key, PURPOSE)
    assert reason_of(as_token, keys) == "BAD_SIGNATURE"


def test_document_unknown_key(key: SigningKey) -> None:
    signed = sign_document({"type": "t"}, key, PURPOSE)
    with pytest.raises(Unauthenticated) as caught:
        verify_document(signed, KeySet([SigningKey.generate().public()]), PURPOSE)
    assert caught.value.reason == "UNKNOWN_KEY"


@pytest.mark.parametrize(
    "body",
    [b"[1]", b'"text"', b"null", b"not json", b'{"a": NaN}', b'{"a": -Infinity}', b'{"a":1,"a":2}'],
)
def test_a_signed_document_must_be_a_strict_json_object(
    key: SigningKey, keys: KeySet, body: bytes
) -> None:
    signed = sign_raw(key.private_pem(), body, json.dumps({"kid": key.kid}).encode(), PURPOSE)
    with pytest.raises(Unauthenticated) as caught:
        verify_document(signed, keys, PURPOSE)
    assert caught.value.reason == "BAD_SIGNATURE"
    assert caught.value.message == MESSAGES["BAD_SIGNATURE"]

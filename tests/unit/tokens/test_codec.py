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
    KeySet,
    SigningKey,
    decode,
    issue,
)


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


def reason_of(token: object, keys: KeySet, now: float = NOW, **kwargs: Any) -> str:
    with pytest.raises(Unauthenticated) as caught:
        decode(token, keys, now=now, **kwargs)  # type: ignore[arg-type]
    err = caught.value
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

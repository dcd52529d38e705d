from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from vault.tokens import KeySet, SigningKey, VerificationKey, keyset_from_json, keyset_to_json
from vault.tokens._keys import PublishedKey, published_from_json, published_to_json


def test_generated_keys_differ_and_kid_is_the_public_paserk_id() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    assert a.kid != b.kid
    assert a.kid.startswith("k4.pid.")
    assert a.public().kid == a.kid
    assert a.public().to_paserk().startswith("k4.public.")


def test_pem_round_trip_keeps_the_key() -> None:
    key = SigningKey.generate()
    pem = key.private_pem()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = SigningKey.from_pem(pem)
    assert again.kid == key.kid
    assert again == key
    assert again.public() == key.public()


def test_repr_shows_no_private_material() -> None:
    key = SigningKey.generate()
    body = b"".join(key.private_pem().splitlines()[1:-1]).decode()
    assert body not in repr(key)
    assert key.kid in repr(key)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a pem",
        generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
)
def test_from_pem_refuses_anything_but_an_ed25519_private_key(pem: bytes) -> None:
    with pytest.raises(ValueError):
        SigningKey.from_pem(pem)


def test_from_pem_refuses_a_public_key() -> None:
    key = SigningKey.generate()
    pub = key._private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError):
        SigningKey.from_pem(pub)


def test_paserk_round_trip() -> None:
    public = SigningKey.generate().public()
    again = VerificationKey.from_paserk(public.kid, public.to_paserk())
    assert again == public
    assert again.kid == public.kid


def test_from_paserk_refuses_a_kid_that_is_not_the_keys() -> None:
    public = SigningKey.generate().public()
    other = SigningKey.generate().public()
    with pytest.raises(ValueError, match="kid"):
        VerificationKey.from_paserk(other.kid, public.to_paserk())


@pytest.mark.parametrize(
    "paserk",
    ["", "k4.public.", "k4.public.AAAA", "k2.public.AAAA", "k4.local.AAAA", "garbage"],
)
def test_verification_key_refuses_malformed_paserk(paserk: str) -> None:
    with pytest.raises(ValueError):
        VerificationKey(paserk)


def test_verification_key_refuses_a_secret_paserk() -> None:
    key = SigningKey.generate()
    secret = key._paseto.to_paserk()
    assert secret.startswith("k4.secret.")
    with pytest.raises(ValueError):
        VerificationKey(secret)


def test_keyset_looks_keys_up_by_kid() -> None:
    a, b = SigningKey.generate().public(), SigningKey.generate().public()
    keys = KeySet([a, b])
    assert keys.get(a.kid) == a
    assert keys.get(b.kid) == b
    assert keys.get("k4.pid.unknown") is None
    assert a.kid in keys
    assert len(keys) == 2
    assert keys.kids == frozenset({a.kid, b.kid})
    assert set(keys) == {a, b}


def test_keyset_refuses_duplicates_and_emptiness() -> None:
    a = SigningKey.generate().public()
    with pytest.raises(ValueError):
        KeySet([a, VerificationKey(a.paserk)])
    with pytest.raises(ValueError):
        KeySet([])


def _encrypted_pem() -> bytes:
    return SigningKey.generate()._private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def _ec_pem() -> bytes:
    return generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


_A = SigningKey.generate().public()


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: SigningKey("pem"), TypeError, "a signing key must be an Ed25519 private key"),
        (lambda: SigningKey.from_pem(b"junk"), ValueError, "not an unencrypted PEM private key"),
        (
            lambda: SigningKey.from_pem(_encrypted_pem()),
            ValueError,
            "not an unencrypted PEM private key",
        ),
        (lambda: SigningKey.from_pem(_ec_pem()), ValueError, "not an Ed25519 private key"),
        (lambda: VerificationKey(7), ValueError, "a verification key must be a k4.public PASERK"),
        (
            lambda: VerificationKey("k2.public.AAAA"),
            ValueError,
            "a verification key must be a k4.public PASERK",
        ),
        (lambda: VerificationKey("k4.public.AAAA"), ValueError, "not a valid k4.public PASERK"),
        (
            lambda: VerificationKey.from_paserk("k4.pid.other", _A.paserk),
            ValueError,
            "kid does not match the key's PASERK id",
        ),
        (lambda: KeySet([_A.paserk]), TypeError, "a KeySet holds VerificationKey objects"),
        (lambda: KeySet([_A, VerificationKey(_A.paserk)]), ValueError, "duplicate kid in KeySet"),
        (lambda: KeySet(iter(())), ValueError, "a KeySet needs at least one key"),
    ],
)
def test_key_errors_say_what_is_wrong_without_quoting_the_input(
    build: Callable[[], object], error: type[Exception], message: str
) -> None:
    # The operator's only diagnostic when the node's keys do not load; it must
    # never quote the input, which may be key material.
    with pytest.raises(error) as caught:
        build()
    assert str(caught.value) == message
    assert caught.value.__cause__ is None


def test_keyset_repr_lists_the_kids_in_order_and_nothing_else() -> None:
    a, b = SigningKey.generate().public(), SigningKey.generate().public()
    assert repr(KeySet([a, b])) == f"KeySet(kids={sorted([a.kid, b.kid])!r})"
    assert a.paserk not in repr(KeySet([a]))


def test_published_key_set_round_trip_is_exact() -> None:
    a, b = SigningKey.generate().public(), SigningKey.generate().public()
    text = keyset_to_json([a, b])
    assert json.loads(text) == {
        "keys": [{"kid": a.kid, "paserk": a.to_paserk()}, {"kid": b.kid, "paserk": b.to_paserk()}]
    }
    assert text.startswith('{\n  "keys": [\n')  # indented for people who read it
    loaded = keyset_from_json(text)
    assert [k.kid for k in loaded] == [a.kid, b.kid]
    assert loaded.get(a.kid) == a and loaded.get(b.kid) == b


def test_a_published_key_whose_kid_is_not_its_own_is_refused() -> None:
    a, b = SigningKey.generate().public(), SigningKey.generate().public()
    forged = json.dumps({"keys": [{"kid": b.kid, "paserk": a.to_paserk()}]})
    with pytest.raises(ValueError):
        keyset_from_json(forged)
    with pytest.raises(ValueError):
        keyset_from_json('{"keys": []}')


def test_published_lifetimes_round_trip_and_limit_acceptance() -> None:
    a, b = SigningKey.generate().public(), SigningKey.generate().public()
    text = published_to_json([PublishedKey(a, 10, 20), PublishedKey(b, 20)])
    assert json.loads(text)["keys"][0] == {
        "kid": a.kid,
        "paserk": a.to_paserk(),
        "created_at": 10,
        "retired_at": 20,
    }
    old, new = published_from_json(text)
    assert (old.key, old.created_at, old.retired_at) == (a, 10, 20)
    assert (new.key, new.retired_at) == (b, None)
    assert old.accepted_at(29.9, 10) and not old.accepted_at(30, 10)
    assert new.accepted_at(10**12, 10)  # the signing key never lapses
    assert [k.kid for k in keyset_from_json(text)] == [a.kid, b.kid]


@pytest.mark.parametrize("value", ["20", 2.5, True])
def test_a_published_lifetime_must_be_whole_seconds(value: object) -> None:
    a = SigningKey.generate().public()
    text = json.dumps({"keys": [{"kid": a.kid, "paserk": a.paserk, "retired_at": value}]})
    with pytest.raises(ValueError):
        published_from_json(text)

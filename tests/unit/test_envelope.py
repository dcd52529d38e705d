import dataclasses

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto import (
    ENVELOPE_V1,
    RecordContext,
    dek_associated_data,
    lookup_value_id,
    new_data_key,
    open_fields,
    open_lookup_value,
    seal_fields,
    seal_lookup_value,
)
from vault.errors import DecryptionFailed

CTX = RecordContext("de_rec_a", "de_sub_a", "de", "user.contact.email", 3)
FIELDS = {"address": "ada@example.org", "label": "wörk"}


def test_round_trip() -> None:
    dek = new_data_key()
    env = seal_fields(dek, CTX, FIELDS)
    assert env[0] == 0x01
    assert open_fields(dek, CTX, env) == FIELDS


def test_nonce_is_fresh_per_seal() -> None:
    dek = new_data_key()
    assert seal_fields(dek, CTX, FIELDS) != seal_fields(dek, CTX, FIELDS)


def test_every_single_byte_flip_is_detected() -> None:
    dek = new_data_key()
    env = seal_fields(dek, CTX, FIELDS)
    for i in range(len(env)):
        for bit in (0x01, 0x80):
            bad = bytearray(env)
            bad[i] ^= bit
            with pytest.raises(DecryptionFailed) as e:
                open_fields(dek, CTX, bytes(bad))
            assert str(e.value) == "stored data could not be decrypted"


@pytest.mark.parametrize("n", [0, 1, 12, 13, 28])
def test_truncated_envelopes_fail(n: int) -> None:
    dek = new_data_key()
    env = seal_fields(dek, CTX, FIELDS)
    with pytest.raises(DecryptionFailed):
        open_fields(dek, CTX, env[:n])


@pytest.mark.parametrize(
    "change",
    [
        {"record_id": "de_rec_b"},
        {"subject_id": "de_sub_b"},
        {"region": "us"},
        {"category": "user.name"},
        {"version": 4},
    ],
)
def test_associated_data_binds_every_context_field(change: dict[str, object]) -> None:
    dek = new_data_key()
    env = seal_fields(dek, CTX, FIELDS)
    with pytest.raises(DecryptionFailed):
        open_fields(dek, dataclasses.replace(CTX, **change), env)  # type: ignore[arg-type]


def test_length_prefixing_prevents_boundary_shifts() -> None:
    a = RecordContext("ab", "c", "de", "x", 1)
    b = RecordContext("a", "bc", "de", "x", 1)
    assert a.associated_data() != b.associated_data()


def test_wrong_key_fails() -> None:
    env = seal_fields(new_data_key(), CTX, FIELDS)
    with pytest.raises(DecryptionFailed):
        open_fields(new_data_key(), CTX, env)


def test_unknown_format_version_fails() -> None:
    dek = new_data_key()
    env = bytearray(seal_fields(dek, CTX, FIELDS))
    env[0] = 0x02
    with pytest.raises(DecryptionFailed):
        open_fields(dek, CTX, bytes(env))


# --- the documented format, checked by an independent implementation ---------------

DEK = bytes(range(32))


def documented_aad(ctx: RecordContext) -> bytes:
    """The record AAD exactly as the module docstring spells it."""
    out = b"pdvault/record/v1"
    for s in (ctx.record_id, ctx.subject_id, ctx.region, ctx.category):
        b = s.encode("utf-8")
        out += len(b).to_bytes(4, "big") + b
    return out + ctx.version.to_bytes(8, "big", signed=True)


def test_associated_data_known_answer() -> None:
    ctx = RecordContext("de_rec_é", "de_sub_a", "de", "user.name", 258)
    assert ctx.associated_data() == (
        b"pdvault/record/v1"
        + b"\x00\x00\x00\x09de_rec_\xc3\xa9"  # length in bytes, not characters
        + b"\x00\x00\x00\x08de_sub_a"
        + b"\x00\x00\x00\x02de"
        + b"\x00\x00\x00\x09user.name"
        + b"\x00\x00\x00\x00\x00\x00\x01\x02"
    )
    assert CTX.associated_data() == documented_aad(CTX)


def test_sealed_envelope_has_the_documented_layout_and_canonical_plaintext() -> None:
    # Keys in non-sorted order and a non-ASCII value: the plaintext must still be
    # canonical JSON (sorted keys, no whitespace, UTF-8 rather than \u escapes).
    fields = {"label": "wörk", "address": "ada@example.org"}
    env = seal_fields(DEK, CTX, fields)
    assert env[0] == ENVELOPE_V1 == 0x01
    nonce, body = env[1:13], env[13:]
    plaintext = AESGCM(DEK).decrypt(nonce, body, documented_aad(CTX))
    assert plaintext == '{"address":"ada@example.org","label":"wörk"}'.encode()
    assert len(env) == 1 + 12 + len(plaintext) + 16


def test_open_reads_an_envelope_built_to_the_documented_format() -> None:
    nonce = b"\x07" * 12
    plaintext = '{"address":"ada@example.org","label":"wörk"}'.encode()
    env = b"\x01" + nonce + AESGCM(DEK).encrypt(nonce, plaintext, documented_aad(CTX))
    assert open_fields(DEK, CTX, env) == FIELDS


@pytest.mark.parametrize("dek_len", [16, 24, 31, 33])
def test_a_data_key_of_another_length_never_opens(dek_len: int) -> None:
    # AESGCM itself would open under an AES-128/192 key, and raise ValueError for
    # other lengths; the envelope insists on AES-256 and has one opaque error.
    dek = (DEK * 2)[:dek_len]
    sealing_key = dek if dek_len in (16, 24) else DEK
    nonce = b"\x07" * 12
    env = b"\x01" + nonce + AESGCM(sealing_key).encrypt(nonce, b"{}", documented_aad(CTX))
    with pytest.raises(DecryptionFailed):
        open_fields(dek, CTX, env)


@pytest.mark.parametrize("plaintext", [b"[]", b'"x"', b"not json", b"\xff"])
def test_authentic_plaintext_that_is_not_a_json_object_is_the_opaque_error(
    plaintext: bytes,
) -> None:
    nonce = b"\x07" * 12
    env = b"\x01" + nonce + AESGCM(DEK).encrypt(nonce, plaintext, documented_aad(CTX))
    with pytest.raises(DecryptionFailed) as e:
        open_fields(DEK, CTX, env)
    assert e.value.__cause__ is None
    assert str(e.value) == "stored data could not be decrypted"


def test_dek_associated_data_known_answer() -> None:
    assert dek_associated_data("de_sub_a", "de") == b"pdvault/dek/v1|de|de_sub_a"
    assert dek_associated_data("de_sub_a", "us") != dek_associated_data("de_sub_a", "de")
    assert dek_associated_data("de_sub_b", "de") != dek_associated_data("de_sub_a", "de")


def test_a_sealed_lookup_value_opens_only_where_it_belongs() -> None:
    dek, other = new_data_key(), new_data_key()
    sealed = seal_lookup_value(dek, "de_sub_a", "de", "email", "ada@example.org")
    assert b"ada@example.org" not in sealed
    assert open_lookup_value(dek, "de_sub_a", "de", "email", sealed) == "ada@example.org"
    # Sealing twice gives two envelopes (random nonce); the value's id is stable.
    assert seal_lookup_value(dek, "de_sub_a", "de", "email", "ada@example.org") != sealed
    assert lookup_value_id(dek, "email", "ada@example.org") == lookup_value_id(
        dek, "email", "ada@example.org"
    )
    assert lookup_value_id(dek, "email", "ada@example.org") != lookup_value_id(
        other, "email", "ada@example.org"
    )
    assert lookup_value_id(dek, "email", "x") != lookup_value_id(dek, "phone", "x")
    wrong = [
        (other, "de_sub_a", "de", "email", sealed),  # another subject's key
        (dek, "de_sub_b", "de", "email", sealed),  # copied to another subject
        (dek, "de_sub_a", "us", "email", sealed),  # another region
        (dek, "de_sub_a", "de", "phone", sealed),  # another kind
        (dek, "de_sub_a", "de", "email", sealed[:-1] + bytes([sealed[-1] ^ 1])),  # altered
        (dek, "de_sub_a", "de", "email", b"\x02" + sealed[1:]),  # unknown format
        (dek, "de_sub_a", "de", "email", sealed[:20]),  # truncated
    ]
    for args in wrong:
        with pytest.raises(DecryptionFailed):
            open_lookup_value(*args)


def test_a_sealed_subject_secret_opens_only_where_it_was_sealed() -> None:
    from vault.crypto import PSEUDONYM_SEAL, open_subject_secret, seal_subject_secret

    dek, other = b"\x01" * 32, b"\x02" * 32
    sealed = seal_subject_secret(dek, PSEUDONYM_SEAL, "de_sub_a", "de", 2, b"k" * 32)
    assert open_subject_secret(dek, PSEUDONYM_SEAL, "de_sub_a", "de", 2, sealed) == b"k" * 32
    for args in (
        (other, PSEUDONYM_SEAL, "de_sub_a", "de", 2),  # another data key (the old one)
        (dek, "lookup-value", "de_sub_a", "de", 2),  # sealed as something else
        (dek, PSEUDONYM_SEAL, "de_sub_b", "de", 2),  # moved to another subject
        (dek, PSEUDONYM_SEAL, "de_sub_a", "us", 2),  # or region
        (dek, PSEUDONYM_SEAL, "de_sub_a", "de", 1),  # or generation
    ):
        with pytest.raises(DecryptionFailed):
            open_subject_secret(*args, sealed)  # type: ignore[arg-type]
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        open_subject_secret(dek, PSEUDONYM_SEAL, "de_sub_a", "de", 2, flipped)

import dataclasses

import pytest

from vault.crypto import RecordContext, new_data_key, open_fields, seal_fields
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

"""The ancestry claim and the issuer check: every refusal with its exact message."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.factories import NOW, make_claims
from vault.errors import AccessDenied, Unauthenticated
from vault.tokens import MAX_EXCHANGE_DEPTH, KeySet, SigningKey, decode, issue, narrow

PARENT = "p" * 22


def _ids(n: int) -> tuple[str, ...]:
    return tuple(f"{i:02d}" + "a" * 20 for i in range(n))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"parent_jti": PARENT, "ancestors": ["a" * 22]}, "ancestors: must be a tuple"),
        ({"ancestors": ("a" * 22,)}, "ancestors: only an exchanged token has ancestors"),
        (
            {"parent_jti": PARENT, "ancestors": _ids(MAX_EXCHANGE_DEPTH)},
            "ancestors: the token is exchanged too many times",
        ),
        ({"parent_jti": PARENT, "ancestors": ("not a jti!",)}, "ancestors: is not well-formed"),
        ({"parent_jti": PARENT, "ancestors": ("a" * 65,)}, "ancestors: is not well-formed"),
        ({"parent_jti": PARENT, "ancestors": (1,)}, "ancestors: must be a string"),
        (
            {"parent_jti": PARENT, "ancestors": ("a" * 22, "a" * 22)},
            "ancestors: must not repeat a token id",
        ),
        (
            {"parent_jti": PARENT, "ancestors": (PARENT,)},
            "ancestors: must not repeat a token id",
        ),
    ],
)
def test_malformed_ancestry_is_refused_with_its_message(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as e:
        make_claims(**overrides)
    assert str(e.value) == message


def test_the_longest_ancestry_and_the_longest_id_are_accepted() -> None:
    c = make_claims(parent_jti=PARENT, ancestors=_ids(MAX_EXCHANGE_DEPTH - 1))
    assert c.ancestry == (*_ids(MAX_EXCHANGE_DEPTH - 1), PARENT)
    assert make_claims(parent_jti=PARENT, ancestors=("a" * 64,)).ancestors == ("a" * 64,)


@pytest.mark.parametrize("value", [[], "a" * 22, [1], {"a": 1}])
def test_a_payload_ancestry_must_be_a_non_empty_list_of_ids(value: object) -> None:
    payload = make_claims(parent_jti=PARENT, ancestors=("a" * 22,)).to_payload()
    payload["ancestors"] = value
    with pytest.raises(Unauthenticated) as e:
        type(make_claims()).from_payload(payload)
    assert e.value.reason == "MALFORMED_CLAIMS"
    assert e.value.message == (
        "token claims are malformed (ancestors: must be a non-empty list of token ids)"
    )


def test_exchange_depth_is_capped_with_its_message() -> None:
    deep = make_claims(
        subjects=None, parent_jti=PARENT, ancestors=_ids(MAX_EXCHANGE_DEPTH - 1), now=NOW
    )
    with pytest.raises(AccessDenied) as e:
        narrow(deep, now=NOW)
    assert (e.value.reason, e.value.message) == (
        "EXCHANGE_TOO_DEEP",
        f"a token may be exchanged at most {MAX_EXCHANGE_DEPTH} times in a row",
    )


def test_decode_refuses_another_issuer_with_its_message() -> None:
    key = SigningKey.generate()
    now = time.time()
    token = issue(make_claims(iss="someone-else", now=now), key)
    with pytest.raises(Unauthenticated) as e:
        decode(token, KeySet([key.public()]), now=now)
    assert (e.value.reason, e.value.message) == (
        "WRONG_ISSUER",
        "the token was issued by someone else",
    )
    mine = issue(make_claims(now=now), key)
    assert decode(mine, KeySet([key.public()]), now=now).iss == make_claims().iss
    # A verifier configured for another issuer refuses this vault's tokens.
    with pytest.raises(Unauthenticated) as e:
        decode(mine, KeySet([key.public()]), now=now, issuer="another-vault")
    assert e.value.reason == "WRONG_ISSUER"

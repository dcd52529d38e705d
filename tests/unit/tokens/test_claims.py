from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest

from tests.factories import NOW, SUBJECT, make_claims
from vault.errors import AccessDenied, Unauthenticated
from vault.tokens import MAX_EXCHANGE_DEPTH, Claims, new_jti

OTHER_SUBJECT = "us_sub_" + "b" * 26


def test_payload_shape() -> None:
    payload = make_claims().to_payload()
    assert payload == {
        "iss": "pdvault",
        "sub": "crm-backend",
        "aud": "pdvault",
        "purpose": "essential.service",
        "categories": {"user.contact.email": "*", "user.name": ["first", "last"]},
        "operations": ["read", "write"],
        "regions": ["de", "us"],
        "subjects": [SUBJECT],
        "transfer_basis": "scc",
        "iat": "2025-06-15T15:06:40+00:00",
        "nbf": "2025-06-15T15:06:40+00:00",
        "exp": "2025-06-15T15:11:40+00:00",
        "jti": "j" * 22,
    }
    json.dumps(payload)  # JSON-compatible


@pytest.mark.parametrize(
    "claims",
    [
        make_claims(),
        make_claims(subjects=None, transfer_basis=None),
        make_claims(parent_jti="p" * 22, categories={}),
        make_claims(parent_jti="p" * 22, ancestors=("a" * 22, "b" * 22)),
    ],
)
def test_payload_round_trip(claims: Claims) -> None:
    payload = json.loads(json.dumps(claims.to_payload()))
    assert Claims.from_payload(payload) == claims


def test_optional_claims_are_absent_when_unset() -> None:
    payload = make_claims(transfer_basis=None).to_payload()
    assert "transfer_basis" not in payload
    assert "parent_jti" not in payload
    assert make_claims(subjects=None).to_payload()["subjects"] == "*"


def test_categories_are_read_only() -> None:
    claims = make_claims()
    with pytest.raises(TypeError):
        claims.categories["user.extra"] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        claims.jti = "x" * 22  # type: ignore[misc]


def _mutated(**changes: Any) -> dict[str, Any]:
    payload = make_claims().to_payload()
    for key, value in changes.items():
        if value is _DELETE:
            del payload[key]
        else:
            payload[key] = value
    return payload


_DELETE = object()


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (None, "payload: must be a JSON object"),
        ([], "payload: must be a JSON object"),
        ("claims", "payload: must be a JSON object"),
        (_mutated(iss=_DELETE), "payload: a required claim is missing"),
        (_mutated(subjects=_DELETE), "payload: a required claim is missing"),
        (_mutated(exp=_DELETE), "payload: a required claim is missing"),
        (_mutated(jti=_DELETE), "payload: a required claim is missing"),
        (_mutated(extra="x"), "payload: holds an unknown claim"),
        (_mutated(iss=1), "iss: must be a string"),
        (_mutated(sub=""), "sub: is not well-formed"),
        (_mutated(sub="has space"), "sub: is not well-formed"),
        (_mutated(purpose="Not.Taxonomy"), "purpose: is not well-formed"),
        (_mutated(operations=["read", "frobnicate"]), "operations: names an unknown operation"),
        (_mutated(operations=[]), "operations: must not be empty"),
        (_mutated(operations="read"), "operations: must be a list of strings"),
        (_mutated(operations=["read", "read"]), "operations: holds duplicates"),
        (_mutated(regions=["de", "xx"]), "regions: names an unknown region"),
        (_mutated(regions=[]), "regions: must not be empty"),
        (_mutated(subjects=[]), "subjects: must not be empty"),
        (_mutated(subjects=None), "subjects: must be a list of strings"),
        (_mutated(subjects=["not-a-subject-id"]), "subjects: holds a malformed subject id"),
        (_mutated(subjects=["de_rec_" + "a" * 26]), "subjects: holds a malformed subject id"),
        (_mutated(categories=[]), "categories: must be an object"),
        (_mutated(categories={"user.name": []}), "categories: must not be empty"),
        (_mutated(categories={"user.name": "first"}), "categories: must be a list of strings"),
        (_mutated(categories={"user.name": None}), "categories: must be a list of strings"),
        (_mutated(categories={"user.name": [1]}), "categories: must be a list of strings"),
        (_mutated(categories={"User Name": "*"}), "categories: is not well-formed"),
        (_mutated(categories={"user.name": ["bad field"]}), "categories: is not well-formed"),
        (_mutated(transfer_basis="whatever"), "transfer_basis: is not a known transfer basis"),
        (_mutated(transfer_basis=None), "transfer_basis: must be absent rather than null"),
        (_mutated(transfer_basis=["scc"]), "transfer_basis: is not a known transfer basis"),
        (_mutated(parent_jti=None), "parent_jti: must be absent rather than null"),
        (_mutated(parent_jti="short"), "parent_jti: is not well-formed"),
        (_mutated(jti="short"), "jti: is not well-formed"),
        (_mutated(jti=12345678901234567890), "jti: must be a string"),
        (_mutated(exp=1_750_000_300), "exp: must be an RFC 3339 date-time"),
        (_mutated(exp="2025-06-15 15:11:40+00:00"), "exp: must be an RFC 3339 date-time"),
        (_mutated(exp="2025-06-15T15:11:40"), "exp: must be an RFC 3339 date-time"),
        (_mutated(exp="2025-06-15T15:11:40.5+00:00"), "exp: must be an RFC 3339 date-time"),
        (_mutated(exp="2025-13-15T15:11:40+00:00"), "exp: must be an RFC 3339 date-time"),
        (_mutated(exp="0001-01-01T00:00:00+01:00"), "exp: is out of range"),
        # exp == nbf, nbf > exp, iat > nbf
        (_mutated(exp="2025-06-15T15:06:40+00:00"), "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        (_mutated(nbf="2025-06-15T15:20:00+00:00"), "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        (_mutated(iat="2025-06-15T15:08:00+00:00"), "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        (_mutated(iat="yesterday"), "iat: must be an RFC 3339 date-time"),
        (_mutated(nbf=None), "nbf: must be an RFC 3339 date-time"),
        (_mutated(aud=["pdvault"]), "aud: must be a string"),
        (_mutated(aud="pd vault"), "aud: is not well-formed"),
        (_mutated(iss="p" * 257), "iss: is not well-formed"),
        (_mutated(sub="s" * 257), "sub: is not well-formed"),
        (_mutated(purpose=7), "purpose: must be a string"),
        (_mutated(purpose="p" * 129), "purpose: is not well-formed"),
        (_mutated(regions="de"), "regions: must be a list of strings"),
        (_mutated(regions=["de", "de"]), "regions: holds duplicates"),
        (_mutated(subjects=[SUBJECT, SUBJECT]), "subjects: holds duplicates"),
        (_mutated(categories={"user." + "n" * 124: "*"}), "categories: is not well-formed"),
        (_mutated(categories={"user.name": ["f" * 129]}), "categories: is not well-formed"),
        (_mutated(categories={"user.name": ["a", "a"]}), "categories: holds duplicates"),
        (_mutated(jti="j" * 65), "jti: is not well-formed"),
        (_mutated(parent_jti="p" * 65), "parent_jti: is not well-formed"),
        (_mutated(jti="j" * 22, parent_jti="j" * 22), "parent_jti: must differ from jti"),
    ],
)
def test_from_payload_rejects_malformed_claims(payload: object, detail: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        Claims.from_payload(payload)
    assert caught.value.reason == "MALFORMED_CLAIMS"
    # The message names the claim and the rule, never the value.
    assert caught.value.message == f"token claims are malformed ({detail})"
    assert caught.value.__cause__ is None
    for value in ("crm-backend", SUBJECT, "frobnicate", "whatever", "not-a-subject-id"):
        assert value not in caught.value.message


def test_rfc3339_with_z_and_offsets_is_accepted() -> None:
    payload = make_claims().to_payload()
    payload["exp"] = "2025-06-15T17:11:40+02:00"
    payload["nbf"] = "2025-06-15T15:06:40Z"
    claims = Claims.from_payload(payload)
    assert claims.exp == NOW + 300
    assert claims.nbf == NOW


MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"operations": frozenset({"read", "frobnicate"})},
            "operations: names an unknown operation",
        ),
        ({"operations": ["read"]}, "operations: must be a frozenset"),
        ({"regions": frozenset()}, "regions: must not be empty"),
        ({"regions": frozenset({"xx"})}, "regions: names an unknown region"),
        ({"subjects": frozenset()}, "subjects: must not be empty"),
        ({"subjects": frozenset({1})}, "subjects: must hold strings"),
        ({"subjects": frozenset({"nope"})}, "subjects: holds a malformed subject id"),
        ({"categories": [("user.name", None)]}, "categories: must be a mapping"),
        ({"categories": {"user.name": frozenset()}}, "categories: must not be empty"),
        ({"categories": {"user.name": ["first"]}}, "categories: must be a frozenset"),
        ({"categories": {"user.name": frozenset({1})}}, "categories: must be a string"),
        ({"categories": {1: None}}, "categories: must be a string"),
        ({"transfer_basis": "nope"}, "transfer_basis: is not a known transfer basis"),
        ({"transfer_basis": 1}, "transfer_basis: is not a known transfer basis"),
        ({"iss": ""}, "iss: is not well-formed"),
        ({"aud": None}, "aud: must be a string"),
        ({"exp": NOW}, "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        ({"exp": NOW - 1}, "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        ({"nbf": NOW - 1}, "iat/nbf/exp: must satisfy iat <= nbf < exp"),
        ({"iat": -1, "nbf": -1}, "iat: is out of range"),
        ({"exp": MAX_TIME + 1}, "exp: is out of range"),
        ({"exp": True}, "exp: must be whole seconds since the epoch"),
        ({"iat": NOW + 0.5}, "iat: must be whole seconds since the epoch"),
        ({"nbf": "2025-06-15T15:06:40Z"}, "nbf: must be whole seconds since the epoch"),
        ({"jti": None}, "jti: must be a string"),
        ({"parent_jti": 5}, "parent_jti: must be a string"),
    ],
)
def test_claims_are_validated_when_built(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        make_claims(**change)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "change",
    [
        {"sub": "s" * 256, "iss": "i" * 256, "aud": "a" * 256},
        {"purpose": "p" * 128},
        {"categories": {"user." + "n" * 123: None}},
        {"categories": {"user.name": frozenset({"f" * 128})}},
        {"iat": 0, "nbf": 0, "exp": 1},
        {"exp": MAX_TIME},
        {"jti": "j" * 16, "parent_jti": "p" * 64},
        {"jti": "j" * 64},
    ],
)
def test_values_at_the_limits_are_accepted(change: dict[str, Any]) -> None:
    claims = make_claims(**change)
    assert Claims.from_payload(json.loads(json.dumps(claims.to_payload()))) == claims


NEW_KWARGS: dict[str, Any] = {
    "sub": "crm-backend",
    "purpose": "essential.service",
    "categories": {"user.name": None},
    "operations": frozenset({"read"}),
    "regions": frozenset({"de"}),
    "subjects": frozenset({SUBJECT}),
    "transfer_basis": "adequacy",
    "ttl": 60,
    "now": NOW + 0.9,
}


def test_new_sets_times_and_a_random_jti() -> None:
    a, b = Claims.new(**NEW_KWARGS), Claims.new(**NEW_KWARGS)
    assert (a.iat, a.nbf, a.exp) == (NOW, NOW, NOW + 60)
    assert a.iss == a.aud == "pdvault"
    assert (a.subjects, a.transfer_basis, a.parent_jti) == (frozenset({SUBJECT}), "adequacy", None)
    assert a.jti != b.jti
    assert Claims.new(**{**NEW_KWARGS, "subjects": None, "transfer_basis": None}).subjects is None
    assert Claims.new(**{**NEW_KWARGS, "ttl": 1}).exp == NOW + 1


@pytest.mark.parametrize("ttl", [0, -1, True, 1.5, "60", None])
def test_new_refuses_a_ttl_that_is_not_a_positive_whole_number(ttl: object) -> None:
    with pytest.raises(ValueError) as caught:
        Claims.new(**{**NEW_KWARGS, "ttl": ttl})
    assert str(caught.value) == "ttl: must be a positive number of seconds"


def test_jti_is_128_random_bits_url_safe() -> None:
    jtis = {new_jti() for _ in range(50)}
    assert len(jtis) == 50
    for jti in jtis:
        assert len(jti) == 22
        assert len(base64.urlsafe_b64decode(jti + "==")) == 16


def test_allows_helpers() -> None:
    claims = make_claims()
    assert claims.allows_operation("read")
    assert not claims.allows_operation("erase")
    assert claims.allows_region("de")
    assert not claims.allows_region("cn")
    assert claims.allows_subject(SUBJECT)
    assert not claims.allows_subject(OTHER_SUBJECT)
    assert make_claims(subjects=None).allows_subject(OTHER_SUBJECT)
    assert claims.allows_field("user.name", "first")
    assert not claims.allows_field("user.name", "middle")
    assert claims.allows_field("user.contact.email", "anything")
    assert not claims.allows_field("user.device.device_id", "id")
    assert claims.allows(
        operation="read", category="user.name", field_name="last", region="us", subject_id=SUBJECT
    )
    assert not claims.allows(
        operation="erase", category="user.name", field_name="last", region="us", subject_id=SUBJECT
    )


def test_fields_for() -> None:
    claims = make_claims()
    assert claims.fields_for("user.name") == frozenset({"first", "last"})
    assert claims.fields_for("user.contact.email") is None
    with pytest.raises(AccessDenied) as caught:
        claims.fields_for("user.device.device_id")
    assert caught.value.reason == "CATEGORY_NOT_GRANTED"
    assert caught.value.message == "the token does not grant this data category"


def test_validity_period() -> None:
    claims = make_claims()
    claims.check_validity_period(NOW)
    claims.check_validity_period(NOW + 299.999)
    with pytest.raises(Unauthenticated) as caught:
        claims.check_validity_period(NOW + 300)
    assert caught.value.reason == "EXPIRED"
    with pytest.raises(Unauthenticated) as caught:
        claims.check_validity_period(NOW - 0.5)
    assert caught.value.reason == "NOT_YET_VALID"
    claims.check_validity_period(NOW - 10, nbf_leeway=10)
    with pytest.raises(Unauthenticated):
        claims.check_validity_period(NOW + 300, nbf_leeway=10_000)


# --- ancestry -----------------------------------------------------------------------

A1, A2, PARENT = "a" * 22, "b" * 22, "p" * 22


def test_an_exchanged_token_carries_its_ancestry_root_first() -> None:
    claims = make_claims(parent_jti=PARENT, ancestors=(A1, A2))
    assert claims.to_payload()["ancestors"] == [A1, A2]
    assert claims.to_payload()["parent_jti"] == PARENT
    assert claims.ancestry == (A1, A2, PARENT)
    assert claims.lineage == ("j" * 22, PARENT, A2, A1)


def test_ancestors_are_absent_unless_the_parent_was_exchanged() -> None:
    assert "ancestors" not in make_claims().to_payload()
    child_of_issued = make_claims(parent_jti=PARENT)
    assert "ancestors" not in child_of_issued.to_payload()
    assert child_of_issued.lineage == ("j" * 22, PARENT)
    assert make_claims().lineage == ("j" * 22,)
    assert make_claims().ancestry == ()


def test_a_token_from_before_the_ancestry_claim_has_its_parent_as_ancestry() -> None:
    payload = make_claims(parent_jti=PARENT).to_payload()
    assert "ancestors" not in payload  # what a token signed before the claim looks like
    assert Claims.from_payload(payload).lineage == ("j" * 22, PARENT)


def _with_parent(**changes: Any) -> dict[str, Any]:
    return _mutated(parent_jti=PARENT, **changes)


@pytest.mark.parametrize(
    "payload",
    [
        _with_parent(ancestors=None),
        _with_parent(ancestors=[]),
        _with_parent(ancestors=A1),
        _with_parent(ancestors={"0": A1}),
        _with_parent(ancestors=[1]),
        _with_parent(ancestors=[None]),
        _with_parent(ancestors=["short"]),
        _with_parent(ancestors=["has space" + "x" * 16]),
        _with_parent(ancestors=[A1, A1]),
        _with_parent(ancestors=[A1, PARENT]),
        _with_parent(ancestors=[A1, "j" * 22]),
        _with_parent(ancestors=[f"{i:02d}" * 11 for i in range(MAX_EXCHANGE_DEPTH)]),
        _mutated(ancestors=[A1]),  # ancestors without a parent
    ],
    ids=[
        "null",
        "empty",
        "string",
        "object",
        "number",
        "null-entry",
        "short-id",
        "bad-id",
        "repeated",
        "names-the-parent",
        "names-itself",
        "too-deep",
        "without-parent",
    ],
)
def test_malformed_ancestry_is_refused(payload: dict[str, Any]) -> None:
    with pytest.raises(Unauthenticated) as caught:
        Claims.from_payload(payload)
    assert caught.value.reason == "MALFORMED_CLAIMS"
    assert A1 not in caught.value.message and PARENT not in caught.value.message


def test_the_deepest_allowed_ancestry_is_accepted() -> None:
    ancestors = [f"{i:02d}" * 11 for i in range(MAX_EXCHANGE_DEPTH - 1)]
    claims = Claims.from_payload(_with_parent(ancestors=ancestors))
    assert len(claims.ancestry) == MAX_EXCHANGE_DEPTH


@pytest.mark.parametrize(
    "change",
    [
        {"ancestors": (A1,)},  # without a parent
        {"parent_jti": PARENT, "ancestors": [A1]},  # not a tuple
        {"parent_jti": PARENT, "ancestors": (A1, A1)},
        {"parent_jti": PARENT, "ancestors": ("short",)},
    ],
)
def test_ancestry_is_validated_when_built(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_claims(**change)

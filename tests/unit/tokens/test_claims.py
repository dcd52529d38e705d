from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from tests.factories import NOW, SUBJECT, make_claims
from vault.errors import AccessDenied, Unauthenticated
from vault.tokens import MAX_EXCHANGE_DEPTH, Claims

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
    "payload",
    [
        None,
        [],
        "claims",
        _mutated(iss=_DELETE),
        _mutated(subjects=_DELETE),
        _mutated(exp=_DELETE),
        _mutated(jti=_DELETE),
        _mutated(extra="x"),
        _mutated(iss=1),
        _mutated(sub=""),
        _mutated(sub="has space"),
        _mutated(purpose="Not.Taxonomy"),
        _mutated(operations=["read", "frobnicate"]),
        _mutated(operations=[]),
        _mutated(operations="read"),
        _mutated(operations=["read", "read"]),
        _mutated(regions=["de", "xx"]),
        _mutated(regions=[]),
        _mutated(subjects=[]),
        _mutated(subjects=None),
        _mutated(subjects=["not-a-subject-id"]),
        _mutated(subjects=["de_rec_" + "a" * 26]),
        _mutated(categories=[]),
        _mutated(categories={"user.name": []}),
        _mutated(categories={"user.name": "first"}),
        _mutated(categories={"user.name": None}),
        _mutated(categories={"user.name": [1]}),
        _mutated(categories={"User Name": "*"}),
        _mutated(categories={"user.name": ["bad field"]}),
        _mutated(transfer_basis="whatever"),
        _mutated(transfer_basis=None),
        _mutated(transfer_basis=["scc"]),
        _mutated(parent_jti=None),
        _mutated(parent_jti="short"),
        _mutated(jti="short"),
        _mutated(jti=12345678901234567890),
        _mutated(exp=1_750_000_300),
        _mutated(exp="2025-06-15 15:11:40+00:00"),
        _mutated(exp="2025-06-15T15:11:40"),
        _mutated(exp="2025-06-15T15:11:40.5+00:00"),
        _mutated(exp="2025-13-15T15:11:40+00:00"),
        _mutated(exp="0001-01-01T00:00:00+01:00"),
        _mutated(exp="2025-06-15T15:06:40+00:00"),  # exp == nbf
        _mutated(nbf="2025-06-15T15:20:00+00:00"),  # nbf > exp
        _mutated(iat="2025-06-15T15:08:00+00:00"),  # iat > nbf
        _mutated(jti="j" * 22, parent_jti="j" * 22),
    ],
)
def test_from_payload_rejects_malformed_claims(payload: object) -> None:
    with pytest.raises(Unauthenticated) as caught:
        Claims.from_payload(payload)
    assert caught.value.reason == "MALFORMED_CLAIMS"
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


@pytest.mark.parametrize(
    "change",
    [
        {"operations": frozenset({"read", "frobnicate"})},
        {"regions": frozenset()},
        {"subjects": frozenset()},
        {"categories": {"user.name": frozenset()}},
        {"transfer_basis": "nope"},
        {"exp": NOW},
        {"exp": NOW - 1},
        {"nbf": NOW - 1},
        {"iat": -1, "nbf": -1},
        {"exp": True},
    ],
)
def test_claims_are_validated_when_built(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_claims(**change)


def test_new_sets_times_and_a_random_jti() -> None:
    kwargs: dict[str, Any] = {
        "sub": "crm-backend",
        "purpose": "essential.service",
        "categories": {"user.name": None},
        "operations": frozenset({"read"}),
        "regions": frozenset({"de"}),
        "subjects": None,
        "ttl": 60,
        "now": NOW + 0.9,
    }
    a, b = Claims.new(**kwargs), Claims.new(**kwargs)
    assert (a.iat, a.nbf, a.exp) == (NOW, NOW, NOW + 60)
    assert a.iss == a.aud == "pdvault"
    assert a.jti != b.jti
    with pytest.raises(ValueError):
        Claims.new(**{**kwargs, "ttl": 0})


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
    assert "user.device" not in caught.value.message


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

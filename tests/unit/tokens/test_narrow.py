from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.factories import NOW, make_claims
from vault.errors import AccessDenied, FieldViolation, InvalidArgument
from vault.tokens import MAX_EXCHANGE_DEPTH, OPERATIONS, REGIONS, Claims, is_narrowing, narrow

S1, S2, S3 = ("de_sub_" + c * 26 for c in "abc")
SUBJECTS = (S1, S2, S3, "us_sub_" + "d" * 26)
CATEGORIES = ("user.name", "user.contact.email", "user.device.device_id", "user.financial")
FIELDS = ("first", "last", "email", "id", "iban")


def make_parent(**overrides: Any) -> Claims:
    """The parent of the exchanges: two subjects, one hour."""
    return make_claims(**{"subjects": frozenset({S1, S2}), "jti": "p" * 22, **overrides}, ttl=3600)


def widens(**request: Any) -> str:
    with pytest.raises(AccessDenied) as caught:
        narrow(make_parent(), now=NOW + 10, **request)
    assert caught.value.reason == "EXCHANGE_WIDENS"
    return caught.value.message


# --- examples -------------------------------------------------------------------


def test_no_request_keeps_everything_but_links_and_renews_the_id() -> None:
    parent = make_parent()
    child = narrow(parent, now=NOW + 10)
    assert child.parent_jti == parent.jti
    assert child.jti != parent.jti
    assert child.categories == parent.categories
    assert (child.operations, child.regions, child.subjects) == (
        parent.operations,
        parent.regions,
        parent.subjects,
    )
    assert (child.iss, child.sub, child.aud, child.purpose, child.transfer_basis) == (
        parent.iss,
        parent.sub,
        parent.aud,
        parent.purpose,
        parent.transfer_basis,
    )
    assert (child.iat, child.nbf, child.exp) == (NOW + 10, NOW + 10, parent.exp)
    assert is_narrowing(parent, child)


def test_every_dimension_can_narrow() -> None:
    parent = make_parent()
    child = narrow(
        parent,
        categories=["user.name", "user.contact.email"],
        fields={"user.name": ["first"], "user.contact.email": ["email"]},
        operations=["read"],
        regions=["de"],
        subjects=[S1],
        ttl=60,
        now=NOW + 10.7,
    )
    assert dict(child.categories) == {
        "user.name": frozenset({"first"}),
        "user.contact.email": frozenset({"email"}),
    }
    assert child.operations == frozenset({"read"})
    assert child.regions == frozenset({"de"})
    assert child.subjects == frozenset({S1})
    assert child.exp == NOW + 70
    assert is_narrowing(parent, child)


def test_dropping_categories() -> None:
    child = narrow(make_parent(), categories=["user.contact.email"], now=NOW)
    assert dict(child.categories) == {"user.contact.email": None}
    assert dict(narrow(make_parent(), categories=[], now=NOW).categories) == {}


def test_ttl_never_outlives_the_parent() -> None:
    with pytest.raises(AccessDenied) as e:
        narrow(make_parent(), ttl=10**6, now=NOW + 10)
    assert e.value.reason == "EXCHANGE_WIDENS"
    assert narrow(make_parent(), ttl=3590, now=NOW + 10).exp == NOW + 3600
    assert narrow(make_parent(), ttl=60, now=NOW + 10).exp == NOW + 70


def test_child_never_starts_before_the_parent() -> None:
    parent = make_parent(iat=NOW, nbf=NOW + 100)
    child = narrow(parent, now=NOW + 50)
    assert child.nbf == NOW + 100
    assert child.iat == NOW + 50


def test_any_subject_parent_may_be_narrowed_to_any_set() -> None:
    parent = make_parent(subjects=None)
    child = narrow(parent, subjects=[S3], now=NOW)
    assert child.subjects == frozenset({S3})
    assert narrow(parent, now=NOW).subjects is None
    assert is_narrowing(parent, child)


@pytest.mark.parametrize(
    ("request_", "dimension"),
    [
        ({"categories": ["user.name", "user.financial"]}, "categories"),
        ({"fields": {"user.financial": ["iban"]}}, "categories"),
        ({"fields": {"user.name": ["first", "middle"]}}, "fields"),
        ({"operations": ["read", "erase"]}, "operations"),
        ({"operations": ["frobnicate"]}, "operations"),
        ({"regions": ["de", "cn"]}, "regions"),
        ({"subjects": [S1, S3]}, "subjects"),
        ({"ttl": 3600}, "ttl"),  # 10 s of the parent's life are gone
    ],
)
def test_each_widening_dimension_is_refused(request_: dict[str, Any], dimension: str) -> None:
    # The message names the dimension, never the values asked for.
    assert widens(**request_) == f"the exchange would widen the token's {dimension}"


def test_exchange_of_an_expired_parent_is_refused() -> None:
    with pytest.raises(AccessDenied) as caught:
        narrow(make_parent(), now=NOW + 3600)
    assert caught.value.reason == "EXCHANGE_EXPIRED"
    assert caught.value.message == "the parent token has no lifetime left to hand on"


@pytest.mark.parametrize(
    ("request_", "field", "description"),
    [
        ({"operations": []}, "operations", "must not be empty"),
        ({"regions": []}, "regions", "must not be empty"),
        ({"subjects": []}, "subjects", "must not be empty"),
        ({"fields": {"user.name": []}}, "fields", "must not be empty"),
        ({"operations": "read"}, "operations", "must be a collection of names"),
        ({"categories": "user.name"}, "categories", "must be a collection of names"),
        ({"regions": b"de"}, "regions", "must be a collection of names"),
        ({"subjects": S1}, "subjects", "must be a collection of names"),
        ({"fields": {"user.name": "first"}}, "fields", "must be a collection of names"),
        ({"operations": [1]}, "operations", "must hold only strings"),
        ({"categories": [None]}, "categories", "must hold only strings"),
        ({"regions": ["de", 1]}, "regions", "must hold only strings"),
        ({"subjects": [S1, None]}, "subjects", "must hold only strings"),
        ({"fields": {"user.name": [b"first"]}}, "fields", "must hold only strings"),
        ({"ttl": 0}, "ttl", "must be a positive number of seconds"),
        ({"ttl": -5}, "ttl", "must be a positive number of seconds"),
        ({"ttl": True}, "ttl", "must be a positive number of seconds"),
        ({"ttl": 1.5}, "ttl", "must be a positive number of seconds"),
        ({"fields": [("user.name", ["first"])]}, "fields", "must map categories to field names"),
        (
            {"categories": ["user.name"], "fields": {"user.contact.email": ["email"]}},
            "fields",
            "names a category that is not requested",
        ),
        (
            {"fields": {"user.contact.email": ["not a field"]}},
            "request",
            "categories: is not well-formed",
        ),
    ],
)
def test_malformed_requests(request_: dict[str, Any], field: str, description: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        narrow(make_parent(), now=NOW, **request_)
    assert caught.value.violations == [FieldViolation(field, description)]


def test_malformed_subject_for_an_any_subject_parent() -> None:
    with pytest.raises(InvalidArgument) as caught:
        narrow(make_parent(subjects=None), subjects=["not-an-id"], now=NOW)
    assert caught.value.violations == [
        FieldViolation("request", "subjects: holds a malformed subject id")
    ]


def test_an_empty_category_list_is_a_valid_request() -> None:
    # Unlike every other set: a token for no category may still record consent.
    assert dict(narrow(make_parent(), categories=(), now=NOW).categories) == {}


def _child() -> Claims:
    return narrow(make_parent(), now=NOW + 10, ttl=60)


@pytest.mark.parametrize(
    "change",
    [
        {"categories": {"user.name": frozenset({"first", "last"}), "user.financial": None}},
        {"categories": {"user.name": None}},
        {"categories": {"user.name": frozenset({"first", "middle"})}},
        {"operations": frozenset({"read", "erase"})},
        {"regions": frozenset({"cn"})},
        {"subjects": None},
        {"subjects": frozenset({S3})},
        {"exp": NOW + 3601},
        {"iat": NOW - 1, "nbf": NOW - 1},
        {"purpose": "marketing.communications.email"},
        {"sub": "someone-else"},
        {"iss": "other"},
        {"aud": "other"},
        {"transfer_basis": "consent"},
        {"transfer_basis": None},
        {"parent_jti": "x" * 22},
        {"parent_jti": None},
        {"ancestors": ("x" * 22,)},
    ],
)
def test_is_narrowing_spots_every_widening(change: dict[str, Any]) -> None:
    parent, child = make_parent(), _child()
    assert is_narrowing(parent, child)
    assert not is_narrowing(parent, dataclasses.replace(child, **change))


def test_is_narrowing_checks_every_category_after_an_all_fields_one() -> None:
    parent, child = make_parent(), _child()
    wider = dataclasses.replace(
        child, categories={"user.contact.email": None, "user.name": frozenset({"first", "middle"})}
    )
    assert next(iter(wider.categories)) == "user.contact.email"  # the all-fields grant first
    assert not is_narrowing(parent, wider)
    assert is_narrowing(
        parent,
        dataclasses.replace(
            child, categories={"user.contact.email": None, "user.name": frozenset({"first"})}
        ),
    )


def test_is_narrowing_rejects_the_parent_itself() -> None:
    parent = make_parent()
    assert not is_narrowing(parent, parent)


# --- ancestry ----------------------------------------------------------------------


def test_narrowing_keeps_the_chain() -> None:
    root = make_parent()
    child = narrow(root, now=NOW + 10, operations=["read"])
    grandchild = narrow(child, now=NOW + 20, regions=["de"])
    great = narrow(grandchild, now=NOW + 30)
    assert (child.parent_jti, child.ancestors) == (root.jti, ())
    assert (grandchild.parent_jti, grandchild.ancestors) == (child.jti, (root.jti,))
    assert (great.parent_jti, great.ancestors) == (grandchild.jti, (root.jti, child.jti))
    assert great.lineage == (great.jti, grandchild.jti, child.jti, root.jti)
    assert is_narrowing(grandchild, great)
    # The chain survives the payload (it is signed with the rest).
    assert Claims.from_payload(great.to_payload()).lineage == great.lineage
    assert not is_narrowing(grandchild, dataclasses.replace(great, ancestors=(root.jti,)))
    assert not is_narrowing(grandchild, dataclasses.replace(great, ancestors=(child.jti,)))


def test_a_child_of_a_token_from_before_the_ancestry_claim_keeps_what_is_known() -> None:
    old = make_parent(parent_jti="o" * 22)  # names only its parent
    child = narrow(old, now=NOW + 10)
    assert child.ancestors == ("o" * 22,)
    assert child.lineage == (child.jti, old.jti, "o" * 22)
    assert is_narrowing(old, child)


def test_exchange_depth_is_capped() -> None:
    token = make_parent()
    for depth in range(1, MAX_EXCHANGE_DEPTH + 1):
        token = narrow(token, now=NOW + depth)
        assert len(token.ancestry) == depth
    with pytest.raises(AccessDenied) as caught:
        narrow(token, now=NOW + 100, operations=["read"])
    assert caught.value.reason == "EXCHANGE_TOO_DEEP"


# --- properties -------------------------------------------------------------------

names = st.sampled_from
field_sets = st.frozensets(names(FIELDS), min_size=1)


@st.composite
def parents(draw: st.DrawFn) -> Claims:
    cats = draw(st.frozensets(names(CATEGORIES)))
    nbf = draw(st.integers(NOW - 1000, NOW + 1000))
    return Claims(
        iss="pdvault",
        sub="crm-backend",
        aud="pdvault",
        purpose="essential.service",
        categories={c: draw(st.none() | field_sets) for c in cats},
        operations=draw(st.frozensets(names(sorted(OPERATIONS)), min_size=1)),
        regions=draw(st.frozensets(names(sorted(REGIONS)), min_size=1)),
        subjects=draw(st.none() | st.frozensets(names(SUBJECTS), min_size=1)),
        transfer_basis=draw(st.none() | names(["scc", "consent"])),
        iat=nbf - draw(st.integers(0, 100)),
        nbf=nbf,
        exp=nbf + draw(st.integers(1, 5000)),
        jti=draw(st.text("abcdefghijklmnop", min_size=16, max_size=22)),
    )


def _subset_or_any(
    draw: st.DrawFn, universe: Sequence[str], granted: frozenset[str] | None, *, min_size: int = 1
) -> frozenset[str] | None:
    """None (keep), a subset of what is granted (usually narrowing), or anything."""
    choices = ["keep", "any"] + (["subset"] if granted and len(granted) >= min_size else [])
    choice = draw(st.sampled_from(choices))
    if choice == "keep":
        return None
    pool = sorted(granted) if choice == "subset" and granted else list(universe)
    if not pool:
        return frozenset()
    return draw(st.frozensets(names(pool), min_size=min_size))


@st.composite
def requests(draw: st.DrawFn, parent: Claims | None = None) -> dict[str, Any]:
    def granted(name: str) -> frozenset[str] | None:
        return None if parent is None else frozenset(getattr(parent, name) or ())

    request: dict[str, Any] = {}
    categories = _subset_or_any(
        draw, CATEGORIES, frozenset(parent.categories) if parent else None, min_size=0
    )
    if categories is not None:
        request["categories"] = categories
    # Fields only for categories the request keeps: anything else is a
    # malformed request (InvalidArgument), not a widening.
    fields_universe = sorted(CATEGORIES if categories is None else categories)
    fields_keys = draw(st.frozensets(names(fields_universe))) if fields_universe else frozenset()
    if fields_keys:
        request["fields"] = {}
        for c in sorted(fields_keys):
            have = parent.categories.get(c) if parent else None
            wanted = _subset_or_any(draw, FIELDS, have)
            request["fields"][c] = wanted if wanted is not None else draw(field_sets)
    for dimension, universe in (
        ("operations", sorted(OPERATIONS)),
        ("regions", sorted(REGIONS)),
        ("subjects", SUBJECTS),
    ):
        value = _subset_or_any(draw, universe, granted(dimension))
        if value is not None:
            request[dimension] = value
    ttl = draw(st.none() | st.integers(1, 6000))
    if ttl is not None:
        request["ttl"] = ttl
    return request


def _oracle_widens(parent: Claims, request: Mapping[str, Any], now: float) -> bool:
    """Independent statement of 'wider than the parent' for a request."""
    ttl = request.get("ttl")
    if ttl is not None and int(now // 1) + ttl > parent.exp:
        return True  # more life than the parent has left
    cats = request.get("categories")
    if cats is not None and not set(cats) <= set(parent.categories):
        return True
    for category, wanted in request.get("fields", {}).items():
        if category not in parent.categories:
            return True
        granted = parent.categories[category]
        if granted is not None and not set(wanted) <= granted:
            return True
    for dimension in ("operations", "regions"):
        wanted = request.get(dimension)
        if wanted is not None and not set(wanted) <= getattr(parent, dimension):
            return True
    wanted = request.get("subjects")
    return bool(
        wanted is not None and parent.subjects is not None and not set(wanted) <= parent.subjects
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_narrow_either_refuses_or_narrows(data: st.DataObject) -> None:
    parent = data.draw(parents())
    request = data.draw(st.one_of(requests(), requests(parent)))
    life = parent.exp - parent.nbf
    now = parent.nbf + data.draw(st.floats(-100, life + 100, allow_nan=False))
    try:
        child = narrow(parent, now=now, **request)
    except AccessDenied as exc:
        event(exc.reason)
        if exc.reason == "EXCHANGE_WIDENS":
            assert _oracle_widens(parent, request, now)
        else:
            assert exc.reason == "EXCHANGE_EXPIRED"
            assert not _oracle_widens(parent, request, now)
            ttl = request.get("ttl")
            exp = parent.exp if ttl is None else int(now // 1) + ttl
            assert exp <= max(parent.nbf, int(now // 1))
        return
    event("narrowed")
    assert not _oracle_widens(parent, request, now)
    assert is_narrowing(parent, child)
    assert child.nbf >= int(now // 1)
    if "ttl" in request:
        assert child.exp <= int(now // 1) + request["ttl"]


@st.composite
def relatives(draw: st.DrawFn, parent: Claims) -> Claims:
    """A claims set near ``parent``: sometimes a narrowing, often not."""
    if draw(st.booleans()):
        try:
            return narrow(parent, now=parent.nbf, **draw(requests(parent)))
        except AccessDenied:
            pass
    cats = draw(st.frozensets(names(CATEGORIES)))
    nbf = parent.nbf + draw(st.integers(-5, 50))
    return dataclasses.replace(
        parent,
        categories={c: draw(st.none() | field_sets) for c in cats},
        operations=draw(st.frozensets(names(sorted(OPERATIONS)), min_size=1)),
        regions=draw(st.frozensets(names(sorted(REGIONS)), min_size=1)),
        subjects=draw(st.none() | st.frozensets(names(SUBJECTS), min_size=1)),
        iat=nbf,
        nbf=nbf,
        exp=nbf + draw(st.integers(1, 6000)),
        jti="c" * 22,
        parent_jti=draw(st.sampled_from([parent.jti, None])),
    )


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_narrowing_allows_nothing_the_parent_does_not(data: st.DataObject) -> None:
    parent = data.draw(parents())
    child = data.draw(relatives(parent))
    narrowing = is_narrowing(parent, child)
    event("narrowing" if narrowing else "not narrowing")
    if not narrowing:
        return
    for operation in OPERATIONS:
        for category in CATEGORIES:
            for field_name in FIELDS:
                for region in REGIONS:
                    for subject in SUBJECTS:
                        if child.allows(
                            operation=operation,
                            category=category,
                            field_name=field_name,
                            region=region,
                            subject_id=subject,
                        ):
                            assert parent.allows(
                                operation=operation,
                                category=category,
                                field_name=field_name,
                                region=region,
                                subject_id=subject,
                            )
    for category in child.categories:
        if child.fields_for(category) is None:
            assert parent.fields_for(category) is None
    if child.subjects is None:
        assert parent.subjects is None
    assert parent.nbf <= child.nbf and child.exp <= parent.exp

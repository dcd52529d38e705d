"""The Authorizer: the token intersected with the policy, each refusal exact."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import SUBJECT, make_claims
from vault.errors import AccessDenied, FieldViolation, InvalidArgument, NotFound, Restricted
from vault.policy import Authorizer, Caller, SubjectFacts, default_policy_path, load_policy

POLICY = load_policy(default_policy_path())
AUTHZ = Authorizer(POLICY)
ADULT = SubjectFacts(minor=False, restricted=False)
OTHER = "de_sub_" + "b" * 26
US_PER_DAY = 86_400_000_000


def caller(**claims: Any) -> Caller:
    return AUTHZ.caller(make_claims(**claims))


def denied(call: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(AccessDenied) as e:
        call(*args)
    return e.value.reason, e.value.message


def test_caller_needs_a_purpose_of_the_policy() -> None:
    assert caller().purpose is POLICY.purposes["essential.service"]
    assert caller().service == "crm-backend"
    assert denied(AUTHZ.caller, make_claims(purpose="marketing.mind_reading")) == (
        "UNKNOWN_PURPOSE",
        "the token's purpose is not in the policy",
    )


def test_scope_checks_token_operation_then_purpose_operation_then_region() -> None:
    c = caller(operations=frozenset({"read", "erase"}))
    AUTHZ.scope_operation(c, "read", "de")
    assert denied(AUTHZ.scope_operation, c, "write", "de") == (
        "OPERATION_NOT_GRANTED",
        "the token does not grant the write operation",
    )
    # essential.service may never erase, whatever the token says.
    assert denied(AUTHZ.scope_operation, c, "erase", "de") == (
        "OPERATION_NOT_ALLOWED",
        "purpose 'essential.service' does not allow the erase operation",
    )
    assert denied(AUTHZ.scope_operation, c, "read", "cn") == (
        "REGION_NOT_GRANTED",
        "the token does not grant this region",
    )


def test_scope_subject_and_subjectless_operations() -> None:
    limited, anyone = caller(), caller(subjects=None)
    AUTHZ.scope(limited, "read", "de", SUBJECT)
    AUTHZ.scope(anyone, "write", "de", None)
    AUTHZ.scope(anyone, "read", "de", OTHER)
    assert denied(AUTHZ.scope, limited, "read", "de", OTHER) == (
        "SUBJECT_NOT_GRANTED",
        "the token does not grant this subject",
    )
    assert denied(AUTHZ.scope, limited, "write", "de", None) == (
        "SUBJECT_NOT_GRANTED",
        "a token limited to given subjects cannot act on others",
    )


def test_a_record_of_another_subject_is_not_found() -> None:
    limited = caller()
    AUTHZ.scope_record_subject(limited, SUBJECT)
    AUTHZ.scope_record_subject(caller(subjects=None), OTHER)
    for subject in (OTHER, None):
        with pytest.raises(NotFound) as e:
            AUTHZ.scope_record_subject(limited, subject)
        assert (e.value.reason, e.value.message) == ("NOT_FOUND", "record not found")


def test_search_needs_read_in_the_region() -> None:
    AUTHZ.scope_search(caller(), "us")
    assert denied(AUTHZ.scope_search, caller(operations=frozenset({"write"})), "de") == (
        "OPERATION_NOT_GRANTED",
        "lookups need the read operation",
    )
    notify = caller(purpose="essential.service.notifications", operations=frozenset({"read"}))
    AUTHZ.scope_search(notify, "de")
    assert denied(AUTHZ.scope_search, caller(), "sg")[0] == "REGION_NOT_GRANTED"


def test_fields_intersect_token_and_purpose() -> None:
    # Token: user.name first+last, email all. Purpose essential.service: all.
    c = caller()
    assert AUTHZ.fields(c, "user.name", "read", ADULT) == frozenset({"first", "last"})
    assert AUTHZ.fields(c, "user.contact.email", "read", ADULT) is None
    assert AUTHZ.fields(c, "user.contact.email", "read", None) is None
    # Purpose notifications: user.name first+full; token first+last → first.
    n = caller(purpose="essential.service.notifications", operations=frozenset({"read"}))
    assert AUTHZ.fields(n, "user.name", "read", ADULT) == frozenset({"first"})
    assert AUTHZ.fields(n, "user.contact.email", "read", ADULT) == frozenset({"address"})
    only_last = caller(
        purpose="essential.service.notifications",
        operations=frozenset({"read"}),
        categories={"user.name": frozenset({"last"})},
    )
    assert denied(AUTHZ.fields, only_last, "user.name", "read", ADULT) == (
        "FIELD_NOT_GRANTED",
        "no field of this category is granted to the purpose",
    )
    assert denied(AUTHZ.fields, c, "user.account", "read", ADULT)[0] == "CATEGORY_NOT_GRANTED"


def test_fields_apply_the_subjects_facts() -> None:
    c = caller(subjects=None)
    with pytest.raises(Restricted):
        AUTHZ.fields(c, "user.name", "read", SubjectFacts(minor=False, restricted=True))
    rights = caller(purpose="essential.subject_rights", subjects=None)
    restricted = SubjectFacts(minor=False, restricted=True)
    assert AUTHZ.fields(rights, "user.name", "read", restricted) == frozenset({"first", "last"})
    mkt = caller(
        purpose="marketing.communications.email",
        operations=frozenset({"read"}),
        categories={"user.contact.email": None},
    )
    consented = frozenset({"marketing.communications.email"})
    adult_yes = SubjectFacts(minor=False, restricted=False, consented_purposes=consented)
    minor_yes = SubjectFacts(minor=True, restricted=False, consented_purposes=consented)
    assert AUTHZ.fields(mkt, "user.contact.email", "read", adult_yes) == frozenset({"address"})
    assert denied(AUTHZ.fields, mkt, "user.contact.email", "read", ADULT)[0] == "CONSENT_REQUIRED"
    assert denied(AUTHZ.fields, mkt, "user.contact.email", "read", minor_yes) == denied(
        AUTHZ.fields, mkt, "user.contact.email", "read", ADULT
    )
    assert denied(AUTHZ.subject_visible, mkt, minor_yes)[0] == "CONSENT_REQUIRED"
    AUTHZ.subject_visible(mkt, adult_yes)
    AUTHZ.subject_visible(c, SubjectFacts(minor=True, restricted=True))


def test_readable_categories_are_token_and_purpose() -> None:
    n = caller(
        purpose="essential.service.notifications",
        operations=frozenset({"read"}),
        categories={"user.name": None, "user.content": None, "user.account": None},
    )
    assert AUTHZ.readable_categories(n) == frozenset({"user.name", "user.account"})


def test_delete_needs_every_field_of_the_category() -> None:
    everything = caller(categories={"user.name": None}, operations=frozenset({"delete"}))
    AUTHZ.delete_fields(everything, "user.name", ADULT)
    some = caller(
        categories={"user.name": frozenset({"first", "last"})}, operations=frozenset({"delete"})
    )
    assert denied(AUTHZ.delete_fields, some, "user.name", ADULT) == (
        "FIELD_NOT_GRANTED",
        "deleting a record needs every field of its category",
    )
    # A free-form category (no declared fields) cannot be covered by a field list.
    free = caller(categories={"user.content": frozenset({"x"})}, operations=frozenset({"delete"}))
    assert denied(AUTHZ.delete_fields, free, "user.content", ADULT)[0] == "FIELD_NOT_GRANTED"
    AUTHZ.delete_fields(
        caller(categories={"user.content": None}, operations=frozenset({"delete"})),
        "user.content",
        ADULT,
    )


def test_writes_under_restriction_and_retention() -> None:
    assert not AUTHZ.writes_when_restricted(caller())
    assert AUTHZ.writes_when_restricted(caller(purpose="essential.subject_rights"))
    assert AUTHZ.expiry(caller(), "user.name", 1_000) is None
    mkt = caller(purpose="marketing.communications.email", categories={"user.name": None})
    assert AUTHZ.expiry(mkt, "user.name", 1_000) == 1_000 + 730 * US_PER_DAY
    assert denied(AUTHZ.expiry, mkt, "user.content", 1_000)[0] == "CATEGORY_NOT_ALLOWED"


def test_grant_problems_name_what_the_purpose_cannot_have() -> None:
    notify = POLICY.purposes["essential.service.notifications"]
    assert AUTHZ.grant_problems(notify, {"user.name": None}, frozenset({"read"})) == []
    assert (
        AUTHZ.grant_problems(notify, {"user.name": frozenset({"first"})}, frozenset({"read"})) == []
    )
    assert AUTHZ.grant_problems(
        notify,
        {
            "user.content": None,
            "user.name": frozenset({"first", "last"}),
            "user.contact.email": frozenset({"address"}),
        },
        frozenset({"read", "write"}),
    ) == [
        FieldViolation("categories", "user.content is not a category of the purpose"),
        FieldViolation("categories", "asks for fields of user.name the purpose cannot see"),
        FieldViolation("operations", "includes an operation the purpose does not allow"),
    ]
    # A purpose granted all of a category may hand out any of its declared fields.
    service = POLICY.purposes["essential.service"]
    assert AUTHZ.grant_problems(service, {"user.name": frozenset({"full"})}, frozenset()) == []
    assert AUTHZ.grant_problems(service, {"user.name": frozenset({"middle"})}, frozenset()) == [
        FieldViolation("categories", "asks for fields of user.name the purpose cannot see")
    ]


def test_write_fields_must_exist_and_be_granted() -> None:
    AUTHZ.check_write_fields("user.name", {"first": "a", "last": "b"}, None)
    AUTHZ.check_write_fields("user.name", {"first": "a"}, frozenset({"first"}))
    AUTHZ.check_write_fields("user.content", {"anything": "x"}, None)  # free-form
    with pytest.raises(InvalidArgument) as e:
        AUTHZ.check_write_fields("user.name", {"zeta": "x", "first": "a", "alpha": "y"}, None)
    # Indices into the sorted field names (alpha, first, zeta); never the values.
    assert e.value.violations == [
        FieldViolation("fields[0]", "is not a field of this category"),
        FieldViolation("fields[2]", "is not a field of this category"),
    ]
    assert denied(
        AUTHZ.check_write_fields, "user.name", {"first": "a", "last": "b"}, frozenset({"first"})
    ) == ("FIELD_NOT_GRANTED", "the caller may not write some of these fields")


def test_known_category_and_purpose() -> None:
    AUTHZ.known_category("user.name")
    with pytest.raises(InvalidArgument) as e:
        AUTHZ.known_category("user.mind")
    assert e.value.violations == [FieldViolation("category", "is not a category of the policy")]
    assert AUTHZ.known_purpose("essential.service") is POLICY.purposes["essential.service"]
    with pytest.raises(InvalidArgument) as e:
        AUTHZ.known_purpose("nope", field="purposes[1]")
    assert e.value.violations == [FieldViolation("purposes[1]", "is not a purpose of the policy")]


def test_search_outside_the_tokens_regions_has_its_message() -> None:
    assert denied(AUTHZ.scope_search, caller(), "sg") == (
        "REGION_NOT_GRANTED",
        "the token does not grant this region",
    )


def test_delete_with_every_declared_field_listed_and_under_restriction() -> None:
    listed = caller(
        categories={"user.name": frozenset({"first", "last", "full"})},
        operations=frozenset({"delete"}),
    )
    AUTHZ.delete_fields(listed, "user.name", ADULT)  # exactly the declared fields: allowed
    # The subject's facts count: restriction stops a purpose not allowed under it.
    with pytest.raises(Restricted):
        AUTHZ.delete_fields(listed, "user.name", SubjectFacts(minor=False, restricted=True))


def test_a_minor_excluded_message_names_the_purpose() -> None:
    import dataclasses

    forum = dataclasses.replace(POLICY.purposes["functional.community.forum"], minors=False)
    authz = Authorizer(dataclasses.replace(POLICY, purposes={**POLICY.purposes, forum.name: forum}))
    c = authz.caller(make_claims(purpose=forum.name, categories={"user.account": None}))
    with pytest.raises(AccessDenied) as e:
        authz.subject_visible(c, SubjectFacts(minor=True, restricted=False))
    assert (e.value.reason, e.value.message) == (
        "MINOR_EXCLUDED",
        "purpose 'functional.community.forum' never applies to a minor's data",
    )


def test_known_purpose_names_the_purpose_field_by_default() -> None:
    with pytest.raises(InvalidArgument) as e:
        AUTHZ.known_purpose("nope")
    assert e.value.violations == [FieldViolation("purpose", "is not a purpose of the policy")]

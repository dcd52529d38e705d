"""The shipped default policy and the access decisions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault.errors import AccessDenied, Restricted
from vault.policy import (
    OPERATIONS,
    Category,
    Policy,
    Purpose,
    SubjectFacts,
    default_policy_path,
    filter_fields,
    load_policy,
)

DEFAULT = load_policy(default_policy_path())

ADULT = SubjectFacts(minor=False, restricted=False, consented_purposes=frozenset())
MINOR = SubjectFacts(minor=True, restricted=False, consented_purposes=frozenset())
RESTRICTED = SubjectFacts(minor=False, restricted=True, consented_purposes=frozenset())

# The privacy policy's purposes (reference/privacy-policy.md) as Fides data uses.
PRIVACY_POLICY_PURPOSES = {
    "essential.service",  # providing the services, Mi Account, Mi Cloud
    "essential.service.payment_processing",  # processing purchase orders
    "essential.service.support",  # after-sales and customer support
    "essential.service.notifications",  # communicating about device and service
    "marketing.communications.email",  # direct marketing, with consent
    "marketing.communications.sms_push",  # direct marketing, with consent
    "marketing.advertising.personalized",  # interest-based ads, with consent
    "functional.community.forum",  # MIUI Forum
    "marketing.promotions",  # sweepstakes and events
    "analytics.reporting",  # statistical information on use
    "functional.service.improve",  # optimising device performance
    "functional.user_experience_program",  # opt-in User Experience Program
    "essential.legal_obligation",  # legal obligations
    "essential.legal_claims",  # allowed under restriction
    "essential.subject_rights",  # the person's own request
}

PRIVACY_POLICY_CATEGORIES = {
    "user.name",
    "user.contact.email",
    "user.contact.phone_number",
    "user.contact.address",
    "user.government_id",
    "user.account",
    "user.financial",
    "user.financial.purchase_history",
    "user.social",
    "user.device.device_id",
    "user.device.sim",
    "user.device.app_usage",
    "user.location.precise",
    "user.location.imprecise",
    "user.telemetry",
    "user.content",
}


# --- the shipped default -------------------------------------------------------------


def test_default_policy_is_packaged_next_to_the_module() -> None:
    import vault.policy

    assert default_policy_path() == Path(vault.policy.__file__).resolve().parent / "default.yaml"
    assert default_policy_path().is_file()


def test_default_policy_loads() -> None:
    assert DEFAULT.version == 1
    assert DEFAULT.revision
    assert DEFAULT.source == str(default_policy_path())


def test_default_has_every_purpose_of_the_privacy_policy() -> None:
    assert set(DEFAULT.purposes) >= PRIVACY_POLICY_PURPOSES


def test_default_has_every_category_of_the_privacy_policy() -> None:
    assert set(DEFAULT.categories) >= PRIVACY_POLICY_CATEGORIES


def test_default_marketing_needs_consent_and_excludes_minors() -> None:
    marketing = [p for name, p in DEFAULT.purposes.items() if name.startswith("marketing.")]
    assert len(marketing) >= 4
    for p in marketing:
        assert p.legal_basis == "consent", p.name
        assert p.requires_consent, p.name
        assert not p.minors, p.name
        assert not p.allowed_when_restricted, p.name


def test_default_consent_based_purposes_require_consent() -> None:
    for name in (
        "marketing.communications.email",
        "marketing.communications.sms_push",
        "marketing.advertising.personalized",
        "functional.user_experience_program",
    ):
        assert DEFAULT.purposes[name].requires_consent, name
    assert not DEFAULT.purposes["essential.service"].requires_consent


def test_default_only_legal_claims_and_own_requests_survive_restriction() -> None:
    allowed = {n for n, p in DEFAULT.purposes.items() if p.allowed_when_restricted}
    assert allowed == {"essential.legal_claims", "essential.subject_rights"}


def test_default_subject_rights_sees_everything_and_can_erase() -> None:
    p = DEFAULT.purposes["essential.subject_rights"]
    assert set(p.categories) == set(DEFAULT.categories)
    assert all(fields is None for fields in p.categories.values())
    assert {"read", "export", "erase", "consent"} <= p.operations


def test_default_only_subject_rights_erases_or_records_consent() -> None:
    for name, p in DEFAULT.purposes.items():
        if name != "essential.subject_rights":
            assert not p.operations & {"erase", "consent"}, name


def test_default_every_category_is_used_by_a_purpose() -> None:
    used = {c for p in DEFAULT.purposes.values() for c in p.categories}
    assert used == set(DEFAULT.categories)


def test_default_retention_is_bounded_for_non_essential_purposes() -> None:
    for name, p in DEFAULT.purposes.items():
        if not name.startswith(("essential.", "functional.community.")):
            assert p.retention_days is not None, name


# --- authorize ----------------------------------------------------------------------


def test_authorize_returns_the_field_filter() -> None:
    fields = DEFAULT.authorize("essential.service.support", "user.account", "read", ADULT)
    assert fields == frozenset({"account_id", "username"})


def test_authorize_returns_none_for_all_fields() -> None:
    assert DEFAULT.authorize("essential.service", "user.contact.email", "write", ADULT) is None


def _reason(exc: pytest.ExceptionInfo[AccessDenied]) -> str:
    return exc.value.reason


def test_unknown_purpose() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("marketing.telepathy", "user.name", "read", ADULT)
    assert _reason(e) == "UNKNOWN_PURPOSE"
    assert "marketing.telepathy" in e.value.message


def test_category_not_allowed() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("analytics.reporting", "user.contact.email", "read", ADULT)
    assert _reason(e) == "CATEGORY_NOT_ALLOWED"
    assert "user.contact.email" in e.value.message


def test_undeclared_category_is_not_allowed() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("essential.subject_rights", "user.biometric", "read", ADULT)
    assert _reason(e) == "CATEGORY_NOT_ALLOWED"


def test_operation_not_allowed() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("analytics.reporting", "user.telemetry", "write", ADULT)
    assert _reason(e) == "OPERATION_NOT_ALLOWED"
    assert "write" in e.value.message


def test_unknown_operation_is_not_allowed() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("essential.subject_rights", "user.name", "sell", ADULT)
    assert _reason(e) == "OPERATION_NOT_ALLOWED"


def test_consent_required() -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("marketing.communications.email", "user.contact.email", "read", ADULT)
    assert _reason(e) == "CONSENT_REQUIRED"


def test_consent_for_another_purpose_does_not_count() -> None:
    subject = dataclasses.replace(
        ADULT, consented_purposes=frozenset({"marketing.communications.sms_push"})
    )
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("marketing.communications.email", "user.contact.email", "read", subject)
    assert _reason(e) == "CONSENT_REQUIRED"


def test_consent_given_allows() -> None:
    subject = dataclasses.replace(
        ADULT, consented_purposes=frozenset({"marketing.communications.email"})
    )
    fields = DEFAULT.authorize(
        "marketing.communications.email", "user.contact.email", "read", subject
    )
    assert fields == frozenset({"address"})


def test_minor_excluded_even_with_consent() -> None:
    """A minor's consent does not count for marketing; the answer is the one a
    subject without consent gets, so the purpose cannot tell who is a minor."""
    subject = dataclasses.replace(
        MINOR, consented_purposes=frozenset({"marketing.communications.email"})
    )
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("marketing.communications.email", "user.contact.email", "read", subject)
    assert _reason(e) == "CONSENT_REQUIRED"
    with pytest.raises(AccessDenied) as without:
        DEFAULT.authorize("marketing.communications.email", "user.contact.email", "read", ADULT)
    assert str(without.value) == str(e.value) and _reason(without) == _reason(e)


def test_minor_excluded_for_a_purpose_that_needs_no_consent() -> None:
    forum = dataclasses.replace(DEFAULT.purposes["functional.community.forum"], minors=False)
    policy = dataclasses.replace(DEFAULT, purposes={**DEFAULT.purposes, forum.name: forum})
    with pytest.raises(AccessDenied) as e:
        policy.authorize(forum.name, "user.account", "read", MINOR)
    assert _reason(e) == "MINOR_EXCLUDED"
    allowed = policy.authorize(forum.name, "user.account", "read", ADULT)
    assert allowed == forum.categories["user.account"]


def test_minor_allowed_for_essential_service() -> None:
    assert DEFAULT.authorize("essential.service", "user.name", "read", MINOR) is None


def test_restricted_subject_is_refused_for_ordinary_purposes() -> None:
    with pytest.raises(Restricted) as e:
        DEFAULT.authorize("essential.service", "user.name", "read", RESTRICTED)
    assert e.value.reason == "PROCESSING_RESTRICTED"
    assert "essential.service" in e.value.message


@pytest.mark.parametrize("purpose", ["essential.legal_claims", "essential.subject_rights"])
def test_restricted_subject_is_readable_for_allowed_purposes(purpose: str) -> None:
    assert DEFAULT.authorize(purpose, "user.name", "read", RESTRICTED) is None


def test_restricted_subject_can_still_ask_for_erasure() -> None:
    assert DEFAULT.authorize("essential.subject_rights", "user.name", "erase", RESTRICTED) is None


def test_no_subject_skips_subject_checks() -> None:
    # Before the subject is loaded only the purpose-level rules apply ...
    assert DEFAULT.authorize(
        "marketing.communications.email", "user.contact.email", "read", None
    ) == frozenset({"address"})
    # ... and those still deny.
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize("marketing.communications.email", "user.financial", "read", None)
    assert _reason(e) == "CATEGORY_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("purpose", "category", "operation"),
    [
        ("jane.doe@example.com", "user.name", "read"),
        ("essential.service", "Jane Doe +49 170 1234567", "read"),
        ("essential.service", "user.name", "Jane Doe"),
    ],
)
def test_messages_never_echo_what_is_not_a_name(
    purpose: str, category: str, operation: str
) -> None:
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize(purpose, category, operation, ADULT)
    assert "Jane" not in str(e.value)
    assert "jane" not in str(e.value)
    assert "1234567" not in str(e.value)


def test_visible_categories() -> None:
    assert DEFAULT.visible_categories("functional.community.forum") == frozenset(
        {"user.account", "user.content.public"}
    )
    with pytest.raises(AccessDenied) as e:
        DEFAULT.visible_categories("nope")
    assert _reason(e) == "UNKNOWN_PURPOSE"


def test_retention_days() -> None:
    assert DEFAULT.retention_days("essential.legal_obligation", "user.government_id") == 3650
    assert DEFAULT.retention_days("essential.service", "user.name") is None
    with pytest.raises(AccessDenied) as e:
        DEFAULT.retention_days("essential.service", "user.government_id")
    assert _reason(e) == "CATEGORY_NOT_ALLOWED"
    with pytest.raises(AccessDenied) as e:
        DEFAULT.retention_days("nope", "user.name")
    assert _reason(e) == "UNKNOWN_PURPOSE"


def test_policy_cannot_be_widened_after_loading() -> None:
    with pytest.raises(TypeError):
        DEFAULT.purposes["evil"] = DEFAULT.purposes["essential.service"]  # type: ignore[index]
    with pytest.raises(TypeError):
        DEFAULT.purposes["analytics.reporting"].categories["user.financial"] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.purposes["marketing.promotions"].minors = True  # type: ignore[misc]


def test_policy_built_in_memory_copies_its_mappings() -> None:
    grants: dict[str, frozenset[str] | None] = {"user.x": frozenset({"a"})}
    purpose = Purpose(
        name="p",
        description="d",
        legal_basis="contract",
        categories=grants,
        operations=frozenset({"read"}),
        requires_consent=False,
        minors=True,
        allowed_when_restricted=False,
        retention_days=None,
    )
    policy = Policy(
        version=1,
        revision="r",
        categories={"user.x": Category("user.x", "x", frozenset({"a"}))},
        purposes={"p": purpose},
    )
    grants["user.y"] = None
    assert policy.visible_categories("p") == frozenset({"user.x"})


# --- field filtering ----------------------------------------------------------------


def test_filter_fields_keeps_only_allowed() -> None:
    record = {"address": "a@example.com", "verified": "true"}
    assert filter_fields(record, frozenset({"address"})) == {"address": "a@example.com"}
    assert filter_fields(record, frozenset()) == {}
    assert filter_fields(record, None) == record
    assert filter_fields(record, None) is not record


_names = st.text(alphabet="abcdefgh_-", min_size=1, max_size=4)


@given(
    fields=st.dictionaries(_names, st.text(max_size=8), max_size=12),
    allowed=st.none() | st.frozensets(_names, max_size=8),
)
def test_filter_fields_never_returns_a_key_outside_allowed(
    fields: dict[str, str], allowed: frozenset[str] | None
) -> None:
    out = filter_fields(fields, allowed)
    if allowed is not None:
        assert set(out) <= allowed
        assert set(out) == set(fields) & allowed
    else:
        assert out == fields
    assert all(fields[k] == v for k, v in out.items())


@given(
    purpose=st.sampled_from(sorted(DEFAULT.purposes)),
    category=st.sampled_from(sorted(DEFAULT.categories)),
    operation=st.sampled_from(sorted(OPERATIONS)),
    minor=st.booleans(),
    restricted=st.booleans(),
    consented=st.frozensets(st.sampled_from(sorted(DEFAULT.purposes))),
)
def test_authorize_never_grants_more_than_the_policy_says(
    purpose: str,
    category: str,
    operation: str,
    minor: bool,
    restricted: bool,
    consented: frozenset[str],
) -> None:
    subject = SubjectFacts(minor=minor, restricted=restricted, consented_purposes=consented)
    p = DEFAULT.purposes[purpose]
    try:
        fields = DEFAULT.authorize(purpose, category, operation, subject)
    except (AccessDenied, Restricted):
        return
    assert category in p.categories
    assert operation in p.operations
    assert not (minor and not p.minors)
    assert not (p.requires_consent and purpose not in consented)
    assert not (restricted and not p.allowed_when_restricted)
    declared = DEFAULT.categories[category].fields
    if fields is not None and declared is not None:
        assert fields <= declared


# --- what each refusal says -----------------------------------------------------------

CONSENTED_MINOR = dataclasses.replace(
    MINOR, consented_purposes=frozenset({"marketing.communications.email"})
)


@pytest.mark.parametrize(
    ("purpose", "category", "operation", "subject", "error", "reason", "message"),
    [
        (
            "marketing.telepathy",
            "user.name",
            "read",
            ADULT,
            AccessDenied,
            "UNKNOWN_PURPOSE",
            "purpose 'marketing.telepathy' is not in the policy",
        ),
        (
            "analytics.reporting",
            "user.contact.email",
            "read",
            ADULT,
            AccessDenied,
            "CATEGORY_NOT_ALLOWED",
            "purpose 'analytics.reporting' may not access category 'user.contact.email'",
        ),
        (
            "analytics.reporting",
            "user.telemetry",
            "write",
            ADULT,
            AccessDenied,
            "OPERATION_NOT_ALLOWED",
            "purpose 'analytics.reporting' does not allow operation 'write'",
        ),
        (
            "marketing.communications.email",
            "user.contact.email",
            "read",
            CONSENTED_MINOR,
            AccessDenied,
            # A minor's consent does not count, and the answer is the same as
            # without consent: a consent purpose cannot tell who is a minor.
            "CONSENT_REQUIRED",
            "purpose 'marketing.communications.email' requires the subject's active, valid consent",
        ),
        (
            "marketing.communications.email",
            "user.contact.email",
            "read",
            ADULT,
            AccessDenied,
            "CONSENT_REQUIRED",
            "purpose 'marketing.communications.email' requires the subject's active, valid consent",
        ),
        (
            "essential.service",
            "user.name",
            "read",
            RESTRICTED,
            Restricted,
            "PROCESSING_RESTRICTED",
            "processing of this subject is restricted; purpose 'essential.service' "
            "is not allowed under restriction",
        ),
    ],
)
def test_each_refusal_has_its_reason_and_message(
    purpose: str,
    category: str,
    operation: str,
    subject: SubjectFacts,
    error: type[Exception],
    reason: str,
    message: str,
) -> None:
    with pytest.raises(error) as e:
        DEFAULT.authorize(purpose, category, operation, subject)
    assert isinstance(e.value, AccessDenied | Restricted)
    assert (e.value.reason, e.value.message) == (reason, message)


def test_names_are_echoed_up_to_128_characters() -> None:
    longest = "a" * 128
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize(longest, "user.name", "read", ADULT)
    assert e.value.message == f"purpose {longest!r} is not in the policy"
    with pytest.raises(AccessDenied) as e:
        DEFAULT.authorize(longest + "a", "user.name", "read", ADULT)
    assert e.value.message == "purpose (an invalid name) is not in the policy"


def test_policy_keeps_its_own_read_only_copies_of_what_it_was_built_from() -> None:
    purpose = DEFAULT.purposes["essential.service"]
    categories = {"user.name": DEFAULT.categories["user.name"]}
    purposes = {"essential.service": purpose}
    policy = Policy(version=1, revision="r", categories=categories, purposes=purposes)
    categories["user.extra"] = DEFAULT.categories["user.account"]
    purposes["evil"] = purpose
    assert set(policy.categories) == {"user.name"}
    assert set(policy.purposes) == {"essential.service"}
    with pytest.raises(TypeError):
        policy.categories["user.extra"] = DEFAULT.categories["user.account"]  # type: ignore[index]
    with pytest.raises(TypeError):
        policy.purposes["evil"] = purpose  # type: ignore[index]
    with pytest.raises(AccessDenied) as e:
        policy.authorize("evil", "user.name", "read", None)
    assert e.value.reason == "UNKNOWN_PURPOSE"

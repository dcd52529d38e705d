"""Consent, minors and restriction of processing through the real API.

Consent and restriction are set with SetConsent / RestrictProcessing under the
subject's own request (essential.subject_rights) and take effect on the very
next request of tokens that were already in use (and verified, so cached).
"""

from __future__ import annotations

import grpc
import pytest

from tests.conftest import Stack
from tests.integration._access import (
    MARKETING_EMAIL,
    RIGHTS,
    SERVICE,
    Env,
    new_canary,
    reply_text,
)
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(db_stack: Stack) -> Stack:
    """Every test of this module runs on SQLite and on PostgreSQL."""
    return db_stack


PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class Person:
    """A subject with a name, an email and a postal address record (canaries)."""

    def __init__(self, env: Env, *, minor: bool = False, country: str = "DE") -> None:
        s = env.subject(country, minor=minor)
        self.subject_id = s.subject_id
        self.name = {"first": new_canary(), "last": new_canary()}
        self.email = {"address": new_canary(), "verified": new_canary()}
        self.address = {"street": new_canary(), "city": new_canary()}
        self.name_id = env.put(self.subject_id, "user.name", self.name).record_id
        self.email_id = env.put(self.subject_id, "user.contact.email", self.email).record_id
        self.address_id = env.put(self.subject_id, "user.contact.address", self.address).record_id

    @property
    def canaries(self) -> list[str]:
        return [*self.name.values(), *self.email.values(), *self.address.values()]


def get(env: Env, record_id: str, token: str) -> pb.Record:
    return env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=record_id), token)  # type: ignore[no-any-return]


def listing(env: Env, subject_id: str, token: str) -> dict[str, dict[str, str]]:
    resp = env.rpc.call("ListRecords", pb.ListRecordsRequest(subject_id=subject_id), token)
    return {r.category: dict(r.fields) for r in resp.records}


def consents(env: Env, subject_id: str) -> list[tuple[str, bool, str]]:
    resp = env.rpc.call(
        "ListConsents", pb.ListConsentsRequest(subject_id=subject_id), env.setup_token(RIGHTS)
    )
    return [(c.purpose, c.granted, c.source) for c in resp.consents]


def denied(
    env: Env,
    method: str,
    request: object,
    token: str,
    code: grpc.StatusCode,
    reason: str,
    person: Person,
) -> None:
    env.rpc.expect(method, request, token, code, reason, secrets=person.canaries)


# -- consent ------------------------------------------------------------------------


def test_consent_grant_and_withdrawal_take_effect_on_the_next_request(env: Env) -> None:
    p = Person(env)
    marketing = env.token(MARKETING_EMAIL)
    get_email = pb.GetRecordRequest(record_id=p.email_id)
    list_all = pb.ListRecordsRequest(subject_id=p.subject_id)

    # No consent record: nothing of the subject is readable for marketing.
    assert consents(env, p.subject_id) == []
    for method, req in (("GetRecord", get_email), ("ListRecords", list_all)):
        denied(env, method, req, marketing, PERMISSION_DENIED, "CONSENT_REQUIRED", p)

    c = env.set_consent(p.subject_id, MARKETING_EMAIL, True)
    assert (c.subject_id, c.purpose, c.granted, c.source) == (
        p.subject_id,
        MARKETING_EMAIL,
        True,
        "test-form-v1",
    )
    assert c.updated_at.seconds > 0
    assert consents(env, p.subject_id) == [(MARKETING_EMAIL, True, "test-form-v1")]

    # With consent: exactly the purpose's fields (name: first; email: address),
    # and not the postal address, which the purpose does not cover.
    assert dict(get(env, p.email_id, marketing).fields) == {"address": p.email["address"]}
    got_name = get(env, p.name_id, marketing)
    assert dict(got_name.fields) == {"first": p.name["first"]}
    assert p.name["last"] not in reply_text(got_name)
    assert listing(env, p.subject_id, marketing) == {
        "user.name": {"first": p.name["first"]},
        "user.contact.email": {"address": p.email["address"]},
    }
    denied(
        env,
        "GetRecord",
        pb.GetRecordRequest(record_id=p.address_id),
        marketing,
        PERMISSION_DENIED,
        "CATEGORY_NOT_GRANTED",
        p,
    )

    # Withdrawn: the same (already verified) token is refused on its next request.
    env.set_consent(p.subject_id, MARKETING_EMAIL, False)
    for method, req in (("GetRecord", get_email), ("ListRecords", list_all)):
        denied(env, method, req, marketing, PERMISSION_DENIED, "CONSENT_REQUIRED", p)
    assert consents(env, p.subject_id) == [(MARKETING_EMAIL, False, "test-form-v1")]

    # And granted again, readable again.
    env.set_consent(p.subject_id, MARKETING_EMAIL, True)
    assert dict(get(env, p.email_id, marketing).fields) == {"address": p.email["address"]}


def test_consent_to_one_purpose_covers_no_other(env: Env) -> None:
    p = Person(env)
    env.set_consent(p.subject_id, MARKETING_EMAIL, True)
    sms = env.token("marketing.communications.sms_push")
    denied(
        env,
        "GetRecord",
        pb.GetRecordRequest(record_id=p.name_id),
        sms,
        PERMISSION_DENIED,
        "CONSENT_REQUIRED",
        p,
    )
    assert dict(get(env, p.name_id, env.token(MARKETING_EMAIL)).fields) == {
        "first": p.name["first"]
    }


def test_consent_is_per_subject(env: Env) -> None:
    consented, other = Person(env), Person(env)
    env.set_consent(consented.subject_id, MARKETING_EMAIL, True)
    marketing = env.token(MARKETING_EMAIL)
    assert get(env, consented.email_id, marketing).record_id == consented.email_id
    denied(
        env,
        "GetRecord",
        pb.GetRecordRequest(record_id=other.email_id),
        marketing,
        PERMISSION_DENIED,
        "CONSENT_REQUIRED",
        other,
    )


def test_a_minor_is_never_marketed_to_even_with_consent(env: Env) -> None:
    p = Person(env, minor=True)
    env.set_consent(p.subject_id, MARKETING_EMAIL, True)
    assert consents(env, p.subject_id) == [(MARKETING_EMAIL, True, "test-form-v1")]
    marketing = env.token(MARKETING_EMAIL)
    for method, req in (
        ("GetRecord", pb.GetRecordRequest(record_id=p.email_id)),
        ("GetRecord", pb.GetRecordRequest(record_id=p.name_id)),
        ("ListRecords", pb.ListRecordsRequest(subject_id=p.subject_id)),
    ):
        # The answer an adult without consent gets: the purpose cannot tell minors.
        denied(env, method, req, marketing, PERMISSION_DENIED, "CONSENT_REQUIRED", p)
    # Non-marketing purposes still serve the minor.
    assert dict(get(env, p.email_id, env.token(SERVICE)).fields) == p.email


def test_set_consent_for_a_purpose_not_in_the_policy_is_invalid(env: Env) -> None:
    p = Person(env)
    f = env.rpc.fail(
        "SetConsent",
        pb.SetConsentRequest(
            subject_id=p.subject_id, purpose="marketing.mind_reading", granted=True, source="x"
        ),
        env.setup_token(RIGHTS),
    )
    assert f.code == grpc.StatusCode.INVALID_ARGUMENT, str(f)
    assert [field for field, _ in f.violations] == ["purpose"]
    assert consents(env, p.subject_id) == []


# -- restriction of processing --------------------------------------------------------


def test_restriction_stops_ordinary_processing_until_it_is_lifted(env: Env) -> None:
    p = Person(env)
    service = env.token(SERVICE)
    rights = env.token(RIGHTS)
    legal_claims = env.token("essential.legal_claims")
    assert dict(get(env, p.email_id, service).fields) == p.email

    s = env.restrict(p.subject_id, True)
    assert (s.subject_id, s.state) == (p.subject_id, pb.SUBJECT_STATE_RESTRICTED)
    got = env.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=p.subject_id), rights)
    assert got.state == pb.SUBJECT_STATE_RESTRICTED

    # essential.service may not process the subject at all while restricted.
    for method, req in (
        ("GetRecord", pb.GetRecordRequest(record_id=p.email_id)),
        ("ListRecords", pb.ListRecordsRequest(subject_id=p.subject_id)),
        ("ListRecords", pb.ListRecordsRequest(subject_id=p.subject_id, category="user.name")),
        (
            "PutRecord",
            pb.PutRecordRequest(
                subject_id=p.subject_id, category="user.name", fields={"first": new_canary()}
            ),
        ),
        (
            "PutRecord",
            pb.PutRecordRequest(
                subject_id=p.subject_id,
                category="user.name",
                fields={"first": new_canary()},
                record_id=p.name_id,
            ),
        ),
        ("DeleteRecord", pb.DeleteRecordRequest(record_id=p.address_id)),
    ):
        denied(env, method, req, service, FAILED_PRECONDITION, "PROCESSING_RESTRICTED", p)

    # The purposes allowed under restriction still read: the subject's own request
    # and legal claims (within their own field grants).
    assert dict(get(env, p.email_id, rights).fields) == p.email
    assert listing(env, p.subject_id, rights) == {
        "user.name": p.name,
        "user.contact.email": p.email,
        "user.contact.address": p.address,
    }
    assert dict(get(env, p.email_id, legal_claims).fields) == p.email
    # The subject can still manage consent while restricted.
    env.set_consent(p.subject_id, MARKETING_EMAIL, False)

    # Lifting the restriction restores access for the same token.
    s = env.restrict(p.subject_id, False)
    assert s.state == pb.SUBJECT_STATE_ACTIVE
    assert dict(get(env, p.email_id, service).fields) == p.email
    assert set(listing(env, p.subject_id, service)) == {
        "user.name",
        "user.contact.email",
        "user.contact.address",
    }
    # Nothing was written or deleted while restricted.
    assert dict(get(env, p.name_id, rights).fields) == p.name
    assert get(env, p.address_id, rights).version == 1


def test_export_under_restriction_only_for_the_subjects_own_request(env: Env) -> None:
    p = Person(env)
    env.restrict(p.subject_id, True)
    req = pb.ExportSubjectRequest(subject_id=p.subject_id)
    denied(
        env,
        "ExportSubject",
        req,
        env.token("essential.legal_obligation"),
        FAILED_PRECONDITION,
        "PROCESSING_RESTRICTED",
        p,
    )
    chunks = env.rpc.call("ExportSubject", req, env.token(RIGHTS))
    doc = b"".join(c.data for c in chunks).decode()
    for v in p.canaries:
        assert v in doc


def test_restriction_rpcs_need_the_consent_operation(env: Env) -> None:
    p = Person(env)
    # essential.service cannot hold "consent"; a subject_rights token without it.
    for token in (env.token(SERVICE), env.token(RIGHTS, ops=["read", "write", "export"])):
        for method, req in (
            ("RestrictProcessing", pb.RestrictProcessingRequest(subject_id=p.subject_id)),
            (
                "SetConsent",
                pb.SetConsentRequest(
                    subject_id=p.subject_id, purpose=MARKETING_EMAIL, granted=True, source="x"
                ),
            ),
            ("ListConsents", pb.ListConsentsRequest(subject_id=p.subject_id)),
        ):
            denied(env, method, req, token, PERMISSION_DENIED, "OPERATION_NOT_GRANTED", p)
    assert consents(env, p.subject_id) == []
    got = env.rpc.call(
        "GetSubject", pb.GetSubjectRequest(subject_id=p.subject_id), env.token(SERVICE)
    )
    assert got.state == pb.SUBJECT_STATE_ACTIVE

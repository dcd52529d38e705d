"""Every RPC of vault.v1.PersonalDataVault needs a valid purpose token, and a caller
sees exactly what its purpose allows — against the real stack (OpenBao, SQLite
cells, gRPC server, tokens from the running TokenService).

Two matrices:

* authentication attacks x every RPC of the service (fourteen) -> UNAUTHENTICATED
  with the exact reason;
* grant / policy attacks x the RPCs each applies to (PutRecord's update path
  counted separately) -> PERMISSION_DENIED, or FAILED_PRECONDITION for a
  restricted subject, with the exact reason. Consent and restriction are set
  through the API; the "-seeded" variants write the same state straight into
  the cell database, to pin the enforcement independently of those RPCs.

The target subject's records and lookup hold canary values, and requests that
write carry canaries too: no error message or status detail may contain any of
them (nor the presented token). A refused call changes nothing stored (the
subject's row, records, consents, lookups, erasure, key; the region's subject
count), and a refused export sends no chunk before its error. A control runs
every request with a token its purpose allows and checks the reply's data.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from tests.conftest import POLICY
from tests.integration._access import (
    PROMOTIONS,
    RIGHTS,
    RPC_OPERATION,
    RPC_PURPOSE,
    SERVICE,
    VAULT_RPCS,
    Env,
    b64d,
    b64e,
    live_claims,
    new_canary,
    reply_text,
    sign,
    sign_raw,
    tamper,
    wait_until_refused,
)
from vault.tokens import SigningKey
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ACTIVE = pb.SUBJECT_STATE_ACTIVE
RESTRICTED = pb.SUBJECT_STATE_RESTRICTED

#: PutRecord with a record_id: the update path (its own code in the cell).
UPDATE = "PutRecord(update)"


# -- targets and requests ---------------------------------------------------------


FIELDS = {
    "user.contact.email": ("address", "verified"),
    "user.name": ("first", "last"),
    "user.account": ("account_id", "two_step_enabled"),
    "user.location.imprecise": ("region", "city_code"),
}


@dataclass
class Target:
    """A subject with a lookup e-mail and one record, all canaries, and what a
    request writes (record fields, another lookup e-mail)."""

    subject_id: str
    record_id: str
    category: str
    stored: dict[str, str]
    put_fields: dict[str, str]
    email: str
    new_email: str
    canaries: list[str]
    country: str = "DE"
    list_category: str = ""

    @property
    def region(self) -> str:
        return self.subject_id[:2]


def _email() -> str:
    return f"{new_canary().lower()}@example.org"


def make_target(
    env: Env, *, category: str = "user.contact.email", country: str = "DE", minor: bool = False
) -> Target:
    email, new_email = _email(), _email()
    s = env.subject(country, minor=minor, email=email)
    stored = {f: new_canary() for f in FIELDS[category]}
    rec = env.put(s.subject_id, category, stored)
    written = {f: new_canary() for f in FIELDS[category]}
    return Target(
        s.subject_id,
        rec.record_id,
        category,
        stored,
        written,
        email,
        new_email,
        [*stored.values(), *written.values(), email, new_email],
        country,
    )


def request_for(rpc: str, t: Target) -> tuple[str, Any]:
    """(method, request) of ``rpc`` aimed at ``t``."""
    match rpc:
        case "CreateSubject":
            return rpc, pb.CreateSubjectRequest(country=t.country)
        case "GetSubject":
            return rpc, pb.GetSubjectRequest(subject_id=t.subject_id)
        case "PutRecord":
            return rpc, pb.PutRecordRequest(
                subject_id=t.subject_id, category=t.category, fields=t.put_fields
            )
        case "PutRecord(update)":
            return "PutRecord", pb.PutRecordRequest(
                subject_id=t.subject_id,
                category=t.category,
                fields=t.put_fields,
                record_id=t.record_id,
            )
        case "GetRecord":
            return rpc, pb.GetRecordRequest(record_id=t.record_id)
        case "ListRecords":
            return rpc, pb.ListRecordsRequest(subject_id=t.subject_id, category=t.list_category)
        case "DeleteRecord":
            return rpc, pb.DeleteRecordRequest(record_id=t.record_id)
        case "SetConsent":
            return rpc, pb.SetConsentRequest(
                subject_id=t.subject_id, purpose=PROMOTIONS, granted=True, source="test-form-v1"
            )
        case "ListConsents":
            return rpc, pb.ListConsentsRequest(subject_id=t.subject_id)
        case "RestrictProcessing":
            return rpc, pb.RestrictProcessingRequest(subject_id=t.subject_id, restricted=True)
        case "EraseSubject":
            return rpc, pb.EraseSubjectRequest(subject_id=t.subject_id, reason="subject_request")
        case "CancelErasure":
            return rpc, pb.CancelErasureRequest(subject_id=t.subject_id)
        case "ExportSubject":
            return rpc, pb.ExportSubjectRequest(subject_id=t.subject_id)
        case "GetAccessReport":
            return rpc, pb.GetAccessReportRequest(subject_id=t.subject_id)
        case "SetLookups":
            return rpc, pb.SetLookupsRequest(
                subject_id=t.subject_id, lookups=[pb.Lookup(kind="email", value=t.new_email)]
            )
        case "FindSubjects":
            return rpc, pb.FindSubjectsRequest(
                lookup=pb.Lookup(kind="email", value=t.email), region=t.region
            )
        case "ImportSubjects":
            # A new person of the target's country with the record the target's
            # tests write, and the target's new lookup e-mail.
            return rpc, [
                pb.ImportSubjectRequest(
                    subject=pb.CreateSubjectRequest(
                        country=t.country,
                        idempotency_key=f"import-{uuid.uuid4().hex}",
                        lookups=[pb.Lookup(kind="email", value=t.new_email)],
                    ),
                    records=[pb.ImportRecord(category=t.category, fields=t.put_fields)],
                )
            ]
    raise AssertionError(rpc)


# -- 1. authentication: every RPC, every broken credential -> UNAUTHENTICATED ------


@dataclass
class World:
    """One subject with canary records, shared by the authentication cases (which
    must all be refused before any data is touched)."""

    target: Target
    service_token: str
    read_only_token: str
    revoked_token: str


@pytest.fixture(scope="module")
def world(env: Env) -> World:
    t = make_target(env)
    revoked = env.issue(SERVICE, ttl=600)
    env.revoke(revoked.token_id, env.stack.admin)
    wait_until_refused(env.rpc, revoked.token, "REVOKED")
    return World(
        t,
        env.token(SERVICE),
        env.token(SERVICE, ["user.contact.email"], ops=["read"]),
        revoked.token,
    )


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _now() -> int:
    return int(time.time())


def _wrong_signature(env: Env, w: World) -> str:
    # Signed by another key, but naming the vault's key id in the footer.
    forged = sign(live_claims(), SigningKey.generate())
    body = b64d(forged.split(".")[2])[:-64]
    return _bearer(sign_raw(body, SigningKey.generate(), kid=env.signing_key.kid))


def _tampered_claims(env: Env, w: World) -> str:
    # A read-only token edited to grant write and delete; the signature is kept.
    return _bearer(
        tamper(
            w.read_only_token,
            lambda m: m.replace(
                b'"operations":["read"]', b'"operations":["delete","read","write"]'
            ),
        )
    )


def _flipped_signature(env: Env, w: World) -> str:
    header, body, footer = w.service_token.rsplit(".", 2)
    raw = bytearray(b64d(body))
    raw[-1] ^= 0x01
    return _bearer(f"{header}.{b64e(bytes(raw))}.{footer}")


def _truncated_payload(env: Env, w: World) -> str:
    header, body, footer = w.service_token.rsplit(".", 2)
    return _bearer(f"{header}.{body[:-8]}.{footer}")


#: name -> (the authorization header, or None for none; the expected reason)
def _swap_header(version: str) -> Callable[[Env, World], str]:
    return lambda e, w: _bearer(version + w.service_token.removeprefix("v4.public."))


def _payload_edit(edit: Callable[[str], str]) -> Callable[[Env, World], str]:
    """The valid token with its payload segment's *encoding* changed (same bytes)."""

    def make(env: Env, w: World) -> str:
        header, body, footer = w.service_token.rsplit(".", 2)
        return _bearer(f"{header}.{edit(body)}.{footer}")

    return make


def _footer(raw: bytes) -> Callable[[Env, World], str]:
    def make(env: Env, w: World) -> str:
        header, body, _ = w.service_token.rsplit(".", 2)
        return _bearer(f"{header}.{body}.{b64e(raw)}")

    return make


def _kid(w: World) -> str:
    footer = w.service_token.rsplit(".", 1)[1]
    return str(json.loads(b64d(footer))["kid"])


AUTH_ATTACKS: dict[str, tuple[Callable[[Env, World], str | None], str]] = {
    "no-token": (lambda e, w: None, "MISSING_TOKEN"),
    "empty-bearer": (lambda e, w: "Bearer ", "MALFORMED_TOKEN"),
    "wrong-scheme": (lambda e, w: f"Basic {w.service_token}", "MALFORMED_TOKEN"),
    "garbage": (lambda e, w: _bearer("not-a-token-at-all"), "MALFORMED_TOKEN"),
    "truncated": (
        lambda e, w: _bearer(w.service_token[: len(w.service_token) // 2]),
        "MALFORMED_TOKEN",
    ),
    "truncated-payload": (_truncated_payload, "BAD_SIGNATURE"),
    "wrong-signature": (_wrong_signature, "BAD_SIGNATURE"),
    "flipped-signature-bit": (_flipped_signature, "BAD_SIGNATURE"),
    "unknown-key-id": (
        lambda e, w: _bearer(sign(live_claims(), SigningKey.generate())),
        "UNKNOWN_KEY",
    ),
    "tampered-claims": (_tampered_claims, "BAD_SIGNATURE"),
    "expired": (
        lambda e, w: _bearer(sign(live_claims(now=_now() - 7200, ttl=3600), e.signing_key)),
        "EXPIRED",
    ),
    "not-yet-valid": (
        lambda e, w: _bearer(sign(live_claims(nbf=_now() + 600, ttl=1200), e.signing_key)),
        "NOT_YET_VALID",
    ),
    "revoked": (lambda e, w: _bearer(w.revoked_token), "REVOKED"),
    "admin-credential": (lambda e, w: _bearer(e.stack.admin), "MALFORMED_TOKEN"),
    "wrong-audience": (
        lambda e, w: _bearer(sign(live_claims(aud="another-service"), e.signing_key)),
        "WRONG_AUDIENCE",
    ),
    "malformed-claims": (
        lambda e, w: _bearer(sign_raw(b'{"purpose":"essential.service"}', e.signing_key)),
        "MALFORMED_CLAIMS",
    ),
    "wrong-issuer": (
        lambda e, w: _bearer(sign(live_claims(iss="someone-else"), e.signing_key)),
        "WRONG_ISSUER",
    ),
    # header variants
    "scheme-without-space": (lambda e, w: "Bearer" + w.service_token, "MALFORMED_TOKEN"),
    "scheme-only": (lambda e, w: "Bearer", "MALFORMED_TOKEN"),
    "token-without-scheme": (lambda e, w: w.service_token, "MALFORMED_TOKEN"),
    "token-with-trailing-words": (
        lambda e, w: _bearer(w.service_token + " " + w.service_token),
        "MALFORMED_TOKEN",
    ),
    # (An oversized token never reaches the vault: gRPC refuses metadata over
    # 8 KiB itself; the codec's own length limit is unit-tested.)
    # versions and purposes of PASETO other than v4.public
    "v4-local-header": (_swap_header("v4.local."), "MALFORMED_TOKEN"),
    "v3-public-header": (_swap_header("v3.public."), "MALFORMED_TOKEN"),
    "v2-public-header": (_swap_header("v2.public."), "MALFORMED_TOKEN"),
    "upper-case-header": (_swap_header("V4.PUBLIC."), "MALFORMED_TOKEN"),
    # encodings of the same signed bytes
    "payload-with-padding": (
        _payload_edit(lambda b: b + "=" * (-len(b) % 4 or 4)),
        "BAD_SIGNATURE",
    ),
    "payload-standard-base64": (
        _payload_edit(lambda b: b.replace("-", "+").replace("_", "/") + "+/"),
        "BAD_SIGNATURE",
    ),
    "payload-with-whitespace": (_payload_edit(lambda b: b[:10] + " " + b[10:]), "BAD_SIGNATURE"),
    # footers
    "footer-missing": (
        lambda e, w: _bearer(w.service_token.rsplit(".", 1)[0]),
        "MALFORMED_TOKEN",
    ),
    "footer-not-json": (_footer(b"kid"), "MALFORMED_TOKEN"),
    "footer-kid-not-a-string": (_footer(b'{"kid":1}'), "MALFORMED_TOKEN"),
    "footer-extra-field": (
        lambda e, w: _footer(json.dumps({"kid": _kid(w), "x": 1}).encode())(e, w),
        "MALFORMED_TOKEN",
    ),
    "footer-empty-kid": (_footer(b'{"kid":""}'), "UNKNOWN_KEY"),
}

AUTH_CASES = [
    pytest.param(attack, rpc, id=f"{attack}-{rpc}") for attack in AUTH_ATTACKS for rpc in VAULT_RPCS
]


@pytest.mark.parametrize(("attack", "rpc"), AUTH_CASES)
def test_authentication_failure_is_unauthenticated(
    env: Env, world: World, attack: str, rpc: str
) -> None:
    make_header, reason = AUTH_ATTACKS[attack]
    authorization = make_header(env, world)
    method, request = request_for(rpc, world.target)
    before = env.stored(world.target.subject_id)
    f = env.rpc.fail(method, request, authorization=authorization)
    assert env.stored(world.target.subject_id) == before, "a refused call changed stored data"
    secrets = [*world.target.canaries, world.service_token, world.read_only_token, env.stack.admin]
    if authorization is not None and len(authorization) > 20:
        secrets.append(authorization.removeprefix("Bearer ").removeprefix("Basic "))
    assert (f.code, f.reason) == (UNAUTHENTICATED, reason), str(f)
    for s in secrets:
        assert s not in f.seen, "the error carries personal data, a token or a credential"


def _assert_done(env: Env, rpc: str, t: Target, reply: Any) -> None:
    """``reply`` is what ``rpc`` aimed at ``t`` must answer, and it did it."""
    rights = env.setup_token(RIGHTS)

    def read(record_id: str) -> dict[str, str]:
        got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=record_id), rights)
        return dict(got.fields)

    def state() -> int:
        got = env.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=t.subject_id), rights)
        return int(got.state)

    match rpc:
        case "CreateSubject":
            assert (reply.region, reply.state, reply.minor) == (t.region, ACTIVE, False)
            assert reply.subject_id.startswith(f"{t.region}_sub_")
            assert reply.subject_id != t.subject_id
            got = env.rpc.call(
                "GetSubject", pb.GetSubjectRequest(subject_id=reply.subject_id), rights
            )
            assert got.subject_id == reply.subject_id
        case "GetSubject":
            assert (reply.subject_id, reply.region, reply.state, reply.minor) == (
                t.subject_id,
                t.region,
                ACTIVE,
                False,
            )
        case "PutRecord":
            assert (reply.subject_id, reply.category, reply.version) == (
                t.subject_id,
                t.category,
                1,
            )
            assert reply.record_id != t.record_id and dict(reply.fields) == t.put_fields
            assert read(reply.record_id) == t.put_fields and read(t.record_id) == t.stored
        case "PutRecord(update)":
            assert (reply.record_id, reply.version) == (t.record_id, 2)
            assert dict(reply.fields) == t.put_fields == read(t.record_id)
        case "GetRecord":
            assert (reply.record_id, reply.subject_id, reply.category, reply.version) == (
                t.record_id,
                t.subject_id,
                t.category,
                1,
            )
            assert dict(reply.fields) == t.stored
        case "ListRecords":
            assert [(r.record_id, dict(r.fields)) for r in reply.records] == [
                (t.record_id, t.stored)
            ]
            assert reply.next_page_token == ""
        case "DeleteRecord":
            assert (reply.record_id, reply.deleted) == (t.record_id, True)
            env.rpc.expect(
                "GetRecord",
                pb.GetRecordRequest(record_id=t.record_id),
                rights,
                grpc.StatusCode.NOT_FOUND,
                None,
            )
        case "SetConsent":
            assert (reply.subject_id, reply.purpose, reply.granted, reply.source) == (
                t.subject_id,
                PROMOTIONS,
                True,
                "test-form-v1",
            )
            listed = env.rpc.call(
                "ListConsents", pb.ListConsentsRequest(subject_id=t.subject_id), rights
            )
            assert [(c.purpose, c.granted) for c in listed.consents] == [(PROMOTIONS, True)]
        case "ListConsents":
            assert [(c.purpose, c.granted, c.source) for c in reply.consents] == [
                (PROMOTIONS, True, "test-form-v1")
            ]
        case "RestrictProcessing":
            assert (reply.subject_id, reply.state) == (t.subject_id, RESTRICTED)
            assert state() == RESTRICTED
        case "EraseSubject":
            assert (reply.subject_id, reply.state, reply.records_affected) == (
                t.subject_id,
                pb.ERASURE_STATE_COMPLETED,
                1,
            )
            assert reply.signed_receipt and state() == pb.SUBJECT_STATE_ERASED
        case "CancelErasure":
            assert (reply.subject_id, reply.state) == (t.subject_id, ACTIVE)
            assert read(t.record_id) == t.stored
        case "ExportSubject":
            assert [c.sequence for c in reply] == list(range(len(reply)))
            doc = json.loads(b"".join(c.data for c in reply))
            assert doc["subject"]["subject_id"] == t.subject_id
            assert [(r["record_id"], r["fields"]) for r in doc["records"]] == [
                (t.record_id, t.stored)
            ]
        case "GetAccessReport":
            ops = [(e.operation, e.decision, e.region) for e in reply]
            assert ("PutRecord", "ok", t.region) in ops
            assert all(e.region == t.region and e.service for e in reply)
            assert t.record_id not in str(reply) and t.subject_id not in str(reply)
        case "SetLookups":
            assert reply.added == 1
            found = env.rpc.call(
                "FindSubjects",
                pb.FindSubjectsRequest(
                    lookup=pb.Lookup(kind="email", value=t.new_email), region=t.region
                ),
                rights,
            )
            assert list(found.subject_ids) == [t.subject_id]
        case "FindSubjects":
            assert list(reply.subject_ids) == [t.subject_id]
        case "ImportSubjects":
            (result,) = reply.results
            assert result.subject_id.startswith(f"{t.region}_sub_")
            assert result.subject_id != t.subject_id and result.records_written == 1
            listed = env.rpc.call(
                "ListRecords", pb.ListRecordsRequest(subject_id=result.subject_id), rights
            )
            assert [(r.category, dict(r.fields)) for r in listed.records] == [
                (t.category, t.put_fields)
            ]
        case _:
            raise AssertionError(rpc)


@pytest.mark.parametrize("rpc", [*VAULT_RPCS, UPDATE])
def test_the_same_requests_succeed_with_a_valid_token(env: Env, rpc: str) -> None:
    """Control for the matrices: each request, with a token its purpose allows,
    does what it asks, so each refusal above is the attack's doing."""
    t = make_target(env)
    token = env.token(RPC_PURPOSE[rpc])
    if rpc == "CancelErasure":
        env.rpc.call(
            "EraseSubject",
            pb.EraseSubjectRequest(subject_id=t.subject_id, grace_period=Duration(seconds=3600)),
            token,
        )
    if rpc == "ListConsents":
        env.set_consent(t.subject_id, PROMOTIONS, True)
    method, request = request_for(rpc, t)
    _assert_done(env, rpc, t, env.rpc.call(method, request, token))


# -- 2. grants and policy: PERMISSION_DENIED / FAILED_PRECONDITION ----------------


@dataclass
class Case:
    token: str
    target: Target
    code: grpc.StatusCode
    reason: str
    secrets: list[str] = field(default_factory=list)


def _denied(token: str, t: Target, reason: str) -> Case:
    return Case(token, t, PERMISSION_DENIED, reason)


def wrong_purpose(env: Env, rpc: str) -> Case:
    # The forum purpose may read/write/delete, but not contact data.
    t = make_target(env)
    t.list_category = t.category
    return _denied(env.token("functional.community.forum"), t, "CATEGORY_NOT_GRANTED")


def purpose_lacks_category(env: Env, rpc: str) -> Case:
    # Defence in depth: a vault-signed token granting a category its purpose lacks
    # (IssueToken refuses to make one) is still refused by the policy.
    t = make_target(env)
    t.list_category = t.category
    forum = "functional.community.forum"
    c = live_claims(
        purpose=forum,
        categories={"user.contact.email": None},
        operations=POLICY.purposes[forum].operations,
    )
    return _denied(sign(c, env.signing_key), t, "CATEGORY_NOT_ALLOWED")


def purpose_lacks_operation(env: Env, rpc: str) -> Case:
    # A vault-signed token granting an operation its purpose does not allow.
    op = RPC_OPERATION[rpc]
    data_op = op in {"write", "delete"}
    purpose = "analytics.reporting" if data_op else SERVICE
    category = "user.location.imprecise" if data_op else "user.contact.email"
    t = make_target(env, category=category)
    p = POLICY.purposes[purpose]
    c = live_claims(purpose=purpose, categories={category: None}, operations=p.operations | {op})
    return _denied(sign(c, env.signing_key), t, "OPERATION_NOT_ALLOWED")


def category_not_granted(env: Env, rpc: str) -> Case:
    t = make_target(env)
    t.list_category = t.category
    return _denied(env.token(SERVICE, ["user.name"]), t, "CATEGORY_NOT_GRANTED")


def field_not_granted(env: Env, rpc: str) -> Case:
    # Granted user.name's "first" only; the request also writes "last".
    t = make_target(env, category="user.name")
    return _denied(env.token(SERVICE, {"user.name": ["first"]}), t, "FIELD_NOT_GRANTED")


def no_field_granted(env: Env, rpc: str) -> Case:
    # The token's field grant and the purpose's (support: account_id, username)
    # do not overlap: nothing of the category is visible.
    t = make_target(env, category="user.account")
    t.put_fields = {"two_step_enabled": new_canary()}
    t.canaries.append(t.put_fields["two_step_enabled"])
    t.list_category = t.category
    # IssueToken refuses such a grant (INVALID_ARGUMENT); defence in depth: a
    # vault-signed token carrying it anyway is still refused.
    c = live_claims(
        purpose="essential.service.support",
        categories={"user.account": frozenset({"two_step_enabled"})},
        operations=frozenset({"read", "write"}),
    )
    return _denied(sign(c, env.signing_key), t, "FIELD_NOT_GRANTED")


def operation_not_granted(env: Env, rpc: str) -> Case:
    purpose = RPC_PURPOSE[rpc]
    ops = sorted(POLICY.purposes[purpose].operations - {RPC_OPERATION[rpc]})
    t = make_target(env)
    return _denied(env.token(purpose, ops=ops), t, "OPERATION_NOT_GRANTED")


def region_not_granted(env: Env, rpc: str) -> Case:
    t = make_target(env, country="DE")
    tok = env.token(RPC_PURPOSE[rpc], regions=["us", "sg"])
    return _denied(tok, t, "REGION_NOT_GRANTED")


def subject_not_granted(env: Env, rpc: str) -> Case:
    granted = env.subject("DE")
    t = make_target(env)
    tok = env.token(RPC_PURPOSE[rpc], subjects=[granted.subject_id])
    if rpc in ("GetRecord", "DeleteRecord", UPDATE):
        # Addressed by record id: a record of a subject outside the grant answers
        # exactly like a record that does not exist (no existence oracle).
        return Case(tok, t, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    return _denied(tok, t, "SUBJECT_NOT_GRANTED")


def unknown_purpose(env: Env, rpc: str) -> Case:
    t = make_target(env)
    c = live_claims(purpose="marketing.mind_reading", categories={"user.contact.email": None})
    return _denied(sign(c, env.signing_key), t, "UNKNOWN_PURPOSE")


def consent_missing(env: Env, rpc: str) -> Case:
    t = make_target(env)
    return _denied(env.token(PROMOTIONS), t, "CONSENT_REQUIRED")


def _withdrawn(env: Env, *, seeded: bool) -> Case:
    t = make_target(env)
    tok = env.token(PROMOTIONS)
    set_consent = env.seed_consent if seeded else env.set_consent
    set_consent(t.subject_id, PROMOTIONS, True)
    # With consent the very same token reads the record...
    got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=t.record_id), tok)
    assert got.record_id == t.record_id
    # ...and after the withdrawal its next request is refused.
    set_consent(t.subject_id, PROMOTIONS, False)
    return _denied(tok, t, "CONSENT_REQUIRED")


def consent_withdrawn(env: Env, rpc: str) -> Case:
    return _withdrawn(env, seeded=False)


def consent_withdrawn_seeded(env: Env, rpc: str) -> Case:
    return _withdrawn(env, seeded=True)


# A consent-based purpose is told CONSENT_REQUIRED for a minor, consented or
# not: the same answer as for an adult without consent, so it cannot tell minors.
def minor_marketing(env: Env, rpc: str) -> Case:
    t = make_target(env, minor=True)
    return _denied(env.token(PROMOTIONS), t, "CONSENT_REQUIRED")


def minor_marketing_consented(env: Env, rpc: str) -> Case:
    t = make_target(env, minor=True)
    env.set_consent(t.subject_id, PROMOTIONS, True)
    return _denied(env.token(PROMOTIONS), t, "CONSENT_REQUIRED")


def minor_marketing_consented_seeded(env: Env, rpc: str) -> Case:
    t = make_target(env, minor=True)
    env.seed_consent(t.subject_id, PROMOTIONS, True)
    return _denied(env.token(PROMOTIONS), t, "CONSENT_REQUIRED")


def _restricted(env: Env, rpc: str, *, seeded: bool) -> Case:
    t = make_target(env)
    # Export needs a purpose with "export" that is not allowed under restriction.
    tok = env.token(
        "essential.legal_obligation" if rpc in ("ExportSubject", "GetAccessReport") else SERVICE
    )
    env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=t.record_id), tok)
    if seeded:
        env.seed_restriction(t.subject_id, True)
    else:
        env.restrict(t.subject_id, True)
    return Case(tok, t, FAILED_PRECONDITION, "PROCESSING_RESTRICTED")


def restricted(env: Env, rpc: str) -> Case:
    return _restricted(env, rpc, seeded=False)


def restricted_seeded(env: Env, rpc: str) -> Case:
    return _restricted(env, rpc, seeded=True)


DATA = ("PutRecord", UPDATE, "GetRecord", "ListRecords", "DeleteRecord")
ALL = (*VAULT_RPCS, UPDATE)

#: attack -> (builder, the RPCs it applies to)
POLICY_ATTACKS: dict[str, tuple[Callable[[Env, str], Case], tuple[str, ...]]] = {
    "wrong-purpose": (
        wrong_purpose,
        ("PutRecord", "GetRecord", "ListRecords", "DeleteRecord", "ImportSubjects"),
    ),
    "purpose-lacks-category": (
        purpose_lacks_category,
        ("PutRecord", "GetRecord", "ListRecords", "DeleteRecord", "ImportSubjects"),
    ),
    # Every RPC but the reads: each purpose the attack uses has read.
    "purpose-lacks-operation": (
        purpose_lacks_operation,
        tuple(r for r in VAULT_RPCS if RPC_OPERATION[r] != "read"),
    ),
    "category-not-granted": (category_not_granted, (*DATA, "ImportSubjects")),
    "field-not-granted": (field_not_granted, ("PutRecord", UPDATE, "ImportSubjects")),
    "no-field-granted": (
        no_field_granted,
        ("PutRecord", UPDATE, "GetRecord", "ListRecords", "ImportSubjects"),
    ),
    "operation-not-granted": (operation_not_granted, ALL),
    "region-not-granted": (region_not_granted, ALL),
    # FindSubjects filters its answer instead (test_find_subjects_shows_only_granted_subjects).
    "subject-not-granted": (subject_not_granted, tuple(r for r in ALL if r != "FindSubjects")),
    "unknown-purpose": (unknown_purpose, VAULT_RPCS),
    "consent-missing": (consent_missing, ("GetSubject", *DATA, "SetLookups")),
    "consent-withdrawn": (consent_withdrawn, (*DATA, "SetLookups")),
    "consent-withdrawn-seeded": (consent_withdrawn_seeded, (*DATA, "SetLookups")),
    "minor-marketing": (minor_marketing, ("GetSubject", *DATA, "SetLookups")),
    "minor-marketing-consented": (minor_marketing_consented, (*DATA, "SetLookups")),
    "minor-marketing-consented-seeded": (
        minor_marketing_consented_seeded,
        (*DATA, "SetLookups"),
    ),
    "restricted": (restricted, (*DATA, "ExportSubject", "GetAccessReport")),
    "restricted-seeded": (restricted_seeded, (*DATA, "ExportSubject", "GetAccessReport")),
}

POLICY_CASES = [
    pytest.param(attack, rpc, id=f"{attack}-{rpc}")
    for attack, (_, rpcs) in POLICY_ATTACKS.items()
    for rpc in rpcs
]


@pytest.mark.parametrize(("attack", "rpc"), POLICY_CASES)
def test_policy_denial(env: Env, attack: str, rpc: str) -> None:
    build, _ = POLICY_ATTACKS[attack]
    case = build(env, rpc)
    method, request = request_for(rpc, case.target)
    before = env.stored(case.target.subject_id)
    f = env.rpc.fail(method, request, case.token)
    assert (f.code, f.reason) == (case.code, case.reason), str(f)
    for s in [*case.target.canaries, case.token]:
        assert s not in f.seen, "the error carries personal data or the token"
    # Nothing at all was changed by the refused call.
    assert env.stored(case.target.subject_id) == before, "a refused call changed stored data"


def test_find_subjects_shows_only_granted_subjects(env: Env) -> None:
    """A lookup reads no data: a subject-limited token is not refused, it finds
    only its own subjects."""
    t = make_target(env)
    other = env.subject("DE")
    method, request = request_for("FindSubjects", t)
    for granted, found in (([other.subject_id], []), ([t.subject_id], [t.subject_id])):
        reply = env.rpc.call(method, request, env.token(SERVICE, subjects=granted))
        assert list(reply.subject_ids) == found


def test_update_naming_a_granted_subject_cannot_reach_another_subjects_record(env: Env) -> None:
    granted = env.subject("DE")
    t = make_target(env)
    tok = env.token(SERVICE, subjects=[granted.subject_id])
    req = pb.PutRecordRequest(
        subject_id=granted.subject_id,
        category=t.category,
        fields=t.put_fields,
        record_id=t.record_id,
    )
    f = env.rpc.fail("PutRecord", req, tok)
    # The record's subject is outside the grant: the same answer as no record.
    assert (f.code, f.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND"), str(f)
    for s in t.canaries:
        assert s not in f.seen


# -- 3. what a caller sees: filtered reads and listings --------------------------


def test_get_record_returns_only_the_fields_the_token_grants(env: Env) -> None:
    s = env.subject("DE")
    first, last, full = new_canary(), new_canary(), new_canary()
    rec = env.put(s.subject_id, "user.name", {"first": first, "last": last, "full": full})
    tok = env.token(SERVICE, {"user.name": ["first"]})
    got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=rec.record_id), tok)
    assert dict(got.fields) == {"first": first}
    text = reply_text(got)
    assert last not in text and full not in text


def test_get_record_returns_only_the_fields_the_purpose_allows(env: Env) -> None:
    # essential.service.support sees user.account's account_id and username only,
    # even with a token granting the whole category.
    s = env.subject("US")
    values = {f: new_canary() for f in ("account_id", "username", "two_step_enabled", "ecv")}
    rec = env.put(s.subject_id, "user.account", values)
    tok = env.token("essential.service.support", ["user.account"])
    got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=rec.record_id), tok)
    assert dict(got.fields) == {k: values[k] for k in ("account_id", "username")}
    text = reply_text(got)
    assert values["two_step_enabled"] not in text and values["ecv"] not in text


def test_a_partial_update_replaces_granted_fields_and_keeps_the_others(env: Env) -> None:
    s = env.subject("DE")
    last = new_canary()
    rec = env.put(s.subject_id, "user.name", {"first": "Ada", "last": last})
    tok = env.token(SERVICE, {"user.name": ["first"]})
    req = pb.PutRecordRequest(
        subject_id=s.subject_id,
        category="user.name",
        fields={"first": "Grace"},
        record_id=rec.record_id,
        expected_version=1,
    )
    updated = env.rpc.call("PutRecord", req, tok)
    assert dict(updated.fields) == {"first": "Grace"} and updated.version == 2
    assert last not in reply_text(updated)
    full = env.rpc.call(
        "GetRecord", pb.GetRecordRequest(record_id=rec.record_id), env.token(RIGHTS)
    )
    assert dict(full.fields) == {"first": "Grace", "last": last}


@pytest.fixture(scope="module")
def many_categories(env: Env) -> tuple[str, dict[str, pb.Record], dict[str, dict[str, str]]]:
    """A subject with one record in each of several categories (all canaries)."""
    s = env.subject("DE")
    contents = {
        "user.name": {"first": new_canary(), "last": new_canary()},
        "user.contact.email": {"address": new_canary(), "verified": new_canary()},
        "user.contact.address": {"street": new_canary(), "city": new_canary()},
        "user.location.precise": {"latitude": new_canary(), "longitude": new_canary()},
        "user.financial": {"card_number": new_canary()},
        "user.content.feedback": {"ticket_id": new_canary(), "message": new_canary()},
        "user.account": {"account_id": new_canary(), "ecv": new_canary()},
    }
    records = {c: env.put(s.subject_id, c, f) for c, f in contents.items()}
    return s.subject_id, records, contents


def _listing(env: Env, token: str, subject_id: str, page_size: int = 0) -> list[pb.Record]:
    out: list[pb.Record] = []
    page_token = ""
    while True:
        resp = env.rpc.call(
            "ListRecords",
            pb.ListRecordsRequest(
                subject_id=subject_id, page_size=page_size, page_token=page_token
            ),
            token,
        )
        out.extend(resp.records)
        assert page_size == 0 or len(resp.records) <= page_size
        page_token = resp.next_page_token
        if not page_token:
            return out


@pytest.mark.parametrize("page_size", [0, 1])
@pytest.mark.parametrize(
    ("purpose", "categories", "expected"),
    [
        pytest.param(
            SERVICE,
            ["user.name", "user.contact.email"],
            {"user.name": None, "user.contact.email": None},
            id="service-token-for-two-categories",
        ),
        pytest.param(
            SERVICE,
            {"user.name": ["first"], "user.contact.address": ["city"]},
            {"user.name": ["first"], "user.contact.address": ["city"]},
            id="service-token-with-field-grants",
        ),
        pytest.param(
            SERVICE,
            None,
            {
                "user.name": None,
                "user.contact.email": None,
                "user.contact.address": None,
                "user.location.precise": None,
                "user.account": None,
            },
            id="service-purpose-excludes-financial-and-feedback",
        ),
        pytest.param(
            "essential.service.support",
            None,
            {
                "user.name": None,
                "user.contact.email": ["address"],
                "user.content.feedback": None,
                "user.account": ["account_id"],
            },
            id="support-purpose",
        ),
        pytest.param(
            "functional.community.forum",
            None,
            {"user.account": ["account_id"]},
            id="forum-purpose",
        ),
        pytest.param("analytics.reporting", None, {}, id="analytics-sees-nothing-here"),
    ],
)
def test_list_records_returns_exactly_what_the_token_and_purpose_allow(
    env: Env,
    many_categories: tuple[str, dict[str, pb.Record], dict[str, dict[str, str]]],
    purpose: str,
    categories: Any,
    expected: dict[str, list[str] | None],
    page_size: int,
) -> None:
    subject_id, records, contents = many_categories
    tok = env.token(purpose, categories, ops=["read"])
    listed = _listing(env, tok, subject_id, page_size)
    got = {r.category: dict(r.fields) for r in listed}
    want = {
        c: (
            dict(contents[c]) if fs is None else {f: contents[c][f] for f in fs if f in contents[c]}
        )
        for c, fs in expected.items()
    }
    assert got == want
    assert sorted(r.record_id for r in listed) == sorted(records[c].record_id for c in expected)
    seen = "".join(reply_text(r) for r in listed)
    shown = {v for fields in want.values() for v in fields.values()}
    for fields in contents.values():
        for v in fields.values():
            if v not in shown:
                assert v not in seen

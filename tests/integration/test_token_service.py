"""vault.v1.TokenService against the running node: who may issue, exchange and
revoke purpose tokens, and what the tokens then allow."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from tests.conftest import POLICY, Stack
from tests.integration._access import (
    RIGHTS,
    SERVICE,
    Env,
    grants,
    live_claims,
    new_canary,
    sign,
    wait_until_refused,
)
from vault.tokens import Claims, decode
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(db_stack: Stack) -> Stack:
    """Every test of this module runs on SQLite and on PostgreSQL."""
    return db_stack


UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT


def verified(env: Env, token: str) -> Claims:
    """The claims of ``token`` as the node verifies them."""
    return decode(token, env.stack.vault.authority.verifier._keys, now=time.time())


def works(env: Env, token: str) -> None:
    """The token is accepted (GetSubject of a subject it may read)."""
    s = env.subject("DE")
    got = env.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=s.subject_id), token)
    assert got.subject_id == s.subject_id


def issue_request(purpose: str = SERVICE, **kw: Any) -> pb.IssueTokenRequest:
    return pb.IssueTokenRequest(
        service=kw.pop("service", "crm-backend"),
        purpose=purpose,
        categories=grants(purpose, kw.pop("categories", None)),
        operations=kw.pop("operations", ["read"]),
        regions=kw.pop("regions", ["de"]),
        **kw,
    )


# -- IssueToken -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credential",
    ["none", "garbage", "purpose-token", "admin-with-wrong-scheme", "admin-altered"],
)
def test_issue_token_needs_the_admin_credential(env: Env, credential: str) -> None:
    admin = env.stack.admin
    authorization = {
        "none": None,
        "garbage": "Bearer garbage",
        "purpose-token": f"Bearer {env.token(SERVICE)}",
        "admin-with-wrong-scheme": f"Basic {admin}",
        "admin-altered": f"Bearer {admin[:-1]}{'A' if admin[-1] != 'A' else 'B'}",
    }[credential]
    f = env.rpc.fail("IssueToken", issue_request(), authorization=authorization)
    assert (f.code, f.reason) == (UNAUTHENTICATED, "ADMIN_REQUIRED"), str(f)
    assert admin not in f.seen and admin[:-1] not in f.seen


@pytest.mark.parametrize(
    ("request_kw", "violation"),
    [
        pytest.param(
            {"categories": ["user.name", "user.financial"]},
            "categories",
            id="category-not-in-purpose",
        ),
        pytest.param(
            {
                "purpose": "marketing.communications.email",
                "categories": ["user.contact.phone_number"],
            },
            "categories",
            id="category-of-a-sibling-purpose",
        ),
        pytest.param(
            {"purpose": "marketing.communications.email", "operations": ["read", "write"]},
            "operations",
            id="operation-not-in-purpose",
        ),
        pytest.param({"operations": ["read", "erase"]}, "operations", id="erase-for-service"),
        pytest.param({"purpose": "marketing.mind_reading"}, "purpose", id="unknown-purpose"),
        pytest.param({"ttl_seconds": 10**9}, "ttl_seconds", id="ttl-too-long"),
    ],
)
def test_issue_token_refuses_grants_the_purpose_does_not_have(
    env: Env, request_kw: dict[str, Any], violation: str
) -> None:
    kw = dict(request_kw)
    purpose = kw.pop("purpose", SERVICE)
    if purpose not in POLICY.purposes:
        req = pb.IssueTokenRequest(
            service="crm-backend",
            purpose=purpose,
            categories=[pb.CategoryGrant(category="user.name")],
            operations=["read"],
            regions=["de"],
        )
    else:
        req = issue_request(purpose, **kw)
    f = env.rpc.fail("IssueToken", req, env.stack.admin)
    assert (f.code, f.reason) == (INVALID_ARGUMENT, "INVALID_ARGUMENT"), str(f)
    assert violation in [field for field, _ in f.violations], f.violations


def test_an_issued_token_carries_exactly_the_requested_grant(env: Env) -> None:
    s = env.subject("DE")
    resp = env.rpc.call(
        "IssueToken",
        issue_request(
            categories={"user.name": ["first"], "user.contact.email": []},
            operations=["read", "write"],
            regions=["de", "us"],
            subjects=[s.subject_id],
            ttl_seconds=120,
        ),
        env.stack.admin,
    )
    c = verified(env, resp.token)
    assert c.jti == resp.token_id
    assert (c.sub, c.purpose) == ("crm-backend", SERVICE)
    assert dict(c.categories) == {"user.name": frozenset({"first"}), "user.contact.email": None}
    assert c.operations == {"read", "write"} and c.regions == {"de", "us"}
    assert c.subjects == frozenset({s.subject_id}) and c.parent_jti is None
    assert c.exp == resp.expires_at.seconds and 110 <= c.exp - time.time() <= 121


# -- ExchangeToken ------------------------------------------------------------------------


def test_an_exchanged_token_works_within_its_narrower_grant(env: Env) -> None:
    a, b = env.subject("DE"), env.subject("DE")
    us = env.subject("US")
    first, last, address = new_canary(), new_canary(), new_canary()
    name = env.put(a.subject_id, "user.name", {"first": first, "last": last})
    email = env.put(a.subject_id, "user.contact.email", {"address": address})
    b_name = env.put(b.subject_id, "user.name", {"first": new_canary()})
    us_name = env.put(us.subject_id, "user.name", {"first": new_canary()})
    parent = env.issue(SERVICE, ttl=600)

    child = env.exchange(
        parent.token,
        categories={"user.name": ["first"]},
        operations=["read"],
        regions=["de"],
        subjects=[a.subject_id],
        ttl_seconds=60,
    )
    c = verified(env, child.token)
    assert c.parent_jti == parent.token_id and c.jti == child.token_id != parent.token_id
    assert c.purpose == SERVICE and c.sub == "test-service"
    assert dict(c.categories) == {"user.name": frozenset({"first"})}
    assert (c.operations, c.regions, c.subjects) == (
        frozenset({"read"}),
        frozenset({"de"}),
        frozenset({a.subject_id}),
    )
    assert child.expires_at.seconds <= parent.expires_at.seconds
    assert child.expires_at.seconds - time.time() <= 61

    got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=name.record_id), child.token)
    assert dict(got.fields) == {"first": first}
    listed = env.rpc.call(
        "ListRecords", pb.ListRecordsRequest(subject_id=a.subject_id), child.token
    )
    assert [(r.record_id, dict(r.fields)) for r in listed.records] == [
        (name.record_id, {"first": first})
    ]
    secrets = [last, address]
    for method, req, reason in (
        ("GetRecord", pb.GetRecordRequest(record_id=email.record_id), "CATEGORY_NOT_GRANTED"),
        (
            "PutRecord",
            pb.PutRecordRequest(
                subject_id=a.subject_id, category="user.name", fields={"first": "x"}
            ),
            "OPERATION_NOT_GRANTED",
        ),
        ("GetRecord", pb.GetRecordRequest(record_id=us_name.record_id), "REGION_NOT_GRANTED"),
    ):
        env.rpc.expect(method, req, child.token, PERMISSION_DENIED, reason, secrets=secrets)
    # Another subject's record answers like a missing one (no existence oracle).
    env.rpc.expect(
        "GetRecord",
        pb.GetRecordRequest(record_id=b_name.record_id),
        child.token,
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
        secrets=secrets,
    )
    # The parent is unaffected by its child's narrowness.
    got = env.rpc.call("GetRecord", pb.GetRecordRequest(record_id=email.record_id), parent.token)
    assert dict(got.fields) == {"address": address}


@pytest.fixture(scope="module")
def narrow_parent(env: Env) -> tuple[pb.TokenResponse, str, str]:
    """A parent granting little: user.name/first and email, read, de, one subject, 300 s."""
    a, b = env.subject("DE"), env.subject("DE")
    parent = env.issue(
        SERVICE,
        {"user.name": ["first"], "user.contact.email": []},
        ops=["read"],
        regions=["de"],
        subjects=[a.subject_id],
        ttl=300,
    )
    return parent, a.subject_id, b.subject_id


WIDENINGS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "more-categories": lambda a, b: {"categories": ["user.name", "user.contact.phone_number"]},
    "category-outside-the-purpose": lambda a, b: {"categories": ["user.financial"]},
    "more-fields": lambda a, b: {"categories": {"user.name": ["first", "last"]}},
    "more-operations": lambda a, b: {"operations": ["read", "write"]},
    "other-operation": lambda a, b: {"operations": ["delete"]},
    "more-regions": lambda a, b: {"regions": ["de", "us"]},
    "other-region": lambda a, b: {"regions": ["sg"]},
    "more-subjects": lambda a, b: {"subjects": [a, b]},
    "other-subject": lambda a, b: {"subjects": [b]},
}


@pytest.mark.parametrize("widening", WIDENINGS)
def test_exchange_never_widens_a_token(
    env: Env, narrow_parent: tuple[pb.TokenResponse, str, str], widening: str
) -> None:
    parent, a, b = narrow_parent
    req = WIDENINGS[widening](a, b)
    cats = req.pop("categories", None)
    request = pb.ExchangeTokenRequest(
        categories=grants(SERVICE, cats) if cats is not None else [], **req
    )
    env.rpc.expect("ExchangeToken", request, parent.token, PERMISSION_DENIED, "EXCHANGE_WIDENS")


def test_exchange_asking_for_a_longer_life_is_permission_denied(
    env: Env, narrow_parent: tuple[pb.TokenResponse, str, str]
) -> None:
    parent, _, _ = narrow_parent
    env.rpc.expect(
        "ExchangeToken",
        pb.ExchangeTokenRequest(ttl_seconds=3600),
        parent.token,
        PERMISSION_DENIED,
        "EXCHANGE_WIDENS",
    )


def test_an_exchanged_token_never_outlives_its_parent(
    env: Env, narrow_parent: tuple[pb.TokenResponse, str, str]
) -> None:
    parent, _, _ = narrow_parent
    parent_exp = verified(env, parent.token).exp
    assert parent_exp == parent.expires_at.seconds

    # A life inside the parent's: exactly what was asked for.
    before = int(time.time())
    child = env.exchange(parent.token, ttl_seconds=60)
    after = int(time.time())
    exp = verified(env, child.token).exp
    assert exp == child.expires_at.seconds
    assert before + 60 <= exp <= after + 60 and exp < parent_exp

    # No life asked for: the parent's end, not a default from now.
    assert verified(env, env.exchange(parent.token).token).exp == parent_exp

    # Beyond the parent's end, even by a few seconds: refused.
    left = parent_exp - int(time.time())
    assert left > 60, "the parent fixture expires too soon for this test"
    env.rpc.expect(
        "ExchangeToken",
        pb.ExchangeTokenRequest(ttl_seconds=left + 5),
        parent.token,
        PERMISSION_DENIED,
        "EXCHANGE_WIDENS",
    )


def test_a_child_cannot_exchange_its_way_back_to_the_parents_grant(env: Env) -> None:
    parent = env.issue(SERVICE, ["user.name", "user.contact.email"], ops=["read", "write"])
    child = env.exchange(parent.token, categories=["user.name"], operations=["read"])
    for req in (
        pb.ExchangeTokenRequest(categories=grants(SERVICE, ["user.name", "user.contact.email"])),
        pb.ExchangeTokenRequest(operations=["read", "write"]),
    ):
        env.rpc.expect("ExchangeToken", req, child.token, PERMISSION_DENIED, "EXCHANGE_WIDENS")
    # A grandchild within the child's grant is fine.
    grandchild = env.exchange(child.token, subjects=[env.subject("DE").subject_id])
    assert verified(env, grandchild.token).parent_jti == child.token_id


@pytest.mark.parametrize("credential", ["none", "admin", "expired", "revoked"])
def test_exchange_needs_a_valid_purpose_token(env: Env, credential: str) -> None:
    if credential == "revoked":
        t = env.issue(SERVICE)
        env.revoke(t.token_id, env.stack.admin)
        token: str | None = t.token
        reason = "REVOKED"
    else:
        token, reason = {
            "none": (None, "MISSING_TOKEN"),
            "admin": (env.stack.admin, "MALFORMED_TOKEN"),
            "expired": (
                sign(live_claims(now=time.time() - 600, ttl=540), env.signing_key),
                "EXPIRED",
            ),
        }[credential]
    f = env.rpc.fail("ExchangeToken", pb.ExchangeTokenRequest(operations=["read"]), token)
    assert (f.code, f.reason) == (UNAUTHENTICATED, reason), str(f)


@pytest.mark.parametrize(
    ("nbf_ahead", "reason"),
    [(10, None), (120, "NOT_YET_VALID")],
    ids=["within-the-30s-leeway", "beyond-the-leeway"],
)
def test_a_token_from_an_issuer_clock_running_ahead(
    env: Env, nbf_ahead: int, reason: str | None
) -> None:
    now = int(time.time())
    token = sign(live_claims(now=now + nbf_ahead, ttl=600 - nbf_ahead), env.signing_key)
    if reason is None:
        works(env, token)
    else:
        f = env.rpc.fail("GetSubject", pb.GetSubjectRequest(subject_id="de_sub_" + "a" * 26), token)
        assert (f.code, f.reason) == (UNAUTHENTICATED, reason), str(f)


# -- RevokeToken ---------------------------------------------------------------------------


def revoke_request(token_id: str) -> pb.RevokeTokenRequest:
    return pb.RevokeTokenRequest(token_id=token_id)


def refused_at_once(env: Env, token: str) -> None:
    """The node that took a revocation refuses the token's very next request."""
    req = pb.GetSubjectRequest(subject_id="de_sub_" + "a" * 26)
    env.rpc.expect("GetSubject", req, token, UNAUTHENTICATED, "REVOKED")


def test_a_holder_revokes_its_own_token(env: Env) -> None:
    t = env.issue(SERVICE)
    works(env, t.token)
    resp = env.revoke(t.token_id, t.token)
    assert (resp.token_id, resp.revoked) == (t.token_id, True)
    refused_at_once(env, t.token)
    # Already revoked: the admin sees revoked=False; the token itself is refused.
    assert env.revoke(t.token_id, env.stack.admin).revoked is False
    env.rpc.expect("RevokeToken", revoke_request(t.token_id), t.token, UNAUTHENTICATED, "REVOKED")


def test_a_holder_revokes_its_child_and_keeps_its_own_token(env: Env) -> None:
    parent = env.issue(SERVICE)
    child = env.exchange(parent.token, operations=["read"])
    works(env, child.token)
    assert env.revoke(child.token_id, parent.token).revoked is True
    refused_at_once(env, child.token)
    works(env, parent.token)


@pytest.mark.parametrize("victim", ["unrelated", "parent", "sibling", "unknown-id"])
def test_a_holder_cannot_revoke_tokens_that_are_not_its_own(env: Env, victim: str) -> None:
    parent = env.issue(SERVICE)
    child = env.exchange(parent.token, operations=["read"])
    sibling = env.exchange(parent.token, operations=["read"])
    unrelated = env.issue(SERVICE)
    caller, target = {
        "unrelated": (parent.token, unrelated),
        "parent": (child.token, parent),
        "sibling": (child.token, sibling),
        "unknown-id": (parent.token, None),
    }[victim]
    target_id = target.token_id if target is not None else "A" * 22
    env.rpc.expect(
        "RevokeToken",
        revoke_request(target_id),
        caller,
        PERMISSION_DENIED,
        "REVOKE_NOT_ALLOWED",
        secrets=[t.token for t in (parent, child, sibling, unrelated)],
    )
    # Nothing was revoked: not on this node, nor in the control database that
    # every other node polls.
    revoked = {r.jti for r in env.stack.vault.control.revocations_after(0)}
    if target is not None:
        assert target.token_id not in revoked
        works(env, target.token)
    assert target_id not in revoked
    works(env, caller)


def test_the_admin_revokes_any_token(env: Env) -> None:
    a = env.issue(SERVICE)
    b = env.issue(RIGHTS)
    child = env.exchange(a.token, operations=["read"])
    # Child first: revoking its parent would revoke it as well.
    for t in (child, a, b):
        assert env.revoke(t.token_id, env.stack.admin).revoked is True
    for t in (a, b, child):
        refused_at_once(env, t.token)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [(None, "MISSING_TOKEN"), ("Bearer garbage", "MALFORMED_TOKEN")],
)
def test_revoke_needs_a_credential(env: Env, authorization: str | None, reason: str) -> None:
    victim = env.issue(SERVICE)
    f = env.rpc.fail("RevokeToken", revoke_request(victim.token_id), authorization=authorization)
    assert (f.code, f.reason) == (UNAUTHENTICATED, reason), str(f)
    works(env, victim.token)


@pytest.fixture(scope="module")
def two_envs(two_nodes: tuple[Stack, Stack]) -> Iterator[tuple[Env, Env]]:
    envs = [Env.connect(n) for n in two_nodes]
    yield envs[0], envs[1]
    for e in envs:
        e.close()


@pytest.mark.parametrize("direction", ["first-to-second", "second-to-first"])
def test_a_revocation_reaches_another_node(two_envs: tuple[Env, Env], direction: str) -> None:
    """Within about a second (the other node polls every 0.25 s); asserted within
    5 s so that a loaded machine does not fail it, the measured delay printed."""
    here, there = two_envs if direction == "first-to-second" else two_envs[::-1]
    t = here.issue(SERVICE)
    s = here.subject("DE")
    for node in (here, there):
        got = node.rpc.call("GetSubject", pb.GetSubjectRequest(subject_id=s.subject_id), t.token)
        assert got.subject_id == s.subject_id
    assert here.revoke(t.token_id, t.token).revoked is True
    refused_at_once(here, t.token)
    delay = wait_until_refused(there.rpc, t.token, "REVOKED", within=5.0)
    print(f"revocation seen by the other node after {delay * 1000:.0f} ms ({direction})")


def test_issue_refuses_fields_the_purpose_cannot_see(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stack.issue("essential.service.support", {"user.account": ["two_step_enabled"]})
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_revoking_a_parent_revokes_its_exchanged_children(stack: Stack) -> None:
    from vault.client import VaultClientError

    parent = stack.client(stack.issue())
    s = parent.create_subject("DE")
    r = parent.put_record(s.subject_id, "user.name", {"first": "Ada"})
    child = stack.client(parent.exchange_token(operations=["read"]).token)
    grandchild = stack.client(child.exchange_token(categories=["user.name"]).token)
    assert grandchild.get_record(r.record_id).fields == {"first": "Ada"}
    parent_id = stack.vault.authority.verifier.verify(parent.token or "").jti
    assert stack.client(stack.admin).revoke_token(parent_id).revoked
    for c in (parent, child, grandchild):
        with pytest.raises(VaultClientError) as e:
            c.get_record(r.record_id)
        assert e.value.reason == "REVOKED"

"""Helpers for the access-control integration tests.

Raw gRPC calls (so every RPC of both services, and any ``authorization``
header, can be sent), real tokens from the running server's TokenService, and
forged tokens for the attacks: signed by another key, tampered, expired, or
signed by the vault's own key with claims IssueToken would never grant.

Every failure is captured with everything the caller can see (status message,
trailing metadata including the binary ``google.rpc.Status`` details, the
debug string) so tests can assert that no personal data leaks through it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import pyseto
from sqlalchemy import text

from tests.conftest import POLICY, Stack
from tests.factories import make_claims
from vault.client import VaultClientError
from vault.store import SubjectState
from vault.tokens import (
    IMPLICIT_ASSERTION,
    REGIONS,
    Claims,
    SigningKey,
    issue,
)
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

SERVICE = "essential.service"
RIGHTS = "essential.subject_rights"
PROMOTIONS = "marketing.promotions"
MARKETING_EMAIL = "marketing.communications.email"

#: Every RPC of vault.v1.PersonalDataVault.
VAULT_RPCS = (
    "CreateSubject",
    "GetSubject",
    "PutRecord",
    "GetRecord",
    "ListRecords",
    "DeleteRecord",
    "SetConsent",
    "ListConsents",
    "RestrictProcessing",
    "EraseSubject",
    "CancelErasure",
    "ExportSubject",
    "SetLookups",
    "FindSubjects",
    "GetAccessReport",
    "ImportSubjects",
)
#: Server-streaming RPCs: the reply is read chunk by chunk (errors arrive while reading).
STREAMING_RPCS = frozenset({"ExportSubject", "GetAccessReport"})
#: Client-streaming RPCs: the request is a list of messages, sent as a stream.
CLIENT_STREAMING_RPCS = frozenset({"ImportSubjects"})
TOKEN_RPCS = frozenset({"IssueToken", "ExchangeToken", "RevokeToken"})
#: The operation each RPC needs, and the purpose a test acts under for it.
RPC_OPERATION = {
    "CreateSubject": "write",
    "GetSubject": "read",
    "PutRecord": "write",
    "PutRecord(update)": "write",
    "GetRecord": "read",
    "ListRecords": "read",
    "DeleteRecord": "delete",
    "SetConsent": "consent",
    "ListConsents": "consent",
    "RestrictProcessing": "consent",
    "EraseSubject": "erase",
    "CancelErasure": "erase",
    "ExportSubject": "export",
    "GetAccessReport": "export",
    "SetLookups": "write",
    "FindSubjects": "read",
    "ImportSubjects": "write",
}
#: essential.service reads, writes and deletes; only the subject's own request
#: (essential.subject_rights) has consent, erase and export.
RPC_PURPOSE = {
    rpc: SERVICE if op in {"read", "write", "delete"} else RIGHTS
    for rpc, op in RPC_OPERATION.items()
}


def new_canary() -> str:
    return f"CANARY-{uuid.uuid4().hex}"


# -- failures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """One failed call as the caller saw it."""

    code: grpc.StatusCode
    reason: str
    message: str
    violations: list[tuple[str, str]]
    #: Everything returned to the caller, for leak checks.
    seen: str

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason}: {self.message}"


def failure_of(err: grpc.RpcError) -> Failure:
    call: Any = err
    parsed = VaultClientError.from_rpc_error(err)
    code, message = parsed.code, parsed.message
    reason, violations = parsed.reason, parsed.violations
    seen = [message, call.debug_error_string() or ""]
    for md in (call.initial_metadata() or (), call.trailing_metadata() or ()):
        for key, value in md:
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            seen.append(f"{key}={text}")
    return Failure(code, reason, message, violations, "\n".join(seen))


def assert_failure(
    failure: Failure,
    code: grpc.StatusCode,
    reason: str | None,
    secrets: Iterable[str] = (),
) -> None:
    assert (failure.code, failure.reason) == (
        code,
        reason if reason is not None else failure.reason,
    ), f"expected {code.name} {reason}, got {failure}"
    for secret in secrets:
        assert secret not in failure.seen, "the error carries personal data or a token"


def reply_text(reply: Any) -> str:
    """A reply as bytes-ish text, for checks that a value is absent from it."""
    raw: bytes = reply.SerializeToString()
    return raw.decode("latin-1") + str(reply)


# -- raw calls ----------------------------------------------------------------------


class Rpc:
    """Both services over one plaintext channel to the test node."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self._vault = pb_grpc.PersonalDataVaultStub(self.channel)  # type: ignore[no-untyped-call]
        self._tokens = pb_grpc.TokenServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.channel.close()

    def _send(self, method: str, request: Any, token: str | None, authorization: str | None) -> Any:
        stub = self._tokens if method in TOKEN_RPCS else self._vault
        if authorization is None and token is not None:
            authorization = f"Bearer {token}"
        md = (("authorization", authorization),) if authorization is not None else ()
        if method in CLIENT_STREAMING_RPCS:
            request = iter(request)
        return getattr(stub, method)(request, metadata=md, timeout=10)

    def call(
        self,
        method: str,
        request: Any,
        token: str | None = None,
        *,
        authorization: str | None = None,
    ) -> Any:
        """The reply; of a streaming RPC, the list of its chunks."""
        reply = self._send(method, request, token, authorization)
        if method not in STREAMING_RPCS:
            return reply
        return list(reply)

    def fail(
        self,
        method: str,
        request: Any,
        token: str | None = None,
        *,
        authorization: str | None = None,
    ) -> Failure:
        """The failure of a call that must be refused. A streaming reply is read
        chunk by chunk: a refusal must come before any chunk, not after some."""
        received: list[Any] = []
        try:
            reply = self._send(method, request, token, authorization)
            if method in STREAMING_RPCS:
                for chunk in reply:
                    received.append(chunk)
                reply = received
        except grpc.RpcError as e:
            assert not received, f"{method} sent {len(received)} chunk(s) before refusing"
            return failure_of(e)
        raise AssertionError(f"{method} succeeded ({type(reply).__name__}) but must be refused")

    def expect(
        self,
        method: str,
        request: Any,
        token: str | None,
        code: grpc.StatusCode,
        reason: str | None,
        *,
        secrets: Iterable[str] = (),
        authorization: str | None = None,
    ) -> Failure:
        f = self.fail(method, request, token, authorization=authorization)
        secrets = [*secrets, *([token] if token else [])]
        assert_failure(f, code, reason, secrets)
        return f


# -- tokens -------------------------------------------------------------------------


Categories = Mapping[str, list[str]] | list[str] | None


def grants(purpose: str, categories: Categories) -> list[pb.CategoryGrant]:
    cats: Mapping[str, list[str]] | list[str] = (
        categories if categories is not None else sorted(POLICY.purposes[purpose].categories)
    )
    if isinstance(cats, Mapping):
        return [pb.CategoryGrant(category=c, fields=f) for c, f in cats.items()]
    return [pb.CategoryGrant(category=c) for c in cats]


@dataclass
class Env:
    """A node, a raw channel to it, and the tokens the setup steps use."""

    stack: Stack
    rpc: Rpc
    _setup_tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def connect(cls, stack: Stack) -> Env:
        return cls(stack, Rpc(stack.target))

    def close(self) -> None:
        self.rpc.close()

    # tokens

    def issue(
        self,
        purpose: str = SERVICE,
        categories: Categories = None,
        ops: list[str] | None = None,
        *,
        regions: list[str] | None = None,
        subjects: list[str] | None = None,
        ttl: int = 600,
        service: str = "test-service",
    ) -> pb.TokenResponse:
        req = pb.IssueTokenRequest(
            service=service,
            purpose=purpose,
            categories=grants(purpose, categories),
            operations=ops if ops is not None else sorted(POLICY.purposes[purpose].operations),
            regions=regions if regions is not None else sorted(REGIONS),
            subjects=subjects or [],
            ttl_seconds=ttl,
        )
        return self.rpc.call("IssueToken", req, self.stack.admin)  # type: ignore[no-any-return]

    def token(self, purpose: str = SERVICE, categories: Categories = None, **kw: Any) -> str:
        return str(self.issue(purpose, categories, **kw).token)

    def setup_token(self, purpose: str) -> str:
        if purpose not in self._setup_tokens:
            self._setup_tokens[purpose] = self.token(purpose, ttl=3600)
        return self._setup_tokens[purpose]

    def exchange(self, token: str, **kw: Any) -> pb.TokenResponse:
        cats = kw.pop("categories", None)
        req = pb.ExchangeTokenRequest(
            categories=grants(SERVICE, cats) if cats is not None else [], **kw
        )
        return self.rpc.call("ExchangeToken", req, token)  # type: ignore[no-any-return]

    def revoke(self, token_id: str, bearer: str) -> pb.RevokeTokenResponse:
        return self.rpc.call(  # type: ignore[no-any-return]
            "RevokeToken", pb.RevokeTokenRequest(token_id=token_id), bearer
        )

    # data, written with broad setup tokens

    def subject(
        self, country: str = "DE", *, minor: bool = False, email: str | None = None
    ) -> pb.Subject:
        lookups = [pb.Lookup(kind="email", value=email)] if email else []
        return self.rpc.call(  # type: ignore[no-any-return]
            "CreateSubject",
            pb.CreateSubjectRequest(country=country, minor=minor, lookups=lookups),
            self.setup_token(SERVICE),
        )

    def put(self, subject_id: str, category: str, fields: Mapping[str, str]) -> pb.Record:
        return self.rpc.call(  # type: ignore[no-any-return]
            "PutRecord",
            pb.PutRecordRequest(subject_id=subject_id, category=category, fields=dict(fields)),
            self.setup_token(RIGHTS),
        )

    # consent and restriction through the API (the subject's own request)

    def set_consent(self, subject_id: str, purpose: str, granted: bool) -> pb.Consent:
        return self.rpc.call(  # type: ignore[no-any-return]
            "SetConsent",
            pb.SetConsentRequest(
                subject_id=subject_id, purpose=purpose, granted=granted, source="test-form-v1"
            ),
            self.setup_token(RIGHTS),
        )

    def restrict(self, subject_id: str, restricted: bool) -> pb.Subject:
        return self.rpc.call(  # type: ignore[no-any-return]
            "RestrictProcessing",
            pb.RestrictProcessingRequest(subject_id=subject_id, restricted=restricted),
            self.setup_token(RIGHTS),
        )

    # the same state written straight into the subject's cell database, so the
    # enforcement on the read/write path is tested independently of those RPCs

    def seed_consent(self, subject_id: str, purpose: str, granted: bool) -> None:
        store = self.stack.vault.parts.stores[subject_id[:2]]
        store.set_consent(subject_id, purpose, granted, "seeded", time.time_ns() // 1000)

    def seed_restriction(self, subject_id: str, restricted: bool) -> None:
        store = self.stack.vault.parts.stores[subject_id[:2]]
        state = SubjectState.RESTRICTED if restricted else SubjectState.ACTIVE
        assert store.set_state(subject_id, state, time.time_ns() // 1000)

    # what is stored

    def stored(self, subject_id: str) -> dict[str, Any]:
        """Everything stored about a subject, as rows (nothing decrypted): to
        compare before and after a refused call. Read through the node's own
        connection pool, never by opening the live SQLite file here."""
        region = subject_id[:2]
        engine = self.stack.vault.parts.stores[region].engine
        queries = {
            "subject": "SELECT state, minor, key_name, wrapped_dek, updated_at"
            " FROM subjects WHERE id = :s",
            "records": "SELECT id, category, version, envelope, updated_at, expires_at"
            " FROM records WHERE subject_id = :s ORDER BY id",
            "consents": "SELECT purpose, granted, source, updated_at"
            " FROM consents WHERE subject_id = :s ORDER BY purpose",
            "lookups": "SELECT kind, digest FROM lookups WHERE subject_id = :s"
            " ORDER BY kind, digest",
            "subjects in the region": "SELECT count(*) FROM subjects",
        }
        with engine.connect() as db:
            out: dict[str, Any] = {
                k: [tuple(r) for r in db.execute(text(q), {"s": subject_id})]
                for k, q in queries.items()
            }
            db.rollback()
        out["erasure"] = self.stack.vault.control.erasure(subject_id)
        key = self.stack.bao.root().secrets.transit.read_key(
            name=f"subject-{subject_id}", mount_point=f"transit-{region}"
        )
        out["key versions"] = sorted(key["data"]["keys"])
        return out

    # forgeries

    @property
    def signing_key(self) -> SigningKey:
        return self.stack.vault.authority._signing


def live_claims(*, now: float | None = None, ttl: int = 600, **claims: Any) -> Claims:
    """:func:`~tests.factories.make_claims` for the running node: valid from now
    (or ``now``) for ``ttl`` seconds, for any subject. Bypasses IssueToken's checks."""
    return make_claims(
        now=time.time() if now is None else now, ttl=ttl, **{"subjects": None, **claims}
    )


def _dumps(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64d(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def sign_raw(payload: bytes, key: SigningKey, *, kid: str | None = None) -> str:
    """A v4.public token over arbitrary ``payload``, claiming key id ``kid``."""
    footer = _dumps({"kid": kid if kid is not None else key.kid})
    token: bytes = pyseto.encode(
        key._paseto, payload, footer=footer, implicit_assertion=IMPLICIT_ASSERTION
    )
    return token.decode()


def sign(c: Claims, key: SigningKey) -> str:
    return issue(c, key)


def tamper(token: str, edit: Callable[[bytes], bytes]) -> str:
    """``token`` with its signed payload bytes edited (the signature kept)."""
    header, body, footer = token.rsplit(".", 2)
    raw = b64d(body)
    message, signature = raw[:-64], raw[-64:]
    edited = edit(message)
    assert edited != message
    return f"{header}.{b64e(edited + signature)}.{footer}"


def wait_until_refused(rpc: Rpc, token: str, reason: str, *, within: float = 5.0) -> float:
    """Polls GetSubject with ``token`` until it is refused with ``reason``; the delay.
    ``within`` is generous: the machine running the tests may be loaded."""
    start = time.monotonic()
    req = pb.GetSubjectRequest(subject_id="de_sub_" + "a" * 26)
    while True:
        try:
            rpc.call("GetSubject", req, token)
            got = "OK"
        except grpc.RpcError as e:
            f = failure_of(e)
            if (f.code, f.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason):
                return time.monotonic() - start
            got = str(f)
        if time.monotonic() - start > within:
            raise AssertionError(f"token still not refused with {reason} after {within}s: {got}")
        time.sleep(0.02)

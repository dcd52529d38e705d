"""The ``vault.v1.PersonalDataVault`` servicer: parse → domain → reply.

Domain calls run inline on the event loop when every served cell is a local
SQLite file and the call needs no key-service round trip; otherwise (cache
miss, subject creation, a networked database) on a thread pool. See
:mod:`vault._inline`. Errors are mapped in one place
(:mod:`vault.service._status`); the access log carries method, status,
duration and who called (the token's ``sub``, the client certificate's
identity under mutual TLS) — never request or response content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc

from vault._inline import WouldBlock, nonblocking
from vault.errors import FieldViolation, InvalidArgument, VaultError
from vault.policy import Caller
from vault.residency import Node
from vault.service._convert import consent_pb, erasure_pb, record_pb, subject_pb
from vault.service._status import code_for, internal_status, to_status
from vault.tokens import Claims
from vault.tokens.authority import DEFAULT_TTL, IssueRequest, TokenAuthority
from vault.transport import client_identity, log_safe
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

log = logging.getLogger("vault.access")
Ctx = grpc.aio.ServicerContext[Any, Any]
EXPORT_CHUNK_BYTES = 64 * 1024
T = TypeVar("T")


def _authorization(context: Ctx) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


@dataclasses.dataclass(slots=True)
class _Who:
    """Who made a call, for the access log: the client certificate's identity
    (from the handshake, mutual TLS only) and, once authenticated, the token's
    ``sub`` (``admin`` for the administrator credential)."""

    client: str | None
    sub: str | None = None

    @classmethod
    def of(cls, context: Ctx) -> _Who:
        return cls(client_identity(context.auth_context()))

    def authenticated(self, caller: Caller) -> Caller:
        """``caller`` with the client certificate's identity; its ``sub`` noted."""
        self.sub = caller.service
        if self.client is None:
            return caller
        return dataclasses.replace(caller, client_identity=self.client)

    def __str__(self) -> str:
        return f"sub={log_safe(self.sub)} client={log_safe(self.client)}"


class _Base:
    def __init__(self, node: Node, auth: TokenAuthority, executor: ThreadPoolExecutor) -> None:
        self._node = node
        self._auth = auth
        self._executor = executor

    async def _run(
        self,
        method: str,
        context: Ctx,
        fn: Callable[..., T],
        *args: Any,
        who: _Who | None = None,
        **kwargs: Any,
    ) -> T:
        """Authenticates the caller, then runs ``fn(caller, *args, **kwargs)``.

        The caller carries the client certificate's identity (mutual TLS).
        """
        who = who or _Who.of(context)

        def authenticated() -> T:
            caller = who.authenticated(self._auth.authenticate(_authorization(context)))
            return fn(caller, *args, **kwargs)

        return await self._guarded(method, context, authenticated, who=who)

    async def _guarded(
        self,
        method: str,
        context: Ctx,
        fn: Callable[[], T],
        *,
        pool: bool = False,
        who: _Who | None = None,
    ) -> T:
        """Runs ``fn`` and maps any failure to its status (``pool``: never inline)."""
        start = time.perf_counter()
        who = who or _Who.of(context)
        try:
            if pool:
                result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
            else:
                result = await self._call(fn)
        except VaultError as e:
            code = code_for(e)
            log.info("%s %s %s %.1fms %s", method, code.name, e.reason, _ms(start), who)
            await _abort(context, to_status(e))
        except Exception as e:
            # The exception text may quote SQL parameters: log its type only.
            log.error("%s INTERNAL %s %.1fms %s", method, type(e).__name__, _ms(start), who)
            await _abort(context, internal_status())
        log.debug("%s OK %.1fms %s", method, _ms(start), who)
        return result

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._node.inline_capable:
            try:
                with nonblocking():
                    return fn()
            except WouldBlock:
                pass
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)


class PersonalDataVaultServicer(_Base, pb_grpc.PersonalDataVaultServicer):
    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: Ctx
    ) -> pb.ErasureReceipt:
        v = await self._run(
            "EraseSubject",
            context,
            self._node.erase_subject,
            request.subject_id,
            request.reason,
            request.grace_period.seconds,
            request.grace_period.nanos,
        )
        return erasure_pb(v)

    async def CancelErasure(self, request: pb.CancelErasureRequest, context: Ctx) -> pb.Subject:
        v = await self._run("CancelErasure", context, self._node.cancel_erasure, request.subject_id)
        return subject_pb(v)

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: Ctx
    ) -> AsyncIterator[pb.ExportChunk]:
        # Every piece is produced under the same error mapping as a unary call:
        # a failure after the first chunk (a record that does not open, the
        # database gone) ends the stream with its documented status.
        who = _Who.of(context)
        pieces: Iterator[bytes] = await self._run(
            "ExportSubject", context, self._node.export_subject, request.subject_id, who=who
        )

        def next_piece() -> bytes | None:
            return next(pieces, None)

        seq = 0
        buf = bytearray()
        while True:
            piece = await self._guarded("ExportSubject", context, next_piece, pool=True, who=who)
            if piece is not None:
                buf += piece
            while len(buf) >= EXPORT_CHUNK_BYTES or (piece is None and buf):
                yield pb.ExportChunk(data=bytes(buf[:EXPORT_CHUNK_BYTES]), sequence=seq)
                del buf[:EXPORT_CHUNK_BYTES]
                seq += 1
            if piece is None:
                return

    async def CreateSubject(self, request: pb.CreateSubjectRequest, context: Ctx) -> pb.Subject:
        v = await self._run(
            "CreateSubject",
            context,
            self._node.create_subject,
            country=request.country,
            region=request.region,
            minor=request.minor,
            idempotency_key=request.idempotency_key,
            lookups=[(x.kind, x.value) for x in request.lookups],
        )
        return subject_pb(v)

    async def SetLookups(
        self, request: pb.SetLookupsRequest, context: Ctx
    ) -> pb.SetLookupsResponse:
        added = await self._run(
            "SetLookups",
            context,
            self._node.set_lookups,
            request.subject_id,
            [(x.kind, x.value) for x in request.lookups],
        )
        return pb.SetLookupsResponse(added=added)

    async def FindSubjects(
        self, request: pb.FindSubjectsRequest, context: Ctx
    ) -> pb.FindSubjectsResponse:
        ids = await self._run(
            "FindSubjects",
            context,
            self._node.find_subjects,
            request.lookup.kind,
            request.lookup.value,
            request.region,
            request.all_regions,
        )
        return pb.FindSubjectsResponse(subject_ids=ids)

    async def GetSubject(self, request: pb.GetSubjectRequest, context: Ctx) -> pb.Subject:
        v = await self._run("GetSubject", context, self._node.get_subject, request.subject_id)
        return subject_pb(v)

    async def PutRecord(self, request: pb.PutRecordRequest, context: Ctx) -> pb.Record:
        v = await self._run(
            "PutRecord",
            context,
            self._node.put_record,
            subject_id=request.subject_id,
            category=request.category,
            fields=dict(request.fields),
            record_id=request.record_id,
            expected_version=request.expected_version,
            idempotency_key=request.idempotency_key,
        )
        return record_pb(v)

    async def GetRecord(self, request: pb.GetRecordRequest, context: Ctx) -> pb.Record:
        v = await self._run("GetRecord", context, self._node.get_record, request.record_id)
        return record_pb(v)

    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: Ctx
    ) -> pb.ListRecordsResponse:
        page = await self._run(
            "ListRecords",
            context,
            self._node.list_records,
            request.subject_id,
            request.category,
            request.page_size,
            request.page_token,
        )
        return pb.ListRecordsResponse(
            records=[record_pb(r) for r in page.records], next_page_token=page.next_page_token
        )

    async def DeleteRecord(
        self, request: pb.DeleteRecordRequest, context: Ctx
    ) -> pb.DeleteRecordResponse:
        await self._run(
            "DeleteRecord",
            context,
            self._node.delete_record,
            request.record_id,
            request.expected_version,
        )
        return pb.DeleteRecordResponse(record_id=request.record_id, deleted=True)

    async def SetConsent(self, request: pb.SetConsentRequest, context: Ctx) -> pb.Consent:
        v = await self._run(
            "SetConsent",
            context,
            self._node.set_consent,
            request.subject_id,
            request.purpose,
            request.granted,
            request.source,
        )
        return consent_pb(v)

    async def ListConsents(
        self, request: pb.ListConsentsRequest, context: Ctx
    ) -> pb.ListConsentsResponse:
        vs = await self._run("ListConsents", context, self._node.list_consents, request.subject_id)
        return pb.ListConsentsResponse(consents=[consent_pb(v) for v in vs])

    async def RestrictProcessing(
        self, request: pb.RestrictProcessingRequest, context: Ctx
    ) -> pb.Subject:
        v = await self._run(
            "RestrictProcessing",
            context,
            self._node.restrict_processing,
            request.subject_id,
            request.restricted,
        )
        return subject_pb(v)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _abort(context: Ctx, status: grpc.Status) -> NoReturn:
    await context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover


def _grants(
    items: Iterable[pb.CategoryGrant],
) -> tuple[dict[str, frozenset[str] | None], dict[str, list[str]]]:
    cats: dict[str, frozenset[str] | None] = {}
    fields: dict[str, list[str]] = {}
    for g in items:
        if g.category in cats:
            raise InvalidArgument(FieldViolation("categories", "lists a category twice"))
        cats[g.category] = frozenset(g.fields) if g.fields else None
        if g.fields:
            fields[g.category] = list(g.fields)
    return cats, fields


def _token_pb(token: str, claims: Claims) -> pb.TokenResponse:
    resp = pb.TokenResponse(token=token, token_id=claims.jti)
    resp.expires_at.FromSeconds(claims.exp)
    return resp


class TokenServicer(_Base, pb_grpc.TokenServiceServicer):
    async def IssueToken(self, request: pb.IssueTokenRequest, context: Ctx) -> pb.TokenResponse:
        who = _Who.of(context)

        def issue() -> tuple[str, Claims]:
            self._auth.require_admin(_authorization(context))
            who.sub = "admin"
            cats, _ = _grants(request.categories)
            return self._auth.issue(
                IssueRequest(
                    service=request.service,
                    purpose=request.purpose,
                    categories=cats,
                    operations=frozenset(request.operations),
                    regions=frozenset(request.regions),
                    subjects=frozenset(request.subjects) if request.subjects else None,
                    transfer_basis=request.transfer_basis or None,
                    ttl=request.ttl_seconds or DEFAULT_TTL,
                )
            )

        return _token_pb(*await self._guarded("IssueToken", context, issue, who=who))

    async def ExchangeToken(
        self, request: pb.ExchangeTokenRequest, context: Ctx
    ) -> pb.TokenResponse:
        def exchange(caller: Caller) -> tuple[str, Claims]:
            cats, fields = _grants(request.categories)
            return self._auth.exchange(
                caller,
                categories=list(cats) or None,
                fields=fields or None,
                operations=list(request.operations) or None,
                regions=list(request.regions) or None,
                subjects=list(request.subjects) or None,
                ttl=request.ttl_seconds or None,
            )

        return _token_pb(*await self._run("ExchangeToken", context, exchange))

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        who = _Who.of(context)

        def revoke() -> bool:
            authorization = _authorization(context)
            if not request.token_id:
                raise InvalidArgument(FieldViolation("token_id", "is required"))
            if self._auth.is_admin(authorization):
                who.sub = "admin"
                return self._auth.revoke(request.token_id, admin=True, caller=None)
            caller = who.authenticated(self._auth.authenticate(authorization))
            return self._auth.revoke(request.token_id, admin=False, caller=caller)

        revoked = await self._guarded("RevokeToken", context, revoke, who=who)
        return pb.RevokeTokenResponse(token_id=request.token_id, revoked=revoked)

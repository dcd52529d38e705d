"""The ``vault.v1.PersonalDataVault`` servicer: parse → domain → reply.

Domain calls run inline on the event loop when every served cell is a local
SQLite file and the call needs no key-service round trip; otherwise (cache
miss, subject creation, a networked database) on a thread pool. See
:mod:`vault.inline`. Errors are mapped in one place
(:mod:`vault.service._status`); the access log carries method, status,
duration and who called (the token's ``sub``, the client certificate's
identity under mutual TLS) — never request or response content.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from vault.audit import Auditor, AuditUnavailable, RequestNote, current, noting
from vault.errors import (
    FieldViolation,
    InvalidArgument,
    KeyServiceUnavailable,
    StoreUnavailable,
    TooLarge,
    VaultError,
)
from vault.inline import WouldBlock, nonblocking
from vault.policy import Caller
from vault.residency import Node, TransferNotRecorded, TransferRefused, transfer_decision
from vault.service._convert import access_pb, consent_pb, erasure_pb, record_pb, subject_pb
from vault.service._forward import (
    REQUEST_ID_HEADER,
    ForwardFailed,
    Peers,
    RegionUnavailable,
    entry_region,
    metadata_values,
    request_id,
)
from vault.service._relay import STATUS_DETAILS
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
R = TypeVar("R")
#: People per ImportSubjects call, and how many of them are written at a time.
MAX_IMPORT_SUBJECTS = 1000
IMPORT_CONCURRENCY = 16


def _too_many_people() -> NoReturn:
    raise TooLarge(f"an import call holds at most {MAX_IMPORT_SUBJECTS} people; send several")


def _since_us(request: pb.GetAccessReportRequest) -> int:
    """``since`` in microseconds (0: from the start); INVALID_ARGUMENT when it
    is no valid timestamp."""
    if not request.HasField("since"):
        return 0
    try:
        return int(request.since.ToMicroseconds())
    except ValueError:
        raise InvalidArgument(
            FieldViolation("since", "not a valid timestamp (years 1 to 9999)")
        ) from None


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
    #: The entry region a node peer reported (home side), for the access log.
    entry: str | None = None
    #: The region the call was forwarded to (entry side).
    forwarded: str | None = None
    request_id: str | None = None

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
        text = f"sub={log_safe(self.sub)} client={log_safe(self.client)}"
        if self.entry:
            text += f" entry={self.entry}"
        if self.forwarded:
            text += f" forwarded={self.forwarded}"
        if self.request_id:
            text += f" rid={log_safe(self.request_id)}"
        return text


class _Base:
    def __init__(
        self,
        node: Node,
        auth: TokenAuthority,
        executor: ThreadPoolExecutor,
        peers: Peers | None = None,
        audit: Auditor | None = None,
    ) -> None:
        self._node = node
        self._auth = auth
        self._executor = executor
        self._peers = peers
        self._audit = audit

    def _note(self, method: str, context: Ctx) -> RequestNote | None:
        """The audit note of a call served here (None with the audit off)."""
        if self._audit is None:
            return None
        return RequestNote(method, request_id(context.invocation_metadata()))

    async def _record(self, note: RequestNote) -> None:
        """Makes the call's audit entries durable; :class:`AuditUnavailable` if not."""
        assert self._audit is not None
        try:
            await self._call(note.seal)
            futures = self._audit.submit_on_loop(note, asyncio.get_running_loop())
            # Each future is settled by its writer within the batch window, or
            # fails when handed to a writer thread that misses the timeout.
            for f in futures:
                await f
        except TransferNotRecorded:
            raise
        except Exception as e:
            raise AuditUnavailable("the audit log is unavailable; nothing was returned") from e

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
        note = self._note(method, context)

        def authenticated() -> T:
            caller = who.authenticated(self._auth.authenticate(_authorization(context)))
            # From a node's certificate only (see vault.service._forward).
            entry = entry_region(self._node.regions, who.client, context.invocation_metadata())
            if entry is not None:
                caller = dataclasses.replace(caller, entry_region=entry)
                who.entry = entry
                who.request_id = (
                    metadata_values(context.invocation_metadata(), REQUEST_ID_HEADER) or [""]
                )[0]
            if note is None:
                return fn(caller, *args, **kwargs)
            note.caller = caller
            return fn(caller, *args, **kwargs)

        if note is None:
            return await self._guarded(method, context, authenticated, who=who)

        def noted() -> T:
            note.restart()  # a call re-run on the pool notes afresh
            with noting(note):
                return authenticated()

        return await self._guarded(method, context, noted, who=who, note=note)

    async def _guarded(
        self,
        method: str,
        context: Ctx,
        fn: Callable[[], T],
        *,
        pool: bool = False,
        who: _Who | None = None,
        note: RequestNote | None = None,
    ) -> T:
        """Runs ``fn`` and maps any failure to its status (``pool``: never inline).

        With a ``note``, the call's audit entries are made durable before
        anything is answered, refusals included; if they cannot be, the call
        fails UNAVAILABLE (``AUDIT_UNAVAILABLE``) and returns nothing. The call
        counts among the calls in progress for the audit's batch window.
        """
        if note is None or self._audit is None:
            return await self._run_guarded(method, context, fn, pool=pool, who=who, note=None)
        self._audit.begin(note)
        try:
            return await self._run_guarded(method, context, fn, pool=pool, who=who, note=note)
        finally:
            self._audit.end(note)

    async def _run_guarded(
        self,
        method: str,
        context: Ctx,
        fn: Callable[[], T],
        *,
        pool: bool,
        who: _Who | None,
        note: RequestNote | None,
    ) -> T:
        start = time.perf_counter()
        who = who or _Who.of(context)
        try:
            if pool:
                result = await asyncio.get_running_loop().run_in_executor(self._executor, fn)
            else:
                result = await self._call(fn)
        except VaultError as e:
            if note is not None:
                note.decision = e.reason
                try:
                    await self._record(note)
                except AuditUnavailable as a:
                    # Unrecorded, the refusal is not given; a call that already
                    # failed UNAVAILABLE keeps its own (more telling) reason.
                    if code_for(e) != grpc.StatusCode.UNAVAILABLE:
                        e = a
            code = code_for(e)
            log.info("%s %s %s %.1fms %s", method, code.name, e.reason, _ms(start), who)
            await _abort(context, to_status(e))
        except Exception as e:
            # The exception text may quote SQL parameters: log its type only.
            log.error("%s INTERNAL %s %.1fms %s", method, type(e).__name__, _ms(start), who)
            if note is not None:
                note.decision = "INTERNAL"
                try:
                    await self._record(note)
                except AuditUnavailable as a:
                    await _abort(context, to_status(a))
            await _abort(context, internal_status())
        if note is not None:
            try:
                await self._record(note)
            except AuditUnavailable as e:
                log.error("%s UNAVAILABLE %s %.1fms %s", method, e.reason, _ms(start), who)
                await _abort(context, to_status(e))
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

    # -- forwarding (see vault.service._forward) ---------------------------------

    def _from_node(self, context: Ctx) -> bool:
        """Whether the caller presents a node identity (its calls are never forwarded)."""
        identity = client_identity(context.auth_context())
        return self._node.regions.node_region(identity) is not None

    def _forward_to(self, context: Ctx, home: str | None) -> str | None:
        """The region to forward the call to: the id's home region when this node
        forwards and does not serve it; None to serve (or refuse) it here."""
        if home is None or self._peers is None or home in self._node.cells:
            return None
        if self._from_node(context):
            return None  # one hop: a forwarded call is served here or refused
        return home

    def _timeout(self, context: Ctx) -> float:
        assert self._peers is not None
        remaining = context.time_remaining()
        if remaining is None or remaining > self._peers.timeout:
            return self._peers.timeout
        return max(remaining, 0.001)

    async def _entry_caller(self, method: str, context: Ctx, who: _Who) -> Caller:
        """The caller, authenticated at the entry node too (the reply check needs
        its token's basis and purpose; nothing unauthenticated is forwarded)."""
        return await self._guarded(
            method,
            context,
            lambda: who.authenticated(self._auth.authenticate(_authorization(context))),
            who=who,
        )

    def _forward_who(self, context: Ctx, home: str) -> tuple[_Who, tuple[tuple[str, str], ...]]:
        assert self._peers is not None
        who = _Who.of(context)
        who.forwarded = home
        md = self._peers.metadata(context.invocation_metadata())
        who.request_id = dict(md)[REQUEST_ID_HEADER]
        return who, md

    async def _relay(
        self, method: str, context: Ctx, err: ForwardFailed, start: float, who: _Who
    ) -> NoReturn:
        """The home node's error, as it sent it; an unreachable home node is
        UNAVAILABLE (REGION_UNAVAILABLE)."""
        code = err.code
        details = [(k, v) for k, v in err.trailing_metadata if k == STATUS_DETAILS]
        if not details and code in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNKNOWN,
        ):
            e = RegionUnavailable("the home region of this id is unavailable; retry later")
            log.info("%s UNAVAILABLE %s %.1fms %s", method, e.reason, _ms(start), who)
            await _abort(context, to_status(e))
        log.info("%s %s relayed %.1fms %s", method, code.name, _ms(start), who)
        await context.abort(code, err.details, trailing_metadata=tuple(details))
        raise AssertionError("abort returned")  # pragma: no cover

    async def _check_reply(
        self,
        method: str,
        context: Ctx,
        caller: Caller,
        home: str,
        categories: Sequence[str | None],
        who: _Who,
    ) -> None:
        """The transfer rules again, at the entry node, on what the home node sent."""
        assert self._peers is not None
        decision = transfer_decision(
            self._node.regions.transfers,
            home,
            self._peers.entry,
            caller.claims.transfer_basis,
            caller.claims.purpose,
            categories,
        )
        if not decision.allowed:
            log.warning(
                "%s: the %s node replied with data the transfer rules refuse (%s); withheld %s",
                method,
                home,
                decision.rule,
                who,
            )
            await _abort(context, to_status(TransferRefused(decision)))

    async def _forward_unary(
        self,
        method: str,
        context: Ctx,
        request: Any,
        home: str,
        reply_type: type[R],
        categories: Callable[[R], Sequence[str | None]] | None = None,
    ) -> R:
        assert self._peers is not None
        who, md = self._forward_who(context, home)
        caller = await self._entry_caller(method, context, who)
        start = time.perf_counter()
        try:
            reply = await self._peers.call(
                home, method, request, md, self._timeout(context), reply_type
            )
        except ForwardFailed as e:
            await self._relay(method, context, e, start, who)
        except DecodeError:
            await _abort(context, internal_status())
        if categories is not None:
            await self._check_reply(method, context, caller, home, categories(reply), who)
        log.debug("%s OK %.1fms %s", method, _ms(start), who)
        return reply

    async def _forward_stream(
        self, method: str, request: Any, context: Ctx, home: str
    ) -> AsyncIterator[Any]:
        """A streaming call (ExportSubject, GetAccessReport) through the home
        node, relayed message by message."""
        assert self._peers is not None
        who, md = self._forward_who(context, home)
        caller = await self._entry_caller(method, context, who)
        start = time.perf_counter()
        call = getattr(self._peers.stub(home), method)(
            request, metadata=md, timeout=self._timeout(context)
        )
        checked = False
        try:
            async for chunk in call:
                if not checked:
                    # The document is about no single category (see TransferRules).
                    await self._check_reply(method, context, caller, home, [None], who)
                    checked = True
                yield chunk
        except grpc.aio.AioRpcError as e:
            await self._relay(method, context, ForwardFailed.of(e), start, who)
        finally:
            call.cancel()
        log.debug("%s OK %.1fms %s", method, _ms(start), who)

    async def _find_everywhere(
        self, request: pb.FindSubjectsRequest, context: Ctx
    ) -> pb.FindSubjectsResponse:
        """FindSubjects(all_regions): the local cells, then every other region
        the token covers through its node, at once; ids only. A region whose
        node fails is a RegionError in the reply, not a failed call."""
        assert self._peers is not None
        peers = self._peers
        who, md = self._forward_who(context, "all")
        caller = await self._entry_caller("FindSubjects", context, who)
        kind, value = request.lookup.kind, request.lookup.value
        targets = sorted(r for r in self._node.regions.regions if caller.claims.allows_region(r))
        local = [r for r in targets if r in self._node.cells]
        remote = [r for r in targets if r not in self._node.cells]
        found: dict[str, list[str]] = {}
        errors: list[pb.RegionError] = []

        def local_find() -> None:
            self._node.check_lookup(kind, value)
            for r in local:
                try:
                    found[r] = self._node.find_subjects(caller, kind, value, r, False)
                except (StoreUnavailable, KeyServiceUnavailable) as e:
                    errors.append(pb.RegionError(region=r, code=code_for(e).name, reason=e.reason))

        note = self._note("FindSubjects", context)
        if note is None:
            await self._guarded("FindSubjects", context, local_find, who=who)
        else:
            note.caller = caller

            def noted_find() -> None:
                note.restart()
                found.clear()
                errors.clear()
                with noting(note):
                    local_find()

            await self._guarded("FindSubjects", context, noted_find, who=who, note=note)
        timeout = self._timeout(context)

        async def one(r: str) -> None:
            try:
                reply = await peers.call(
                    r,
                    "FindSubjects",
                    pb.FindSubjectsRequest(lookup=request.lookup, region=r),
                    md,
                    timeout,
                    pb.FindSubjectsResponse,
                )
            except ForwardFailed as e:
                errors.append(pb.RegionError(region=r, code=e.code.name, reason=_reason(e)))
                return
            except DecodeError:
                errors.append(
                    pb.RegionError(region=r, code="INTERNAL", reason=RegionUnavailable.reason)
                )
                return
            # Only ids of that region: a node answers for its own region.
            found[r] = [i for i in reply.subject_ids if self._node.home_of(i, "sub") == r]

        await asyncio.gather(*(one(r) for r in remote))
        errors.sort(key=lambda e: e.region)
        for e in errors:
            log.info("FindSubjects region %s %s %s %s", e.region, e.code, e.reason, who)
        return pb.FindSubjectsResponse(
            subject_ids=[i for r in targets for i in found.get(r, [])], region_errors=errors
        )


class PersonalDataVaultServicer(_Base, pb_grpc.PersonalDataVaultServicer):
    async def EraseSubject(
        self, request: pb.EraseSubjectRequest, context: Ctx
    ) -> pb.ErasureReceipt:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary(
                "EraseSubject", context, request, home, pb.ErasureReceipt
            )
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
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary("CancelErasure", context, request, home, pb.Subject)
        v = await self._run("CancelErasure", context, self._node.cancel_erasure, request.subject_id)
        return subject_pb(v)

    async def ExportSubject(
        self, request: pb.ExportSubjectRequest, context: Ctx
    ) -> AsyncIterator[pb.ExportChunk]:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            async for chunk in self._forward_stream("ExportSubject", request, context, home):
                yield chunk
            return
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

    async def GetAccessReport(
        self, request: pb.GetAccessReportRequest, context: Ctx
    ) -> AsyncIterator[pb.AccessEntry]:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            async for entry in self._forward_stream("GetAccessReport", request, context, home):
                yield entry
            return
        entries = await self._run(
            "GetAccessReport",
            context,
            lambda caller: self._node.access_report(caller, request.subject_id, _since_us(request)),
        )
        for e in entries:
            yield access_pb(e)

    async def CreateSubject(self, request: pb.CreateSubjectRequest, context: Ctx) -> pb.Subject:
        home = self._forward_to(
            context, self._node.home_of_new_subject(request.country, request.region)
        )
        if home is not None:
            return await self._forward_unary("CreateSubject", context, request, home, pb.Subject)
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

    async def ImportSubjects(
        self, request_iterator: AsyncIterator[pb.ImportSubjectRequest], context: Ctx
    ) -> pb.ImportSubjectsResponse:
        """Each person as CreateSubject and PutRecord would be written (see
        Node.import_subject), up to IMPORT_CONCURRENCY at a time; the results
        in the order sent. The caller is authenticated before anything is read."""
        who = _Who.of(context)
        await self._run("ImportSubjects", context, lambda caller: None, who=who)
        results: list[pb.ImportResult] = []

        async def one(m: pb.ImportSubjectRequest) -> pb.ImportResult:
            s = m.subject
            subject, written = await self._run(
                "ImportSubjects",
                context,
                self._node.import_subject,
                country=s.country,
                region=s.region,
                minor=s.minor,
                idempotency_key=s.idempotency_key,
                lookups=[(x.kind, x.value) for x in s.lookups],
                records=[(r.category, dict(r.fields)) for r in m.records],
                who=who,
            )
            return pb.ImportResult(subject_id=subject.subject_id, records_written=written)

        chunk: list[pb.ImportSubjectRequest] = []
        count = 0

        async def batch(chunk: list[pb.ImportSubjectRequest]) -> list[pb.ImportResult]:
            # Several people at once; when some fail, each has tried to end the
            # call: the first abort stands (later ones are refused as a second
            # abort), and it is what the caller gets.
            outcomes = await asyncio.gather(*(one(m) for m in chunk), return_exceptions=True)
            failures = [o for o in outcomes if isinstance(o, BaseException)]
            if failures:
                aborted = [f for f in failures if isinstance(f, grpc.aio.AbortError)]
                raise (aborted or failures)[0]
            return [o for o in outcomes if isinstance(o, pb.ImportResult)]

        async for message in request_iterator:
            count += 1
            if count > MAX_IMPORT_SUBJECTS:
                await self._guarded("ImportSubjects", context, _too_many_people, who=who)
            chunk.append(message)
            if len(chunk) == IMPORT_CONCURRENCY:
                results += await batch(chunk)
                chunk = []
        results += await batch(chunk)
        return pb.ImportSubjectsResponse(results=results)

    async def SetLookups(
        self, request: pb.SetLookupsRequest, context: Ctx
    ) -> pb.SetLookupsResponse:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary(
                "SetLookups", context, request, home, pb.SetLookupsResponse
            )
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
        if request.all_regions:
            if self._peers is not None and not self._from_node(context):
                return await self._find_everywhere(request, context)
        elif request.region in self._node.regions.regions:
            home = self._forward_to(context, request.region)
            if home is not None:
                return await self._forward_unary(
                    "FindSubjects", context, request, home, pb.FindSubjectsResponse
                )
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
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary("GetSubject", context, request, home, pb.Subject)
        v = await self._run("GetSubject", context, self._node.get_subject, request.subject_id)
        return subject_pb(v)

    async def PutRecord(self, request: pb.PutRecordRequest, context: Ctx) -> pb.Record:
        home = self._forward_to(
            context,
            self._node.home_of(request.record_id, "rec")
            if request.record_id
            else self._node.home_of(request.subject_id, "sub"),
        )
        if home is not None:
            # The reply echoes the fields written: checked like a read.
            return await self._forward_unary(
                "PutRecord", context, request, home, pb.Record, lambda r: [r.category]
            )
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
        home = self._forward_to(context, self._node.home_of(request.record_id, "rec"))
        if home is not None:
            return await self._forward_unary(
                "GetRecord", context, request, home, pb.Record, lambda r: [r.category]
            )
        v = await self._run("GetRecord", context, self._node.get_record, request.record_id)
        return record_pb(v)

    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: Ctx
    ) -> pb.ListRecordsResponse:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary(
                "ListRecords",
                context,
                request,
                home,
                pb.ListRecordsResponse,
                lambda r: _listed(request, r),
            )
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
        home = self._forward_to(context, self._node.home_of(request.record_id, "rec"))
        if home is not None:
            return await self._forward_unary(
                "DeleteRecord", context, request, home, pb.DeleteRecordResponse
            )
        await self._run(
            "DeleteRecord",
            context,
            self._node.delete_record,
            request.record_id,
            request.expected_version,
        )
        return pb.DeleteRecordResponse(record_id=request.record_id, deleted=True)

    async def SetConsent(self, request: pb.SetConsentRequest, context: Ctx) -> pb.Consent:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary("SetConsent", context, request, home, pb.Consent)
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
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary(
                "ListConsents", context, request, home, pb.ListConsentsResponse
            )
        vs = await self._run("ListConsents", context, self._node.list_consents, request.subject_id)
        return pb.ListConsentsResponse(consents=[consent_pb(v) for v in vs])

    async def RestrictProcessing(
        self, request: pb.RestrictProcessingRequest, context: Ctx
    ) -> pb.Subject:
        home = self._forward_to(context, self._node.home_of(request.subject_id, "sub"))
        if home is not None:
            return await self._forward_unary(
                "RestrictProcessing", context, request, home, pb.Subject
            )
        v = await self._run(
            "RestrictProcessing",
            context,
            self._node.restrict_processing,
            request.subject_id,
            request.restricted,
        )
        return subject_pb(v)


def _listed(request: pb.ListRecordsRequest, reply: pb.ListRecordsResponse) -> list[str | None]:
    """The categories a listing is about: the one asked for (and every record's
    must be it), or none in particular."""
    if not request.category:
        return [None]
    return [request.category, *(r.category for r in reply.records)]


def _reason(err: ForwardFailed) -> str:
    """The ErrorInfo reason of a peer's error; REGION_UNAVAILABLE if it sent none."""
    for key, value in err.trailing_metadata:
        if key != STATUS_DETAILS or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            break
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return RegionUnavailable.reason


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


def _token_detail(event: str, claims: Claims) -> dict[str, object]:
    """What the audit keeps of a token issued (its id and scope, never the token)."""
    return {
        event: claims.jti,
        "for_service": claims.sub,
        "for_purpose": claims.purpose,
        "parent": claims.parent_jti,
    }


def _token_pb(token: str, claims: Claims) -> pb.TokenResponse:
    resp = pb.TokenResponse(token=token, token_id=claims.jti)
    resp.expires_at.FromSeconds(claims.exp)
    return resp


class TokenServicer(_Base, pb_grpc.TokenServiceServicer):
    async def IssueToken(self, request: pb.IssueTokenRequest, context: Ctx) -> pb.TokenResponse:
        who = _Who.of(context)
        note = self._note("IssueToken", context)

        def issue() -> tuple[str, Claims]:
            self._auth.require_admin(_authorization(context))
            who.sub = "admin"
            cats, _ = _grants(request.categories)
            token, claims = self._auth.issue(
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
            if note is not None:
                note.detail |= _token_detail("issued", claims)
            return token, claims

        if note is not None:
            note.service = "admin"
        return _token_pb(*await self._guarded("IssueToken", context, issue, who=who, note=note))

    async def ExchangeToken(
        self, request: pb.ExchangeTokenRequest, context: Ctx
    ) -> pb.TokenResponse:
        def exchange(caller: Caller) -> tuple[str, Claims]:
            cats, fields = _grants(request.categories)
            issued = self._auth.exchange(
                caller,
                categories=list(cats) or None,
                fields=fields or None,
                operations=list(request.operations) or None,
                regions=list(request.regions) or None,
                subjects=list(request.subjects) or None,
                ttl=request.ttl_seconds or None,
            )
            note = current()
            if note is not None:
                note.detail |= _token_detail("issued", issued[1])
            return issued

        return _token_pb(*await self._run("ExchangeToken", context, exchange))

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        who = _Who.of(context)
        note = self._note("RevokeToken", context)

        def revoke() -> bool:
            authorization = _authorization(context)
            if not request.token_id:
                raise InvalidArgument(FieldViolation("token_id", "is required"))
            if note is not None:
                note.detail["revoked"] = request.token_id[:64]
            if self._auth.is_admin(authorization):
                who.sub = "admin"
                if note is not None:
                    note.service = "admin"
                return self._auth.revoke(request.token_id, admin=True, caller=None)
            caller = who.authenticated(self._auth.authenticate(authorization))
            if note is not None:
                note.caller = caller
            return self._auth.revoke(request.token_id, admin=False, caller=caller)

        revoked = await self._guarded("RevokeToken", context, revoke, who=who, note=note)
        return pb.RevokeTokenResponse(token_id=request.token_id, revoked=revoked)

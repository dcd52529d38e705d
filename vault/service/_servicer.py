"""The ``vault.v1.PersonalDataVault`` servicer: parse → domain → reply.

Domain calls run inline on the event loop when every served cell is a local
SQLite file and the call needs no key-service round trip; otherwise (cache
miss, subject creation, a networked database) on a thread pool. See
:mod:`vault._inline`. Errors are mapped in one place
(:mod:`vault.service._status`); the access log carries method, status and
duration only — never request or response content.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import grpc

from vault._inline import WouldBlock, nonblocking
from vault.errors import VaultError
from vault.node import Node
from vault.service._convert import record_pb, subject_pb
from vault.service._status import code_for, internal_status, to_status
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

log = logging.getLogger("vault.access")
Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")


class PersonalDataVaultServicer(pb_grpc.PersonalDataVaultServicer):
    def __init__(self, node: Node, executor: ThreadPoolExecutor) -> None:
        self._node = node
        self._executor = executor

    async def _run(
        self,
        method: str,
        context: Ctx,
        fn: Callable[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        start = time.perf_counter()
        try:
            result = await self._call(fn, *args, **kwargs)
        except VaultError as e:
            code = code_for(e)
            log.info("%s %s %s %.1fms", method, code.name, e.reason, _ms(start))
            await _abort(context, to_status(e))
        except Exception as e:
            # The exception text may quote SQL parameters: log its type only.
            log.error("%s INTERNAL %s %.1fms", method, type(e).__name__, _ms(start))
            await _abort(context, internal_status())
        log.debug("%s OK %.1fms", method, _ms(start))
        return result

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._node.inline_capable:
            try:
                with nonblocking():
                    return fn(*args, **kwargs)
            except WouldBlock:
                pass
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def CreateSubject(self, request: pb.CreateSubjectRequest, context: Ctx) -> pb.Subject:
        v = await self._run(
            "CreateSubject",
            context,
            self._node.create_subject,
            country=request.country,
            region=request.region,
            minor=request.minor,
            idempotency_key=request.idempotency_key,
        )
        return subject_pb(v)

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


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def _abort(context: Ctx, status: grpc.Status) -> NoReturn:
    await context.abort_with_status(status)
    raise AssertionError("abort_with_status returned")  # pragma: no cover

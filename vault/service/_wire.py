"""A request that does not parse is ``INVALID_ARGUMENT``, like any other bad input.

gRPC's own handling of a request deserializer that raises is ``UNKNOWN``, with
the parser's message (type names, "bad UTF-8"…) in the status. This server
interceptor gives every handler a deserializer that turns a protobuf
``DecodeError`` (corrupt wire format, a field of the wrong wire type, a string
that is not UTF-8) into a marker, and aborts such calls with the vault's own
``INVALID_ARGUMENT`` before the servicer runs (in a request stream, at the
first message that does not parse).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from vault.errors import FieldViolation, InvalidArgument
from vault.service._status import to_status


class _Malformed:
    """Stands for a request whose bytes are not a message of its type."""


_MALFORMED = _Malformed()
_STATUS = to_status(InvalidArgument(FieldViolation("request", "is not a valid message")))


def _tolerant(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return _MALFORMED

    return parse


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is _MALFORMED:
            await context.abort_with_status(_STATUS)
        return await behaviour(request, context)

    return call


def _streaming(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        if request is _MALFORMED:
            await context.abort_with_status(_STATUS)
        async for reply in behaviour(request, context):
            yield reply

    return call


def _client_streaming(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A request stream whose messages are checked as they arrive: the first
    that does not parse ends the call (what came before it was served)."""

    async def call(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if request is _MALFORMED:
                    await context.abort_with_status(_STATUS)
                yield request

        return await behaviour(checked(), context)

    return call


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers requests that do not parse with INVALID_ARGUMENT (see the module)."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler  # type: ignore[no-any-return]
        if handler.stream_unary is not None:
            return handler._replace(  # type: ignore[no-any-return]
                request_deserializer=_tolerant(handler.request_deserializer),
                stream_unary=_client_streaming(handler.stream_unary),
            )
        if handler.request_streaming:
            return handler  # type: ignore[no-any-return]
        if handler.unary_unary is not None:
            return handler._replace(  # type: ignore[no-any-return]
                request_deserializer=_tolerant(handler.request_deserializer),
                unary_unary=_unary(handler.unary_unary),
            )
        if handler.unary_stream is not None:
            # A streaming handler is an async generator, or a coroutine that
            # writes its replies with context.write (the health service's Watch).
            behaviour = handler.unary_stream
            wrap = _streaming if inspect.isasyncgenfunction(behaviour) else _unary
            return handler._replace(  # type: ignore[no-any-return]
                request_deserializer=_tolerant(handler.request_deserializer),
                unary_stream=wrap(behaviour),
            )
        return handler  # type: ignore[no-any-return]

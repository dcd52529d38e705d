"""The base of the node's gRPC server interceptors: each method's handler is
wrapped once and the wrapped handler reused, so a call pays only for what the
wrapper itself does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Replaces each method's handler by ``_wrap(method name, handler)``, built
    on the method's first call."""

    def __init__(self) -> None:
        self._handlers: dict[tuple[str, int], grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Req, _Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Req, _Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full = handler_call_details.method
        key = (full, id(handler))
        wrapped = self._handlers.get(key)
        if wrapped is None:
            wrapped = self._handlers[key] = self._wrap(full.rpartition("/")[2], handler)
        return cast("grpc.RpcMethodHandler[_Req, _Resp]", wrapped)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        raise NotImplementedError

"""Log output of the node commands: text (default) or one JSON object per line
(``--log-format json``), each line of a request carrying its request id.

The request id is the caller's ``x-request-id`` when it is one well-formed
value (letters, digits, ``. _ : -``, at most 64), else a fresh one; it travels
with forwarded calls, so the entry and the home node log the same id.

What the vault logs holds no personal data, key or token by construction
(messages name RPCs, status codes, reasons, token subjects, certificate
identities). The JSON formatter adds nothing from the request: an exception
is reported by its type only (driver messages may quote SQL parameters).
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import grpc

from vault._interceptor import WrappingInterceptor

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


#: The id of the request being served on this task (None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("pdvault_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, RFC 3339), level, logger, message,
    and the request id when the record was made while serving a request."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = REQUEST_ID.get()
        if rid is not None:
            doc["request_id"] = rid
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc"] = record.exc_info[0].__name__
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def configure(log_format: str, level: int) -> None:
    """The root logger of a node command: ``text`` or ``json`` lines on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class RequestIdInterceptor(WrappingInterceptor):
    """Gives every unary call a request id (see the module) for its log lines."""

    def __init__(self) -> None:
        from vault.service._forward import request_id

        super().__init__()
        self._request_id = request_id

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        new_id = self._request_id
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                token = REQUEST_ID.set(new_id(context.invocation_metadata()))
                try:
                    return await inner(request, context)
                finally:
                    REQUEST_ID.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                # Each call runs in a task of its own: its context ends with it.
                REQUEST_ID.set(new_id(context.invocation_metadata()))
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler

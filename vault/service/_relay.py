"""The node relay: forwarded unary calls multiplexed on one stream per peer.

A node that forwards (see :mod:`vault.service._forward`) keeps one
``vault.v1.NodeRelay/Relay`` stream open to each peer node
(:class:`RelayLink`) and sends every forwarded unary call on it as a
``RelayedCall``: the request as the caller sent it, the metadata the home
node is to see (the caller's token, the request id, the entry region) and the
remaining deadline. The home node (:class:`RelayServicer`) runs each call
through the same method handlers, interceptors included, as a call made to it
directly, with a context whose metadata is the relayed one and whose peer is
the stream's: the entry region still comes from the peer's verified
certificate, the token is still checked by the home node, the transfer rules
still decide there. The reply goes back on the stream with the call's id;
calls are answered in any order.

One stream instead of one gRPC call per forwarded request: gRPC's per-call
work (an HTTP/2 stream with headers and trailers, call objects and tasks on
both nodes, their completion events) was most of what forwarding cost, and
the calls that are ready at the same moment share one message. Forwarded
GetRecord: a fifth less CPU per call and a quarter more throughput
(``loadtests/forward_bench.py``, figures in ``loadtests/README.md``).

- Only a peer presenting a node identity of ``regions.yaml`` may open the
  stream (``PERMISSION_DENIED`` otherwise); what it relays is authenticated
  and authorised per call as if called directly.
- A stream that breaks fails the calls in flight on it ``UNAVAILABLE`` (the
  entry node answers ``REGION_UNAVAILABLE``); the next call opens a new one.
  A call whose deadline passes fails ``DEADLINE_EXCEEDED`` the same way.
- A peer without the relay (an older node: ``UNIMPLEMENTED`` for the stream)
  is called directly, one call per request, and asked again a minute later.
- A home node that shuts down stops taking calls on its streams, answers
  those in flight and ends the streams.
- A relayed call whose deadline has passed when the home node comes to it
  is not run (``DEADLINE_EXCEEDED``): its caller has stopped waiting.
- Streaming methods (``ExportSubject``, ``GetAccessReport``,
  ``ImportSubjects``) are not relayed: they are forwarded as calls of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from vault.config import RegionsConfig
from vault.transport import client_identity
from vault.v1 import relay_pb2 as rpb
from vault.v1 import relay_pb2_grpc as rpb_grpc
from vault.v1 import vault_pb2 as pb

log = logging.getLogger("vault.relay")

SERVICE = "vault.v1.PersonalDataVault"
#: The methods a node relays: the unary ones of the public service.
RELAYED = frozenset(
    m.name
    for m in pb.DESCRIPTOR.services_by_name["PersonalDataVault"].methods
    if not m.client_streaming and not m.server_streaming
)
#: Calls a home node runs at once for one stream; it reads no more until one ends.
MAX_IN_FLIGHT = 256
#: How long a peer that has no relay is called directly before it is asked again.
UNSUPPORTED_RETRY_SECONDS = 60.0
#: The most request bytes in one message of calls: a node receives messages of
#: at most 1 MiB (vault.server.MAX_MESSAGE_BYTES), less room for the envelope
#: and the metadata. A call bigger on its own is forwarded as a call of its own.
MAX_CALLS_BYTES = 1024 * 1024 - 64 * 1024
#: The most reply bytes in one message of replies (more wait for the next one).
MAX_REPLIES_BYTES = 4 * 1024 * 1024
#: The largest reply a relay carries: what a forwarding node receives (16 MiB,
#: vault.service._forward), less room for the envelope. A bigger one is
#: RESOURCE_EXHAUSTED for its call alone, as it would be on a call of its own.
MAX_REPLY_BYTES = 16 * 1024 * 1024 - 64 * 1024
#: The trailing metadata key of a status's google.rpc.Status details.
STATUS_DETAILS = "grpc-status-details-bin"
_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The status code of its number (``UNKNOWN`` for a number gRPC has not)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


# -- the home side ---------------------------------------------------------------


class _Aborted(Exception):
    """A relayed call ended with a status (what ``context.abort`` raises)."""

    def __init__(self, code: grpc.StatusCode, details: str, status_details: bytes) -> None:
        super().__init__(code.name)
        self.code = code
        self.details = details
        self.status_details = status_details


def _status_details(trailing_metadata: Any) -> bytes:
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS and isinstance(value, bytes):
            return value
    return b""


class RelayContext:
    """What a method handler sees of a relayed call: the relayed metadata and
    deadline, the stream's peer (its verified certificate), and ``abort``."""

    __slots__ = ("_auth", "_code", "_deadline", "_metadata")

    def __init__(
        self,
        auth: Any,
        metadata: tuple[tuple[str, str], ...],
        deadline: float | None,
    ) -> None:
        self._auth = auth
        self._metadata = metadata
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> Any:
        return self._auth

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        self._code = code
        raise _Aborted(code, details, _status_details(trailing_metadata))

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)


class _CallDetails:
    """The ``grpc.HandlerCallDetails`` of a relayed method, for the interceptors."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata: Any = ()


class _Capture:
    """Takes the method handlers a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same handlers come through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers.update({f"/{service}/{m}": h for m, h in handlers.items()})


def method_handlers(
    register: Callable[[Any], None],
) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The handlers ``register(server)`` adds, by full method name."""
    capture = _Capture()
    register(capture)
    return capture.handlers


class RelayServicer(rpb_grpc.NodeRelayServicer):
    """Runs the calls peer nodes relay (see the module).

    ``handlers``: the public service's method handlers by full name;
    ``interceptors``: the server's, applied to them as to a direct call.
    """

    def __init__(
        self,
        regions: RegionsConfig,
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._regions = regions
        self._clock = clock
        self._base = handlers
        self._interceptors = tuple(interceptors)
        self._resolved: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}
        self._draining = False
        self._streams: set[asyncio.Event] = set()

    def drain(self) -> None:
        """Ends every stream once its calls in flight are answered; refuses new ones."""
        self._draining = True
        for stop in self._streams:
            stop.set()

    async def _handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The handler of a relayed method, wrapped by the interceptors (once)."""
        if method not in RELAYED:
            return None
        full = f"/{SERVICE}/{method}"
        if full not in self._resolved:
            handler = self._base.get(full)
            self._resolved[full] = (
                None if handler is None else await self._intercepted(full, handler)
            )
        return self._resolved[full]

    async def _intercepted(
        self, full: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        details = _CallDetails(full)

        async def chain(i: int) -> grpc.RpcMethodHandler[Any, Any] | None:
            if i == len(self._interceptors):
                return handler

            async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any] | None:
                return await chain(i + 1)

            return await self._interceptors[i].intercept_service(continuation, details)

        return await chain(0)

    async def Relay(
        self, request_iterator: AsyncIterator[rpb.RelayedCalls], context: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        auth = context.auth_context()
        peer = self._regions.node_region(client_identity(auth))
        if peer is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "only a node of the vault may relay calls"
            )
        if self._draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the node is shutting down")
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[rpb.RelayedReply | None] = asyncio.Queue()
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        self._streams.add(stop)

        async def serve(call: rpb.RelayedCall, received: float) -> None:
            try:
                replies.put_nowait(await self._serve(call, auth, received))
            finally:
                slots.release()

        async def read() -> None:
            async for message in request_iterator:
                for call in message.calls:
                    await slots.acquire()
                    if stop.is_set():  # draining: what comes now is not run
                        slots.release()
                        return
                    task = loop.create_task(serve(call, self._clock()))
                    running.add(task)
                    task.add_done_callback(running.discard)

        async def take() -> None:
            reader = loop.create_task(read())
            stopping = loop.create_task(stop.wait())
            try:
                await asyncio.wait((reader, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the stream ends under it: no task outlives it
                stopping.cancel()
                if reader.done():
                    if not reader.cancelled() and reader.exception() is not None:
                        log.info(
                            "relay stream from %s: %s", peer, type(reader.exception()).__name__
                        )
                else:
                    reader.cancel()  # draining: no more calls from this stream
            if running:
                await asyncio.wait(set(running))
            replies.put_nowait(None)

        taker = loop.create_task(take())
        try:
            ended = False
            held: rpb.RelayedReply | None = None
            while not ended:
                first = held if held is not None else await replies.get()
                held = None
                if first is None:
                    break
                # The replies that are ready go in one message, up to a size.
                batch, size = [first], _reply_size(first)
                while not replies.empty():
                    more = replies.get_nowait()
                    if more is None:
                        ended = True
                        break
                    if size + _reply_size(more) > MAX_REPLIES_BYTES:
                        held = more
                        break
                    batch.append(more)
                    size += _reply_size(more)
                yield rpb.RelayedReplies(replies=batch)
        finally:
            self._streams.discard(stop)
            taker.cancel()

    async def _serve(self, call: rpb.RelayedCall, auth: Any, received: float) -> rpb.RelayedReply:
        handler = await self._handler(call.method)
        if handler is None or handler.unary_unary is None:
            return rpb.RelayedReply(
                id=call.id,
                code=grpc.StatusCode.UNIMPLEMENTED.value[0],
                details="the method is not relayed",
            )
        deadline = received + call.timeout_ms / 1000 if call.timeout_ms else None
        if deadline is not None and self._clock() >= deadline:
            # Its caller has given up (a busy node reached it late): not run.
            return rpb.RelayedReply(
                id=call.id,
                code=grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                details="the deadline passed before the call could start",
            )
        ctx = RelayContext(auth, tuple((h.key, h.value) for h in call.metadata), deadline)
        try:
            request = (
                handler.request_deserializer(call.request)
                if handler.request_deserializer is not None
                else call.request
            )
            response = await handler.unary_unary(request, ctx)  # type: ignore[arg-type]
            body = (
                handler.response_serializer(response)
                if handler.response_serializer is not None
                else response
            )
        except _Aborted as e:
            return rpb.RelayedReply(
                id=call.id,
                code=e.code.value[0],
                details=e.details,
                status_details=e.status_details,
            )
        except Exception as e:
            # The exception text may quote data: its type only.
            log.error("relayed %s: INTERNAL %s", call.method, type(e).__name__)
            return rpb.RelayedReply(
                id=call.id, code=grpc.StatusCode.INTERNAL.value[0], details="internal error"
            )
        if len(body) > MAX_REPLY_BYTES:
            return rpb.RelayedReply(
                id=call.id,
                code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                details="the reply is larger than a forwarded call may carry",
            )
        return rpb.RelayedReply(id=call.id, reply=body)


def _reply_size(reply: rpb.RelayedReply) -> int:
    return len(reply.reply) + len(reply.details) + len(reply.status_details) + 32


def call_size(request: bytes, metadata: Sequence[tuple[str, str]]) -> int:
    """About how many bytes a call takes in a message of calls (an upper bound)."""
    return len(request) + sum(len(k) + len(v) + 8 for k, v in metadata) + 32


# -- the entry side --------------------------------------------------------------


class RelayFailed(Exception):
    """A relayed call did not get an answer (the stream broke, or the deadline passed)."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(code.name)
        self.code = code
        self.details = details


class RelayUnsupported(Exception):
    """The peer has no relay, or the call is too big for it: call it directly."""


class _Stream:
    """One open Relay stream and the calls in flight on it."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[rpb.RelayedReply]] = {}
        self.outbox: asyncio.Queue[tuple[rpb.RelayedCall, int]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []


class RelayLink:
    """The relay to one peer node: a stream opened on first use, and again
    after it ends (see the module)."""

    def __init__(
        self,
        stub: rpb_grpc.NodeRelayStub,
        *,
        peer: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._peer = peer or "peer"
        self._clock = clock
        self._stream: _Stream | None = None
        self._ids = itertools.count(1)
        self._unsupported_until = 0.0

    @property
    def usable(self) -> bool:
        """False while the peer is known to have no relay."""
        return self._clock() >= self._unsupported_until

    def _open(self) -> _Stream:
        loop = asyncio.get_running_loop()
        stream = _Stream(self._stub.Relay())
        stream.tasks = [
            loop.create_task(self._write(stream)),
            loop.create_task(self._read(stream)),
        ]
        self._stream = stream
        return stream

    async def call(
        self,
        method: str,
        request: bytes,
        metadata: Sequence[tuple[str, str]],
        timeout: float,
    ) -> rpb.RelayedReply:
        """Sends one call and waits for its reply; :class:`RelayFailed` or
        :class:`RelayUnsupported` if there is none."""
        size = call_size(request, metadata)
        if size > MAX_CALLS_BYTES:
            raise RelayUnsupported()
        stream = self._stream or self._open()
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        fut: asyncio.Future[rpb.RelayedReply] = loop.create_future()
        stream.pending[call_id] = fut
        stream.outbox.put_nowait(
            (
                rpb.RelayedCall(
                    id=call_id,
                    method=method,
                    request=request,
                    metadata=[rpb.RelayedHeader(key=k, value=v) for k, v in metadata],
                    timeout_ms=max(1, int(timeout * 1000)),
                ),
                size,
            )
        )
        timer = loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            stream.pending.pop(call_id, None)

    async def _write(self, stream: _Stream) -> None:
        outbox = stream.outbox
        held: tuple[rpb.RelayedCall, int] | None = None
        try:
            while True:
                # The calls queued while the last message was being sent go in
                # one, up to a size.
                call, size = held or await outbox.get()
                held = None
                batch = [call]
                while not outbox.empty():
                    call, more = outbox.get_nowait()
                    if size + more > MAX_CALLS_BYTES:
                        held = (call, more)
                        break
                    batch.append(call)
                    size += more
                await stream.call.write(rpb.RelayedCalls(calls=batch))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            self._down(stream, e.code(), e.details() or "")
        except Exception as e:  # the call ended under the writer
            self._down(stream, grpc.StatusCode.UNAVAILABLE, type(e).__name__)

    async def _read(self, stream: _Stream) -> None:
        try:
            async for message in stream.call:
                for reply in message.replies:
                    fut = stream.pending.get(reply.id)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as e:
            self._down(stream, e.code(), e.details() or "")
            return
        except Exception as e:
            self._down(stream, grpc.StatusCode.UNAVAILABLE, type(e).__name__)
            return
        self._down(stream, grpc.StatusCode.UNAVAILABLE, "the peer ended the relay")

    def _down(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        """The stream ended: its calls in flight fail; the next call opens another."""
        if self._stream is stream:
            self._stream = None
        unsupported = code == grpc.StatusCode.UNIMPLEMENTED
        if unsupported:
            self._unsupported_until = self._clock() + UNSUPPORTED_RETRY_SECONDS
        # Whatever ended the stream, its calls got no answer: UNAVAILABLE.
        failure = RelayUnsupported() if unsupported else RelayFailed(grpc.StatusCode.UNAVAILABLE)
        for fut in stream.pending.values():
            if not fut.done():
                fut.set_exception(failure)
        stream.pending.clear()
        current = asyncio.current_task()
        for task in stream.tasks:
            if task is not current:
                task.cancel()
        stream.call.cancel()
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
            log.info("relay stream to %s ended: %s %s", self._peer, code.name, details)
        elif code != grpc.StatusCode.CANCELLED:
            log.warning("relay stream to %s ended: %s %s", self._peer, code.name, details)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._down(stream, grpc.StatusCode.CANCELLED, "closed")


def _expire(fut: asyncio.Future[rpb.RelayedReply]) -> None:
    if not fut.done():
        fut.set_exception(RelayFailed(grpc.StatusCode.DEADLINE_EXCEEDED))


#: A relayed call: (method, request bytes, metadata, timeout) -> reply.
Relay = Callable[[str, bytes, Sequence[tuple[str, str]], float], Awaitable[rpb.RelayedReply]]

"""The relay's two ends (vault.service._relay) over real gRPC on loopback.

The home side here is either the real RelayServicer (with handlers of its
own) or a peer that misbehaves on purpose: one that answers out of order,
one that never answers, one that ends the stream, one without the relay.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from vault.config import NodeSettings, load_regions
from vault.server import server_options
from vault.service._forward import channel_options
from vault.service._relay import (
    MAX_CALLS_BYTES,
    MAX_REPLIES_BYTES,
    UNSUPPORTED_RETRY_SECONDS,
    RelayFailed,
    RelayLink,
    RelayServicer,
    RelayUnsupported,
)
from vault.v1 import relay_pb2 as rpb
from vault.v1 import relay_pb2_grpc as rpb_grpc
from vault.v1 import vault_pb2 as pb

Peer = Callable[[AsyncIterator[rpb.RelayedCalls], Any], AsyncIterator[rpb.RelayedReplies]]


SETTINGS = NodeSettings(data_dir=Path("unused"))


async def _serve(
    relay: Peer | None = None, settings: NodeSettings = SETTINGS, **services: Any
) -> tuple[grpc.aio.Server, str]:
    """A server with a node's options (message limits, keepalive policy)."""
    server = grpc.aio.server(options=server_options(settings))
    if relay is not None:
        handler = grpc.method_handlers_generic_handler(
            "vault.v1.NodeRelay",
            {
                "Relay": grpc.stream_stream_rpc_method_handler(
                    relay,
                    request_deserializer=rpb.RelayedCalls.FromString,
                    response_serializer=rpb.RelayedReplies.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
    server.add_generic_rpc_handlers(tuple(services.values()))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _echo(call: rpb.RelayedCall) -> rpb.RelayedReply:
    return rpb.RelayedReply(id=call.id, reply=call.request)


async def _link(
    target: str, clock: Callable[[], float] | None = None, settings: NodeSettings = SETTINGS
) -> RelayLink:
    channel = grpc.aio.insecure_channel(target, options=channel_options(settings))
    stub = rpb_grpc.NodeRelayStub(channel)  # type: ignore[no-untyped-call]
    return RelayLink(stub) if clock is None else RelayLink(stub, clock=clock)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


def test_replies_reach_their_calls_in_any_order() -> None:
    async def backwards(
        calls: AsyncIterator[rpb.RelayedCalls], _: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        held: list[rpb.RelayedCall] = []
        async for message in calls:
            held += message.calls
            if len(held) >= 8:
                yield rpb.RelayedReplies(replies=[_echo(c) for c in reversed(held)])
                held = []

    async def main() -> None:
        server, target = await _serve(backwards)
        link = await _link(target)
        try:
            got = await asyncio.gather(
                *(link.call("GetRecord", f"r{i}".encode(), (), 5.0) for i in range(8))
            )
            assert [g.reply for g in got] == [f"r{i}".encode() for i in range(8)]
        finally:
            await link.close()
            await server.stop(0)

    run(main)


def test_messages_stay_within_what_a_node_receives() -> None:
    """Calls of 300 KB each, all at once: as many per message as fit in a
    node's 1 MiB; replies up to their own bound; a call too big for any
    message is not sent on the stream at all."""
    sizes: list[int] = []
    reply_sizes: list[int] = []

    async def echo(
        calls: AsyncIterator[rpb.RelayedCalls], _: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        async for message in calls:
            sizes.append(message.ByteSize())
            replies = rpb.RelayedReplies(replies=[_echo(c) for c in message.calls])
            reply_sizes.append(replies.ByteSize())
            yield replies

    async def main() -> None:
        server, target = await _serve(echo)
        link = await _link(target)
        md = (("authorization", "Bearer " + "t" * 400),)
        try:
            bodies = [bytes([i]) * 300_000 for i in range(12)]
            got = await asyncio.gather(*(link.call("PutRecord", b, md, 10.0) for b in bodies))
            assert [g.reply for g in got] == bodies
            assert len(sizes) > 1 and max(sizes) <= MAX_CALLS_BYTES
            assert max(reply_sizes) <= MAX_REPLIES_BYTES
            opened = len(sizes)
            with pytest.raises(RelayUnsupported):
                await link.call("PutRecord", b"x" * MAX_CALLS_BYTES, md, 10.0)
            assert len(sizes) == opened
        finally:
            await link.close()
            await server.stop(0)

    run(main)


def test_an_idle_relay_stream_is_kept_alive_by_pings_the_peer_accepts() -> None:
    """The nodes' keepalive settings, scaled down: pings every 0.3 s that the
    peer accepts keep an idle stream open; a peer that takes pings only every
    10 s (gRPC's policy without the node's server options) hangs up on them
    ("too_many_pings"), which is what the node's server options prevent."""
    fast = dataclasses.replace(SETTINGS, peer_keepalive_seconds=0.3, min_ping_interval_seconds=0.2)
    strict = dataclasses.replace(SETTINGS, min_ping_interval_seconds=10.0)

    async def echo(
        calls: AsyncIterator[rpb.RelayedCalls], _: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        async for message in calls:
            yield rpb.RelayedReplies(replies=[_echo(c) for c in message.calls])

    async def idle_for(server_settings: NodeSettings, most: float) -> float:
        """How long the stream stayed open while idle (``most``: it did not end)."""
        server, target = await _serve(echo, server_settings)
        link = await _link(target, settings=fast)
        try:
            assert (await link.call("GetRecord", b"a", (), 5.0)).reply == b"a"
            stream = link._stream
            assert stream is not None
            start = time.monotonic()
            while link._stream is stream and time.monotonic() - start < most:
                await asyncio.sleep(0.1)
            lasted = min(time.monotonic() - start, most)
            assert (await link.call("GetRecord", b"b", (), 5.0)).reply == b"b"
            return lasted
        finally:
            await link.close()
            await server.stop(0)

    async def main() -> None:
        hung_up_after = await idle_for(strict, 60.0)
        assert hung_up_after < 60.0  # the strict peer does hang up on these pings
        # The node's own policy keeps it open at least three times as long.
        assert await idle_for(fast, 3 * hung_up_after + 1) == 3 * hung_up_after + 1

    run(main)


def test_a_call_without_a_reply_fails_at_its_deadline_and_the_link_goes_on() -> None:
    async def drops_the_first(
        calls: AsyncIterator[rpb.RelayedCalls], _: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        async for message in calls:
            answered = [_echo(c) for c in message.calls if c.request != b"lost"]
            if answered:
                yield rpb.RelayedReplies(replies=answered)

    async def main() -> None:
        server, target = await _serve(drops_the_first)
        link = await _link(target)
        try:
            with pytest.raises(RelayFailed) as e:
                await link.call("GetRecord", b"lost", (), 0.2)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            assert (await link.call("GetRecord", b"next", (), 5.0)).reply == b"next"
        finally:
            await link.close()
            await server.stop(0)

    run(main)


def test_a_stream_that_ends_fails_its_calls_and_the_next_call_opens_another() -> None:
    streams = 0

    async def ends_at_end(
        calls: AsyncIterator[rpb.RelayedCalls], _: Any
    ) -> AsyncIterator[rpb.RelayedReplies]:
        nonlocal streams
        streams += 1
        async for message in calls:
            if any(c.request == b"end" for c in message.calls):
                return  # the calls in flight are never answered
            yield rpb.RelayedReplies(replies=[_echo(c) for c in message.calls])

    async def main() -> None:
        server, target = await _serve(ends_at_end)
        link = await _link(target)
        try:
            assert (await link.call("GetRecord", b"a", (), 5.0)).reply == b"a"
            with pytest.raises(RelayFailed) as e:
                await link.call("GetRecord", b"end", (), 5.0)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert (await link.call("GetRecord", b"b", (), 5.0)).reply == b"b"
            assert streams == 2
        finally:
            await link.close()
            await server.stop(0)

    run(main)


def test_a_peer_that_is_down_fails_the_call_unavailable() -> None:
    async def main() -> None:
        server, target = await _serve(lambda calls, ctx: _nothing())
        await server.stop(0)
        link = await _link(target)
        try:
            with pytest.raises(RelayFailed) as e:
                await link.call("GetRecord", b"x", (), 5.0)
            assert e.value.code in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        finally:
            await link.close()

    run(main)


async def _nothing() -> AsyncIterator[rpb.RelayedReplies]:
    return
    yield


def test_a_peer_without_the_relay_is_called_directly_for_a_while() -> None:
    now = [1000.0]

    async def main() -> None:
        server, target = await _serve(None)
        link = await _link(target, clock=lambda: now[0])
        try:
            assert link.usable
            with pytest.raises(RelayUnsupported):
                await link.call("GetRecord", b"x", (), 5.0)
            assert not link.usable
            now[0] += UNSUPPORTED_RETRY_SECONDS - 1
            assert not link.usable
            now[0] += 1
            assert link.usable
        finally:
            await link.close()
            await server.stop(0)

    run(main)


class _Slow:
    """A GetSubject handler that waits for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, request: pb.GetSubjectRequest, context: Any) -> pb.Subject:
        self.started.set()
        await self.release.wait()
        return pb.Subject(subject_id=request.subject_id)


def _relay_servicer(handler: Any, **kwargs: Any) -> RelayServicer:
    method = grpc.unary_unary_rpc_method_handler(
        handler,
        request_deserializer=pb.GetSubjectRequest.FromString,
        response_serializer=pb.Subject.SerializeToString,
    )
    return RelayServicer(
        load_regions(), {"/vault.v1.PersonalDataVault/GetSubject": method}, **kwargs
    )


def test_a_call_whose_deadline_passed_before_it_starts_is_not_run() -> None:
    """The clock moves a second between reading a call and starting it: a
    call with 0.5 s left is answered DEADLINE_EXCEEDED without running, one
    with 5 s runs."""
    ran: list[str] = []

    async def get_subject(request: pb.GetSubjectRequest, context: Any) -> pb.Subject:
        ran.append(request.subject_id)
        return pb.Subject(subject_id=request.subject_id)

    ticks = iter(float(i) for i in range(100))
    relay = _relay_servicer(get_subject, clock=lambda: next(ticks))
    node = load_regions().regions["de"].node_identity

    def call(call_id: int, sid: str, timeout_ms: int) -> rpb.RelayedCall:
        request = pb.GetSubjectRequest(subject_id=sid).SerializeToString()
        return rpb.RelayedCall(
            id=call_id, method="GetSubject", request=request, timeout_ms=timeout_ms
        )

    async def main() -> None:
        async def calls() -> AsyncIterator[rpb.RelayedCalls]:
            yield rpb.RelayedCalls(calls=[call(1, "de_sub_late", 500)])
            yield rpb.RelayedCalls(calls=[call(2, "de_sub_on_time", 5000)])

        ctx = _Context({"x509_common_name": [node.encode()]})
        got = {r.id: r async for m in relay.Relay(calls(), ctx) for r in m.replies}
        assert got[1].code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert got[2].code == 0
        assert ran == ["de_sub_on_time"]

    run(main)


def test_a_draining_home_node_answers_what_is_in_flight_and_ends_the_stream() -> None:
    """No client certificate here, so the servicer is driven directly with a
    node's auth context."""

    async def main() -> None:
        slow = _Slow()
        relay = _relay_servicer(slow)
        node = load_regions().regions["de"].node_identity
        ctx = _Context({"x509_common_name": [node.encode()]})
        inbox: asyncio.Queue[rpb.RelayedCalls | None] = asyncio.Queue()

        async def calls() -> AsyncIterator[rpb.RelayedCalls]:
            while (m := await inbox.get()) is not None:
                yield m

        request = pb.GetSubjectRequest(subject_id="de_sub_x").SerializeToString()
        inbox.put_nowait(
            rpb.RelayedCalls(calls=[rpb.RelayedCall(id=1, method="GetSubject", request=request)])
        )
        replies = relay.Relay(calls(), ctx)
        first = asyncio.ensure_future(replies.__anext__())
        await slow.started.wait()
        relay.drain()
        # Sent after the drain: never run.
        inbox.put_nowait(
            rpb.RelayedCalls(calls=[rpb.RelayedCall(id=2, method="GetSubject", request=request)])
        )
        await asyncio.sleep(0.05)
        assert not first.done()  # the call in flight is still answered
        slow.release.set()
        got = await asyncio.wait_for(first, 5)
        assert [(r.id, r.code) for r in got.replies] == [(1, 0)]
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(replies.__anext__(), 5)
        with pytest.raises(_Aborted) as e:
            await relay.Relay(calls(), ctx).__anext__()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE

    run(main)


def test_a_stream_that_ends_leaves_no_task_behind() -> None:
    """The entry node goes away while the stream waits for its next call:
    the reader and the drain watch end with the stream (a node serves such
    streams for days; a task left per stream would pile up)."""

    async def get_subject(request: pb.GetSubjectRequest, context: Any) -> pb.Subject:
        return pb.Subject(subject_id=request.subject_id)

    async def main() -> None:
        relay = _relay_servicer(get_subject)
        node = load_regions().regions["de"].node_identity
        more = asyncio.Event()

        async def calls() -> AsyncIterator[rpb.RelayedCalls]:
            request = pb.GetSubjectRequest(subject_id="de_sub_x").SerializeToString()
            yield rpb.RelayedCalls(
                calls=[rpb.RelayedCall(id=1, method="GetSubject", request=request)]
            )
            await more.wait()  # never: the entry node is gone

        before = asyncio.all_tasks()
        replies = relay.Relay(calls(), _Context({"x509_common_name": [node.encode()]}))
        first = await replies.__anext__()
        assert [r.id for r in first.replies] == [1]
        await replies.aclose()
        for _ in range(5):
            await asyncio.sleep(0)
        assert asyncio.all_tasks() - before == set()

    run(main)


def test_a_caller_without_a_node_identity_cannot_open_the_relay() -> None:
    async def main() -> None:
        relay = _relay_servicer(_Slow())
        for auth in ({}, {"x509_common_name": [b"crm-backend"]}):
            with pytest.raises(_Aborted) as e:
                await relay.Relay(_no_calls(), _Context(auth)).__anext__()
            assert e.value.code == grpc.StatusCode.PERMISSION_DENIED

    run(main)


async def _no_calls() -> AsyncIterator[rpb.RelayedCalls]:
    return
    yield


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code


class _Context:
    """The stream's servicer context: its peer's auth context, and abort."""

    def __init__(self, auth: dict[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code)


def test_peers_call_a_node_without_the_relay_directly(tmp_path: Any) -> None:
    """An older home node (no NodeRelay): the forwarded call is made as a call
    of its own, its reply and its error statuses come back as they were sent."""
    from vault.service._forward import ForwardFailed, Peers

    async def get_subject(request: pb.GetSubjectRequest, context: Any) -> pb.Subject:
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != "Bearer t":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no token")
        return pb.Subject(subject_id=request.subject_id, region=metadata["x-pdvault-entry-region"])

    vault_only = grpc.method_handlers_generic_handler(
        "vault.v1.PersonalDataVault",
        {
            "GetSubject": grpc.unary_unary_rpc_method_handler(
                get_subject,
                request_deserializer=pb.GetSubjectRequest.FromString,
                response_serializer=pb.Subject.SerializeToString,
            )
        },
    )

    async def main() -> None:
        server, target = await _serve(None, vault=vault_only)
        regions = load_regions()
        regions = dataclasses.replace(
            regions,
            regions={
                **regions.regions,
                "de": dataclasses.replace(regions.regions["de"], endpoint=target),
            },
        )
        peers = Peers(regions, NodeSettings(data_dir=tmp_path), "us")
        request = pb.GetSubjectRequest(subject_id="de_sub_x")
        try:
            for _ in range(2):
                got = await peers.call(
                    "de",
                    "GetSubject",
                    request,
                    peers.metadata((("authorization", "Bearer t"),)),
                    5.0,
                    pb.Subject,
                )
                assert (got.subject_id, got.region) == ("de_sub_x", "us")
            with pytest.raises(ForwardFailed) as e:
                await peers.call("de", "GetSubject", request, peers.metadata(()), 5.0, pb.Subject)
            assert (e.value.code, e.value.details) == (grpc.StatusCode.UNAUTHENTICATED, "no token")
        finally:
            await peers.close()
            await server.stop(0)

    run(main)

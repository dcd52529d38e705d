"""Forwarding: a node serves any id by calling a node of the id's home region.

A node that serves exactly one region (``pdvault serve --region R``) and gets
a call about an id of another region forwards it, as the raw request message,
to that region's ``endpoint`` (regions.yaml) over mutual TLS
(:class:`~vault.config.PeerTlsSettings`) — a unary call on the node's relay
stream to that node (:mod:`vault.service._relay`), a streaming one as a call
of its own — with

- the caller's ``authorization`` metadata, unchanged (the home node
  authenticates and authorises the caller itself);
- the remaining deadline (or ``forward_timeout_seconds`` when the caller set
  none);
- ``x-request-id``: the caller's, if well-formed, else a new one;
- ``x-pdvault-entry-region``: this node's region. Whatever the caller sent
  under that name is dropped.

The home node takes the entry region from the peer's verified client
certificate: a peer presenting exactly region X's ``node_identity`` entered by
X, and may say so in ``x-pdvault-entry-region: X`` (any other value is
refused); from anyone else the header is ignored, the caller is treated as
having entered at the home node, and no border is crossed
(:func:`entry_region`). A call from a node identity is never forwarded again
(one hop).

The entry node authenticates the caller before forwarding, relays the home
node's error status as is (an unreachable home region is ``UNAVAILABLE``,
``REGION_UNAVAILABLE``) and checks the transfer rules again on every reply
that carries plaintext, with the reply's category: it trusts the home node no
more than the caller.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, TypeVar, cast

import grpc

from vault import metrics
from vault.config import NodeSettings, PeerTlsSettings, RegionsConfig
from vault.errors import AccessDenied, ConfigError, ConfigProblem, KeyServiceUnavailable
from vault.logs import current_request_id
from vault.service._relay import (
    STATUS_DETAILS,
    RelayFailed,
    RelayLink,
    RelayUnsupported,
    status_code,
)
from vault.transport import is_loopback
from vault.v1 import relay_pb2_grpc as rpb_grpc
from vault.v1 import vault_pb2_grpc as pb_grpc

ENTRY_HEADER = "x-pdvault-entry-region"
REQUEST_ID_HEADER = "x-request-id"
R = TypeVar("R")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def channel_options(settings: NodeSettings) -> list[tuple[str, int]]:
    """The arguments of a channel to another node."""
    return [
        # Reconnect quickly to a node that comes back (gRPC's default backoff
        # grows to 2 minutes).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 1024 * 1024),
        # Ping the peer, idle or not: a relay stream is open for days.
        ("grpc.keepalive_time_ms", int(settings.peer_keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class ForwardFailed(Exception):
    """The home node's answer to a forwarded call was an error status (or
    there was no answer: ``UNAVAILABLE``/``DEADLINE_EXCEEDED`` without details)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, Any], ...]
    ) -> None:
        super().__init__(code.name)
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata

    @classmethod
    def of(cls, err: grpc.aio.AioRpcError) -> ForwardFailed:
        """The failure a direct call to the home node ended with."""
        return cls(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))


class RegionUnavailable(KeyServiceUnavailable):
    """The node of the id's home region could not be reached."""

    reason = "REGION_UNAVAILABLE"


def metadata_values(metadata: Iterable[tuple[str, Any]] | None, key: str) -> list[str]:
    return [v for k, v in metadata or () if k == key and isinstance(v, str)]


def request_id(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's ``x-request-id`` if it is one well-formed value, else a new one."""
    given = metadata_values(metadata, REQUEST_ID_HEADER)
    if len(given) == 1 and _REQUEST_ID_RE.fullmatch(given[0]):
        return given[0]
    return uuid.uuid4().hex


def entry_region(
    regions: RegionsConfig, peer_identity: str | None, metadata: Iterable[tuple[str, Any]] | None
) -> str | None:
    """The region a call entered the vault by, if not at this node.

    A peer whose verified client certificate presents region X's node identity
    entered by X, whatever it sends: a node cannot pass for a caller at the
    home node by leaving the header out, and a header naming another region is
    refused (``ENTRY_REGION_MISMATCH``). From anyone else the header is
    ignored: the caller entered here. None: entered here.
    """
    peer_region = regions.node_region(peer_identity)
    if peer_region is None:
        return None
    if any(v != peer_region for v in metadata_values(metadata, ENTRY_HEADER)):
        raise AccessDenied(
            "a node may report only its own region as the entry region",
            reason="ENTRY_REGION_MISMATCH",
        )
    return peer_region


def _host(endpoint: str) -> str:
    return endpoint.rpartition(":")[0]


class Peers:
    """Channels to the nodes of the other regions: one per endpoint, kept open."""

    def __init__(self, regions: RegionsConfig, settings: NodeSettings, entry: str) -> None:
        self.regions = regions
        self.entry = entry
        self.timeout = settings.forward_timeout_seconds
        self._tls = settings.peer_tls
        self._options = channel_options(settings)
        self._credentials = None if self._tls is None else _peer_credentials(self._tls)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.PersonalDataVaultStub] = {}
        self._links: dict[str, RelayLink] = {}
        self._counters = {
            r: metrics.FORWARDED.labels(entry, r) for r in regions.regions if r != entry
        }

    def check(self) -> None:
        """Refuses plaintext forwarding to an endpoint that is not loopback."""
        if self._tls is not None:
            return
        problems = [
            ConfigProblem(
                f"regions[{r.id}].endpoint",
                "is not a loopback address: forwarding to it needs peer TLS "
                "(--peer-ca, --peer-cert, --peer-key)",
            )
            for r in self.regions.regions.values()
            if r.id != self.entry and not is_loopback(_host(r.endpoint))
        ]
        if problems:
            raise ConfigError("forwarding", problems)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            else:
                channel = grpc.aio.secure_channel(
                    endpoint, self._credentials, options=self._options
                )
            self._channels[endpoint] = channel
        return channel

    def stub(self, region: str) -> pb_grpc.PersonalDataVaultStub:
        """The stub of ``region``'s node, for one forwarded call (counted)."""
        self._counters[region].inc()
        return self._stub(self.regions.regions[region].endpoint)

    def _stub(self, endpoint: str) -> pb_grpc.PersonalDataVaultStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            # One stub per channel: making one builds a callable per RPC.
            stub = self._stubs[endpoint] = pb_grpc.PersonalDataVaultStub(self._channel(endpoint))  # type: ignore[no-untyped-call]
        return stub

    def _link(self, endpoint: str) -> RelayLink:
        link = self._links.get(endpoint)
        if link is None:
            stub = rpb_grpc.NodeRelayStub(self._channel(endpoint))  # type: ignore[no-untyped-call]
            link = self._links[endpoint] = RelayLink(stub, peer=endpoint)
        return link

    async def call(
        self,
        region: str,
        method: str,
        request: Any,
        metadata: tuple[tuple[str, str], ...],
        timeout: float,
        reply_type: type[R],
    ) -> R:
        """One unary call forwarded to ``region``'s node: on the relay stream
        (:mod:`vault.service._relay`), or directly when that node has none.
        :class:`ForwardFailed` with the home node's status if it fails."""
        self._counters[region].inc()
        endpoint = self.regions.regions[region].endpoint
        link = self._link(endpoint)
        deadline = time.monotonic() + timeout
        if link.usable:
            try:
                reply = await link.call(method, request.SerializeToString(), metadata, timeout)
            except RelayFailed as e:
                raise ForwardFailed(e.code, e.details, ()) from None
            except RelayUnsupported:
                pass  # not run there: call it directly
            else:
                if reply.code:
                    trailing = (
                        ((STATUS_DETAILS, reply.status_details),) if reply.status_details else ()
                    )
                    raise ForwardFailed(status_code(reply.code), reply.details, trailing)
                return cast(R, cast(Any, reply_type).FromString(reply.reply))
        try:
            answer = await getattr(self._stub(endpoint), method)(
                request, metadata=metadata, timeout=max(deadline - time.monotonic(), 0.001)
            )
        except grpc.aio.AioRpcError as e:
            raise ForwardFailed.of(e) from None
        return cast(R, answer)

    def metadata(self, invocation: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, str], ...]:
        md: list[tuple[str, str]] = [
            ("authorization", v) for v in metadata_values(invocation, "authorization")[:1]
        ]
        md.append((REQUEST_ID_HEADER, current_request_id() or request_id(invocation)))
        md.append((ENTRY_HEADER, self.entry))
        return tuple(md)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        self._stubs.clear()
        links, self._links = self._links, {}
        for link in links.values():
            await link.close()
        for c in channels.values():
            await c.close()


def _peer_credentials(tls: PeerTlsSettings) -> grpc.ChannelCredentials:
    def read(path: Any, flag: str) -> bytes:
        try:
            return bytes(path.read_bytes())
        except OSError as e:
            raise ConfigError(
                "peer TLS settings",
                [ConfigProblem(f"{flag} {path}", f"cannot be read ({e.strerror})")],
            ) from None

    return grpc.ssl_channel_credentials(
        root_certificates=read(tls.ca_file, "--peer-ca"),
        private_key=read(tls.key_file, "--peer-key"),
        certificate_chain=read(tls.cert_file, "--peer-cert"),
    )

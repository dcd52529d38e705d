"""Composition root: configuration → key providers → cells → gRPC server.

Per-region instances are built here and only here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vault.cell import Cell
from vault.config import NodeSettings, RegionsConfig
from vault.keys import DataKeyCache, KeyProvider, TransitKeyProvider
from vault.node import Node
from vault.service import PersonalDataVaultServicer
from vault.store import CellStore, make_engine, migrate
from vault.v1 import vault_pb2, vault_pb2_grpc

log = logging.getLogger("vault.server")

MAX_MESSAGE_BYTES = 1024 * 1024
SERVICE_NAMES = (vault_pb2.DESCRIPTOR.services_by_name["PersonalDataVault"].full_name,)


def build_node(
    regions: RegionsConfig,
    settings: NodeSettings,
    *,
    openbao_token: str,
    serve_regions: frozenset[str] | None = None,
    providers: dict[str, KeyProvider] | None = None,
) -> Node:
    """Opens (and migrates) every served cell and connects its key service.

    Regions sharing one OpenBao address share one client; ``providers``
    (address → provider) lets tests inject an instrumented one.
    """
    providers = dict(providers or {})
    cells: dict[str, Cell] = {}
    for rid, rc in regions.regions.items():
        if serve_regions is not None and rid not in serve_regions:
            continue
        engine = make_engine(rc.database_url)
        migrate(engine)
        provider = providers.get(rc.openbao_address)
        if provider is None:
            provider = TransitKeyProvider.connect(
                rc.openbao_address, openbao_token, timeout=settings.openbao_timeout_seconds
            )
            providers[rc.openbao_address] = provider
        cells[rid] = Cell(
            rc, CellStore(engine), provider, DataKeyCache(settings.cache), settings.limits
        )
    return Node(regions, cells, settings.limits)


class VaultServer:
    """The gRPC server of one node: the vault API, health and reflection."""

    def __init__(self, node: Node, settings: NodeSettings, workers: int = 16) -> None:
        self.node = node
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault")
        self._server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0

    async def start(self) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        vault_pb2_grpc.add_PersonalDataVaultServicer_to_server(  # type: ignore[no-untyped-call]
            PersonalDataVaultServicer(self.node, self._executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {self.settings.host}:{self.settings.port}")
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        self._executor.shutdown(wait=True, cancel_futures=True)


class BackgroundServer:
    """Runs a :class:`VaultServer` on its own event loop thread (tests, benchmarks)."""

    def __init__(self, server: VaultServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

"""Composition root: configuration → key providers → cells → gRPC server.

Per-region instances are built here and only here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vault.authn import TokenAuthority, load_or_create_signing_key
from vault.cell import Cell
from vault.config import NodeSettings, RegionsConfig
from vault.control import ControlStore, Revocations
from vault.erasure import Eraser
from vault.keys import (
    BoundedCache,
    DataKeyCache,
    KeyProvider,
    TransitKeyProvider,
    TransitKeyShredder,
)
from vault.node import Node
from vault.policy import Authorizer, Policy
from vault.service import PersonalDataVaultServicer, TokenServicer
from vault.store import CellStore, make_engine, migrate
from vault.v1 import vault_pb2, vault_pb2_grpc

log = logging.getLogger("vault.server")

MAX_MESSAGE_BYTES = 1024 * 1024
SERVICE_NAMES = (vault_pb2.DESCRIPTOR.services_by_name["PersonalDataVault"].full_name,)


@dataclass
class Vault:
    """Everything one node runs, built in one place."""

    node: Node
    authority: TokenAuthority
    revocations: Revocations
    control: ControlStore
    eraser: Eraser

    def close(self) -> None:
        self.revocations.stop()
        for cell in self.node.cells.values():
            cell.store.engine.dispose()
        self.control.engine.dispose()


def build_vault(
    regions: RegionsConfig,
    settings: NodeSettings,
    *,
    openbao_token: str,
    eraser_token: str | None = None,
    policy: Policy,
    admin_credential: str | None,
    serve_regions: frozenset[str] | None = None,
    providers: dict[str, KeyProvider] | None = None,
) -> Vault:
    """Opens (and migrates) every served cell and the control plane, connects
    the key services, unwraps the token signing key.

    Regions sharing one OpenBao address share one client; ``providers``
    (address → provider) lets tests inject an instrumented one.
    """
    providers = dict(providers or {})

    def provider_for(address: str) -> KeyProvider:
        p = providers.get(address)
        if p is None:
            p = TransitKeyProvider.connect(
                address, openbao_token, timeout=settings.openbao_timeout_seconds
            )
            providers[address] = p
        return p

    authz = Authorizer(policy)
    cells: dict[str, Cell] = {}
    for rid, rc in regions.regions.items():
        if serve_regions is not None and rid not in serve_regions:
            continue
        engine = make_engine(rc.database_url)
        migrate(engine)
        cells[rid] = Cell(
            rc,
            CellStore(engine),
            provider_for(rc.openbao_address),
            DataKeyCache(settings.cache),
            settings.limits,
            authz,
            subject_cache=BoundedCache(settings.cache),
        )
    control = ControlStore(make_engine(regions.control.database_url))
    revocations = Revocations(control)
    signing, keyset = load_or_create_signing_key(
        settings.data_dir / "tokens",
        provider_for(regions.control.openbao_address),
        regions.control.transit_mount,
    )
    digest = hashlib.sha256(admin_credential.encode()).digest() if admin_credential else None
    authority = TokenAuthority(signing, keyset, control, revocations, authz, digest)
    shredders: dict[str, TransitKeyShredder] = {}
    if eraser_token:
        for rid in cells:
            address = regions.regions[rid].openbao_address
            shredders[rid] = TransitKeyShredder.connect(address, eraser_token)
    node = Node(regions, cells, settings.limits)
    eraser = Eraser(node, control, shredders, signing, keyset)
    return Vault(node, authority, revocations, control, eraser)


class VaultServer:
    """The gRPC server of one node: the vault API, health and reflection."""

    def __init__(self, vault: Vault, settings: NodeSettings, workers: int = 16) -> None:
        self.vault = vault
        self.node = vault.node
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault")
        self._server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0
        self._workers: list[asyncio.Task[None]] = []

    async def start(self) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ]
        )
        vault_pb2_grpc.add_PersonalDataVaultServicer_to_server(  # type: ignore[no-untyped-call]
            PersonalDataVaultServicer(
                self.node, self.vault.authority, self.vault.eraser, self._executor
            ),
            server,
        )
        vault_pb2_grpc.add_TokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TokenServicer(self.node, self.vault.authority, self._executor), server
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
        self.vault.revocations.start()
        await server.start()
        self._server = server
        self._workers = [
            asyncio.create_task(self._erasure_worker()),
            asyncio.create_task(self._retention_worker()),
        ]
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def _erasure_worker(self) -> None:
        """Destroys the keys of erasures whose grace period has ended (also after a restart)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                done = await loop.run_in_executor(self._executor, self.vault.eraser.process_due)
                if done:
                    log.info("erasure worker: %d erasure(s) completed", done)
            except Exception as e:  # keep the worker alive; the next round retries
                log.warning("erasure worker: %s", type(e).__name__)
            await asyncio.sleep(self.settings.erasure_poll_seconds)

    async def _retention_worker(self) -> None:
        """Deletes records whose retention ended, a batch at a time (safe on many nodes)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.retention_sweep_seconds)
            for region, cell in self.node.cells.items():
                try:
                    total = 0
                    while n := await loop.run_in_executor(self._executor, cell.sweep_expired):
                        total += n
                    if total:
                        log.info("retention: %d expired record(s) deleted in %s", total, region)
                except Exception as e:  # the next round retries
                    log.warning("retention worker: %s", type(e).__name__)

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        for w in self._workers:
            w.cancel()
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.vault.close()


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

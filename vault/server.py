"""Composition root: configuration → key providers → cells → gRPC server.

Per-region instances are built here and only here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vault.cell import BlindIndex, Cell, KeyPool
from vault.config import NodeSettings, RegionsConfig
from vault.control import ControlStore, Revocations
from vault.datadir import DataDir
from vault.db import now_us
from vault.erasure import Eraser
from vault.keys import (
    BoundedCache,
    DataKeyCache,
    KeyProvider,
    KeyShredder,
    TransitKeyProvider,
    TransitKeyShredder,
)
from vault.policy import Authorizer, Policy
from vault.residency import Node, TransferGate
from vault.service import Peers, PersonalDataVaultServicer, TokenServicer
from vault.store import CellStore, CellTransferLog, PoolStore, make_engine, migrate
from vault.tokens.authority import AdminCredential, TokenAuthority, load_or_create_signing_key
from vault.transport import INSECURE_LOCAL, TLS_FLAGS, certificate_problem, server_credentials
from vault.v1 import vault_pb2, vault_pb2_grpc

log = logging.getLogger("vault.server")

MAX_MESSAGE_BYTES = 1024 * 1024
SERVICE_NAMES = (vault_pb2.DESCRIPTOR.services_by_name["PersonalDataVault"].full_name,)


@dataclass(frozen=True)
class Cells:
    """The cells of a node and the parts they were built from.

    The cells keep their collaborators private; the composition root keeps a
    reference to the stores and key caches it made, for operations tooling and
    tests that must act on them directly (seeding state, dropping caches).
    """

    cells: dict[str, Cell]
    stores: dict[str, CellStore]
    data_keys: dict[str, DataKeyCache]
    #: The subject-key pool of each cell (filled by :class:`VaultServer`).
    pools: dict[str, KeyPool]


@dataclass
class Vault:
    """Everything one node runs, built in one place."""

    node: Node
    authority: TokenAuthority
    revocations: Revocations
    control: ControlStore
    eraser: Eraser
    parts: Cells

    def close(self) -> None:
        self.revocations.stop()
        for pool in self.parts.pools.values():
            pool.close()
        self.node.close()
        self.control.close()


class KeyServices:
    """The key-service clients of a node: one per OpenBao address, per credential.

    Regions sharing one OpenBao address share one client; ``providers``
    (address → provider) lets tests inject an instrumented one.
    """

    def __init__(
        self,
        token: str,
        eraser_token: str | None = None,
        *,
        timeout: float = 5.0,
        providers: dict[str, KeyProvider] | None = None,
    ) -> None:
        self._token = token
        self._eraser_token = eraser_token
        self._timeout = timeout
        self._providers: dict[str, KeyProvider] = dict(providers or {})
        self._shredders: dict[str, KeyShredder] = {}

    def provider(self, address: str) -> KeyProvider:
        p = self._providers.get(address)
        if p is None:
            p = TransitKeyProvider.connect(address, self._token, timeout=self._timeout)
            self._providers[address] = p
        return p

    def shredder(self, address: str) -> KeyShredder | None:
        """The key-destruction client, if this node holds the eraser credential."""
        if self._eraser_token is None:
            return None
        s = self._shredders.get(address)
        if s is None:
            s = TransitKeyShredder.connect(address, self._eraser_token)
            self._shredders[address] = s
        return s


def build_cells(
    regions: RegionsConfig,
    settings: NodeSettings,
    keys: KeyServices,
    authz: Authorizer,
    serve_regions: frozenset[str] | None = None,
    cache_clock: Callable[[], float] = time.monotonic,
) -> Cells:
    """Opens (and migrates) the database of every served region and builds its
    cell; ``cache_clock`` (seconds) ages the data-key caches."""
    built = Cells({}, {}, {}, {})
    for rid, rc in regions.regions.items():
        if serve_regions is not None and rid not in serve_regions:
            continue
        engine = make_engine(rc.database_url)
        migrate(engine)
        store = built.stores[rid] = CellStore(engine)
        data_keys = built.data_keys[rid] = DataKeyCache(settings.cache, cache_clock)
        provider = keys.provider(rc.openbao_address)
        pool = built.pools[rid] = KeyPool(rc, provider, PoolStore(engine), settings.pool)
        built.cells[rid] = Cell(
            rc,
            store,
            provider,
            data_keys,
            BoundedCache(settings.cache),
            BlindIndex(store, provider, rc.transit_mounts[0]),
            settings.limits,
            authz,
            shredder=keys.shredder(rc.openbao_address),
            pool=pool,
            transfers=TransferGate(regions.transfers, rid, CellTransferLog(engine), now_us),
        )
    return built


def build_vault(
    regions: RegionsConfig,
    settings: NodeSettings,
    *,
    openbao_token: str,
    eraser_token: str | None = None,
    policy: Policy,
    admin_credential: str | None = None,
    admin_credential_file: Path | None = None,
    serve_regions: frozenset[str] | None = None,
    providers: dict[str, KeyProvider] | None = None,
    control_clock: Callable[[], int] = now_us,
    cache_clock: Callable[[], float] = time.monotonic,
) -> Vault:
    """Opens (and migrates) every served cell and the control plane, connects
    the key services, unwraps the token signing key. ``control_clock``
    (microseconds) stamps control-plane writes.

    The administrator credential: ``admin_credential_file`` (followed, so a
    rotation needs no restart), else ``admin_credential`` (fixed), else none.
    """
    if admin_credential is not None and admin_credential_file is not None:
        raise ValueError("give the administrator credential or its file, not both")
    keys = KeyServices(
        openbao_token,
        eraser_token,
        timeout=settings.openbao_timeout_seconds,
        providers=providers,
    )
    authz = Authorizer(policy)
    parts = build_cells(regions, settings, keys, authz, serve_regions, cache_clock)
    cells = parts.cells
    control = ControlStore(make_engine(regions.control.database_url), clock=control_clock)
    revocations = Revocations(control)
    signing, keyset = load_or_create_signing_key(
        DataDir(settings.data_dir).tokens,
        keys.provider(regions.control.openbao_address),
        regions.control.transit_mount,
    )
    admin = (
        AdminCredential.following(admin_credential_file)
        if admin_credential_file is not None
        else AdminCredential.fixed(admin_credential)
    )
    authority = TokenAuthority(signing, keyset, control, revocations, authz, admin)
    eraser = Eraser(cells, control, signing, keyset)
    node = Node(regions, cells, settings.limits, eraser)
    return Vault(node, authority, revocations, control, eraser, parts)


class VaultServer:
    """The gRPC server of one node: the vault API, health and (when asked for) reflection."""

    def __init__(self, vault: Vault, settings: NodeSettings, workers: int = 16) -> None:
        self.vault = vault
        self.node = vault.node
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault")
        self._server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0
        self._workers: list[asyncio.Task[None]] = []
        #: Channels to the other regions' nodes: a node serving one region of
        #: several forwards calls about the others (vault.service._forward).
        entry = self.node.entry_region
        self.peers = (
            Peers(self.node.regions, settings, entry)
            if entry is not None and len(self.node.regions.regions) > 1
            else None
        )

    async def start(self) -> int:
        """Listens and serves; returns the port.

        Raises :class:`~vault.errors.ConfigError`, before anything is bound or
        started, for plaintext on an address that is not loopback (see
        :mod:`vault.transport`) and for unreadable TLS files.
        """
        credentials = server_credentials(self.settings)
        if self.peers is not None:
            self.peers.check()
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if self.settings.reuse_port else 0),
            ]
        )
        vault_pb2_grpc.add_PersonalDataVaultServicer_to_server(  # type: ignore[no-untyped-call]
            PersonalDataVaultServicer(self.node, self.vault.authority, self._executor, self.peers),
            server,
        )
        vault_pb2_grpc.add_TokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TokenServicer(self.node, self.vault.authority, self._executor), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.settings.reflection:
            reflection.enable_server_reflection(
                (
                    *SERVICE_NAMES,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = (
                server.add_insecure_port(address)
                if credentials is None
                else server.add_secure_port(address, credentials)
            )
        except RuntimeError:  # grpc raises where it used to return 0
            self.port = 0
        if self.port == 0:
            hint = (
                ""
                if credentials is None
                else " (or the TLS key is not the unencrypted PEM key of the certificate)"
            )
            raise RuntimeError(f"cannot listen on {address}{hint}")
        self._announce_transport()
        self.vault.revocations.start()
        await server.start()
        self._server = server
        self._workers = [
            asyncio.create_task(self._erasure_worker()),
            asyncio.create_task(self._retention_worker()),
        ]
        if self.settings.pool.size > 0:
            self._workers.append(asyncio.create_task(self._pool_worker()))
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def _announce_transport(self) -> None:
        tls = self.settings.tls
        where = f"{self.settings.host}:{self.port}"
        if tls is None:
            log.warning(
                "INSECURE: local development only, plaintext on loopback %s (%s): tokens, "
                "the administrator credential and personal data cross it unencrypted; "
                "serve TLS with %s",
                where,
                INSECURE_LOCAL,
                TLS_FLAGS,
            )
            return
        log.info(
            "TLS on %s: %s",
            where,
            "mutual, client certificates signed by the client CA required"
            if tls.mutual
            else "server certificate only, no client certificates",
        )
        problem = certificate_problem(tls)
        if problem:
            log.warning("%s: clients will refuse the connection", problem)

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

    async def _pool_worker(self) -> None:
        """Keeps each served region's subject-key pool at its size, a batch at a
        time, at the pace the key service answers (also after a restart: the
        entries left unclaimed are counted, not minted again)."""
        loop = asyncio.get_running_loop()
        pools = [p for r, p in self.vault.parts.pools.items() if self.settings.pool.fills(r)]
        while True:
            added = 0
            for pool in pools:
                try:
                    added += await loop.run_in_executor(self._executor, pool.refill)
                except Exception as e:  # the next round retries
                    log.warning("pool filler (%s): %s", pool.region.id, type(e).__name__)
            if not added:
                await asyncio.sleep(self.settings.pool.poll_seconds)

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
        if self.peers is not None:
            await self.peers.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.vault.close()

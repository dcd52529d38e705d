"""Composition root: configuration → key providers → cells → gRPC server.

Per-region instances are built here and only here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from vault.audit import (
    CONTROL_LOG,
    SIGNING_KEY_NAME,
    Auditor,
    AuditStore,
    AuditWriter,
    CheckpointPolicy,
    audit_url,
)
from vault.cell import BlindIndex, Cell, KeyPool
from vault.config import KeyRotationPolicy, NodeSettings, RegionConfig, RegionsConfig
from vault.control import ControlStore, Revocations
from vault.datadir import DataDir
from vault.db import now_us
from vault.erasure import Eraser
from vault.errors import KeyServiceUnavailable
from vault.keys import (
    BoundedCache,
    DataKeyCache,
    KeyProvider,
    KeyRef,
    KeyShredder,
    OpenBaoCredential,
    RoutedKeyProvider,
    RoutedKeyRotator,
    RoutedKeyShredder,
    TransitKeyProvider,
    TransitKeyRotator,
    TransitKeyShredder,
    TransitSigner,
)
from vault.logs import RequestIdInterceptor
from vault.metrics import MetricsInterceptor, serve_metrics
from vault.policy import Authorizer, Policy
from vault.residency import Node, TransferBatch, TransferGate
from vault.rotation import LookupReindex, RateLimiter, SubjectKeyRotation
from vault.service import (
    MalformedRequests,
    Peers,
    PersonalDataVaultServicer,
    RelayServicer,
    TokenServicer,
    method_handlers,
)
from vault.store import (
    CellStore,
    CellTransferLog,
    IndexStore,
    PoolStore,
    RotationStore,
    make_engine,
    migrate,
)
from vault.tokens.authority import AdminCredential, TokenAuthority
from vault.tokens.keyfiles import (
    KeyFollower,
    SigningKeySchedule,
    SigningState,
    load_or_create_signing_key,
)
from vault.transport import INSECURE_LOCAL, TLS_FLAGS, certificate_problem, server_credentials
from vault.v1 import relay_pb2_grpc, vault_pb2, vault_pb2_grpc

log = logging.getLogger("vault.server")

MAX_MESSAGE_BYTES = 1024 * 1024
#: A subject key without its subject is reaped only past this age: a younger one
#: may belong to a CreateSubject still in flight.
ORPHAN_KEY_MIN_AGE_SECONDS = 15 * 60
SERVICE_NAMES = (vault_pb2.DESCRIPTOR.services_by_name["PersonalDataVault"].full_name,)


#: A key-service client of one cluster, and the same routed over several.
C = TypeVar("C")
R = TypeVar("R")


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
    #: The regions' audit logs (none with the audit off).
    audit_stores: dict[str, AuditStore]
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
    #: Follows the signing key files: a rotation needs no restart.
    key_follower: KeyFollower
    #: What the node needs to serve, probed for gRPC health: (name, check).
    readiness: tuple[tuple[str, Callable[[], bool]], ...] = ()
    #: Scheduled subject key rotation, per served region with a policy, when
    #: the node holds a rotation credential.
    rotations: dict[str, tuple[SubjectKeyRotation, KeyRotationPolicy]] = field(default_factory=dict)
    #: The audit logs (None only with the audit off, for benchmarks).
    audit: Auditor | None = None
    #: Scheduled signing-key rotation (``control.signing_key_rotation``), or None.
    signing_schedule: SigningKeySchedule | None = None
    #: Scheduled blind-index re-index, likewise (regions.yaml ``index_rotation``).
    reindexes: dict[str, tuple[LookupReindex, KeyRotationPolicy]] = field(default_factory=dict)

    def not_ready(self) -> list[str]:
        """The names of the dependencies that fail their check now."""
        return [name for name, check in self.readiness if not check()]

    def close(self) -> None:
        self.key_follower.stop()
        self.revocations.stop()
        if self.audit is not None:
            self.audit.close()
        for pool in self.parts.pools.values():
            pool.close()
        self.node.close()
        self.control.close()


class KeyServices:
    """The key-service clients of a node: one per OpenBao address, per credential.

    Regions sharing one OpenBao address share one client; ``providers`` and
    ``shredders`` (address → client) let tests inject their own (instrumented,
    or logged in to another cluster with another credential).
    """

    def __init__(
        self,
        token: OpenBaoCredential,
        eraser_token: OpenBaoCredential | None = None,
        *,
        timeout: float = 5.0,
        providers: dict[str, KeyProvider] | None = None,
        shredders: dict[str, KeyShredder] | None = None,
    ) -> None:
        self._token = token
        self._eraser_token = eraser_token
        self._timeout = timeout
        self._providers: dict[str, KeyProvider] = dict(providers or {})
        self._shredders: dict[str, KeyShredder] = dict(shredders or {})

    def provider(self, address: str) -> KeyProvider:
        p = self._providers.get(address)
        if p is None:
            p = TransitKeyProvider.connect(address, self._token, timeout=self._timeout)
            self._providers[address] = p
        return p

    def signer(self, address: str, mount: str) -> TransitSigner:
        """The audit checkpoint signer of a mount (its key made if missing and allowed)."""
        signer = TransitSigner.for_key(
            address, self._token, KeyRef(mount, SIGNING_KEY_NAME), timeout=self._timeout
        )
        try:
            signer.ensure_key()
        except KeyServiceUnavailable as e:  # checkpoints retry; requests go on
            log.warning("audit key %s/%s not ready: %s", mount, SIGNING_KEY_NAME, e)
        return signer

    def shredder(self, address: str) -> KeyShredder | None:
        """The key-destruction client, if this node holds the eraser credential."""
        if self._eraser_token is None:
            return None
        s = self._shredders.get(address)
        if s is None:
            s = TransitKeyShredder.connect(address, self._eraser_token, timeout=self._timeout)
            self._shredders[address] = s
        return s

    def region_provider(self, rc: RegionConfig) -> KeyProvider:
        """The region's subject-key client: its OpenBao's, or routed by mount
        when the region spreads its mounts over several clusters."""
        return by_cluster(rc, self.provider, RoutedKeyProvider)

    def region_shredder(self, rc: RegionConfig) -> KeyShredder | None:
        """Like :meth:`region_provider`, for the eraser credential (None without it)."""
        if self._eraser_token is None:
            return None

        def shredder(address: str) -> KeyShredder:
            s = self.shredder(address)
            assert s is not None
            return s

        return by_cluster(rc, shredder, RoutedKeyShredder)


def by_cluster(
    rc: RegionConfig, connect: Callable[[str], C], routed: Callable[[dict[str, C]], R]
) -> C | R:
    """One client per OpenBao cluster of the region (``connect(address)``):
    the only cluster's, or ``routed`` over every mount to its cluster's."""
    clients = {a: connect(a) for a in rc.clusters()}
    if len(clients) == 1:
        return clients[rc.openbao_address]
    return routed({m: clients[rc.address_of(m)] for m in rc.transit_mounts})


def region_key_provider(
    rc: RegionConfig, credential: OpenBaoCredential, timeout: float | None = None
) -> KeyProvider:
    """A key client of a region with ``credential`` (routed by mount over its clusters)."""
    return by_cluster(
        rc, lambda a: TransitKeyProvider.connect(a, credential, timeout=timeout), RoutedKeyProvider
    )


def region_rotator(
    rc: RegionConfig, credential: OpenBaoCredential, timeout: float | None = None
) -> TransitKeyRotator | RoutedKeyRotator:
    """The rotation role's client of a region (routed by mount over its clusters)."""
    return by_cluster(
        rc, lambda a: TransitKeyRotator.connect(a, credential, timeout=timeout), RoutedKeyRotator
    )


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
    built = Cells({}, {}, {}, {}, {})
    for rid, rc in regions.regions.items():
        if serve_regions is not None and rid not in serve_regions:
            continue
        engine = make_engine(rc.database_url, settings.db_pool)
        migrate(engine)
        store = built.stores[rid] = CellStore(engine)
        data_keys = built.data_keys[rid] = DataKeyCache(settings.cache, cache_clock)
        provider = keys.region_provider(rc)
        if settings.audit:
            built.audit_stores[rid] = AuditStore.open(
                audit_url(rc.database_url, rid), rid, fsync=settings.audit_fsync
            )
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
            shredder=keys.region_shredder(rc),
            pool=pool,
            transfers=transfer_gate(regions, rid, CellTransferLog(engine), settings),
            access=built.audit_stores.get(rid),
        )
    return built


def transfer_gate(
    regions: RegionsConfig, rid: str, log: CellTransferLog, settings: NodeSettings
) -> TransferGate:
    """A region's transfer gate: reads' entries stored in batches with the
    calls' audit entries (see vault.residency.TransferBatch)."""
    batch = TransferBatch(log, settings.audit_batch_window_seconds)
    return TransferGate(regions.transfers, rid, log, now_us, batch)


def build_auditor(
    regions: RegionsConfig, settings: NodeSettings, keys: KeyServices, parts: Cells
) -> Auditor:
    """One writer per served region's log and one for ``control`` (its audit
    database beside the control database, see :func:`vault.audit.audit_url`),
    each signing checkpoints with the ``pdvault-audit`` key of the region's
    first mount (of the control mount)."""
    policy = CheckpointPolicy(settings.audit_checkpoint_entries, settings.audit_checkpoint_seconds)
    c = regions.control
    logs = {
        **{
            rid: (
                store,
                regions.regions[rid].openbao_address,
                regions.regions[rid].transit_mounts[0],
            )
            for rid, store in parts.audit_stores.items()
        },
        CONTROL_LOG: (
            AuditStore.open(
                audit_url(c.database_url, CONTROL_LOG), CONTROL_LOG, fsync=settings.audit_fsync
            ),
            c.openbao_address,
            c.transit_mount,
        ),
    }
    return Auditor(
        {
            name: AuditWriter(
                store,
                signer=keys.signer(address, mount),
                key_name=f"{mount}/{SIGNING_KEY_NAME}",
                checkpoints=policy,
                batch_window=settings.audit_batch_window_seconds,
                timeout=settings.audit_timeout_seconds,
            )
            for name, (store, address, mount) in logs.items()
        }
    )


def build_vault(
    regions: RegionsConfig,
    settings: NodeSettings,
    *,
    openbao_token: OpenBaoCredential,
    eraser_token: OpenBaoCredential | None = None,
    policy: Policy,
    admin_credential: str | None = None,
    admin_credential_file: Path | None = None,
    serve_regions: frozenset[str] | None = None,
    providers: dict[str, KeyProvider] | None = None,
    shredders: dict[str, KeyShredder] | None = None,
    control_clock: Callable[[], int] = now_us,
    cache_clock: Callable[[], float] = time.monotonic,
    rotator_token: OpenBaoCredential | None = None,
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
        shredders=shredders,
    )
    authz = Authorizer(policy)
    parts = build_cells(regions, settings, keys, authz, serve_regions, cache_clock)
    cells = parts.cells
    control = ControlStore(
        make_engine(regions.control.database_url, settings.db_pool), clock=control_clock
    )
    revocations = Revocations(control)
    tokens_dir = DataDir(settings.data_dir).tokens
    control_keys = keys.provider(regions.control.openbao_address)
    keyed = load_or_create_signing_key(tokens_dir, control_keys, regions.control.transit_mount)
    admin = (
        AdminCredential.following(admin_credential_file)
        if admin_credential_file is not None
        else AdminCredential.fixed(admin_credential)
    )
    authority = TokenAuthority(keyed.signing, keyed.tokens, control, revocations, authz, admin)
    eraser = Eraser(cells, control, keyed.signing, keyed.receipts)

    def use_keys(state: SigningState) -> None:
        authority.use_keys(state)
        eraser.use_keys(state.signing, state.receipts)

    follower = KeyFollower(tokens_dir, control_keys, regions.control.transit_mount, keyed, use_keys)
    node = Node(regions, cells, settings.limits, eraser)
    rotations = {}
    reindexes = {}
    if rotator_token:
        for rid, store in parts.stores.items():
            rc = regions.regions[rid]
            if rc.key_rotation is not None:
                rotator = region_rotator(rc, rotator_token)
                job = SubjectKeyRotation(RotationStore(store.engine), rotator, rid)
                rotations[rid] = (job, rc.key_rotation)
            if rc.index_rotation is not None:
                reindexes[rid] = (
                    LookupReindex(
                        RotationStore(store.engine),
                        IndexStore(store.engine),
                        region_key_provider(rc, rotator_token),
                        region_rotator(rc, rotator_token),
                        rid,
                        rc.transit_mounts[0],
                    ),
                    rc.index_rotation,
                )
    auditor = build_auditor(regions, settings, keys, parts) if settings.audit else None
    period = regions.control.signing_key_rotation_seconds
    schedule = (
        SigningKeySchedule(tokens_dir, control_keys, regions.control.transit_mount, period)
        if period
        else None
    )
    return Vault(
        node,
        authority,
        revocations,
        control,
        eraser,
        parts,
        follower,
        _readiness(regions, parts, control, keys),
        rotations,
        auditor,
        schedule,
        reindexes=reindexes,
    )


def _readiness(
    regions: RegionsConfig, parts: Cells, control: ControlStore, keys: KeyServices
) -> tuple[tuple[str, Callable[[], bool]], ...]:
    """The checks of the health probe: every database the node opened, and every
    OpenBao it uses (named by the regions it serves there, or "control")."""
    checks: list[tuple[str, Callable[[], bool]]] = [
        (f"cell {rid} database", store.ping) for rid, store in sorted(parts.stores.items())
    ]
    checks.append(("control database", control.ping))
    users: dict[str, list[str]] = {}
    for rid in sorted(parts.stores):
        for address in regions.regions[rid].clusters():
            users.setdefault(address, []).append(rid)
    users.setdefault(regions.control.openbao_address, []).append("control")
    for address, names in users.items():
        ready = getattr(keys.provider(address), "ready", None)
        if ready is not None:
            checks.append((f"OpenBao of {', '.join(names)}", ready))
    return tuple(checks)


def server_options(settings: NodeSettings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 16 * MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
        # Other nodes' keepalive pings (vault.service._forward), also while
        # their connection has no call in flight.
        ("grpc.keepalive_permit_without_calls", 1),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.min_ping_interval_seconds * 1000),
        ),
    ]


class VaultServer:
    """The gRPC server of one node: the vault API, health and (when asked for) reflection."""

    def __init__(self, vault: Vault, settings: NodeSettings, workers: int = 16) -> None:
        self.vault = vault
        self.node = vault.node
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vault")
        self._probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vault-health")
        self._server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        self.port = 0
        #: The bound port of the metrics endpoint (0: none).
        self.metrics_port = 0
        self._metrics_http: Any = None
        self._metrics_interceptor: MetricsInterceptor | None = None
        self._relay: RelayServicer | None = None
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
        self._metrics_interceptor = (
            MetricsInterceptor() if self.settings.metrics_port is not None else None
        )
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self.settings.log_format == "json":
            interceptors.append(RequestIdInterceptor())
        if self._metrics_interceptor is not None:
            interceptors.append(self._metrics_interceptor)
        interceptors.append(MalformedRequests())  # innermost: the others see its status
        server = grpc.aio.server(interceptors=interceptors, options=server_options(self.settings))
        servicer = PersonalDataVaultServicer(
            self.node,
            self.vault.authority,
            self._executor,
            self.peers,
            self.vault.audit,
        )
        vault_pb2_grpc.add_PersonalDataVaultServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        # Forwarded calls of the other regions' nodes, on their relay streams.
        self._relay = RelayServicer(
            self.node.regions,
            method_handlers(
                lambda s: vault_pb2_grpc.add_PersonalDataVaultServicer_to_server(servicer, s)  # type: ignore[no-untyped-call]
            ),
            interceptors,
        )
        relay_pb2_grpc.add_NodeRelayServicer_to_server(self._relay, server)  # type: ignore[no-untyped-call]
        vault_pb2_grpc.add_TokenServiceServicer_to_server(  # type: ignore[no-untyped-call]
            TokenServicer(
                self.node,
                self.vault.authority,
                self._executor,
                audit=self.vault.audit,
            ),
            server,
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
        if self.settings.metrics_port is not None:
            where = f"{self.settings.metrics_host}:{self.settings.metrics_port}"
            try:
                self._metrics_http, self.metrics_port = serve_metrics(
                    self.settings.metrics_port, self.settings.metrics_host
                )
            except OSError as e:
                raise RuntimeError(f"cannot serve metrics on {where} ({e.strerror})") from e
            log.info(
                "metrics on http://%s:%d/metrics", self.settings.metrics_host, self.metrics_port
            )
        self.vault.revocations.start()
        self.vault.key_follower.start()
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._workers = [
            asyncio.create_task(self._erasure_worker()),
            asyncio.create_task(self._retention_worker()),
            asyncio.create_task(self._health_probe()),
        ]
        if self.vault.rotations or self.vault.reindexes:
            self._workers.append(asyncio.create_task(self._rotation_worker()))
        if self.vault.signing_schedule is not None:
            self._workers.append(asyncio.create_task(self._signing_key_worker()))
        if self.settings.pool.size > 0:
            self._workers.append(asyncio.create_task(self._pool_worker()))
        return self.port

    async def _health_probe(self) -> None:
        """Every ``health_probe_seconds``: NOT_SERVING while a database or an
        OpenBao of the node does not answer, SERVING again once all do.

        The checks run on a thread of their own, so a hanging one neither
        holds the request workers nor stops the probe: past its time it counts
        as failed."""
        loop = asyncio.get_running_loop()
        interval = self.settings.health_probe_seconds
        serving = True
        while True:
            await asyncio.sleep(interval)
            try:
                failing = await asyncio.wait_for(
                    loop.run_in_executor(self._probe_executor, self.vault.not_ready),
                    timeout=max(2 * interval, 2.0),
                )
            except TimeoutError:
                failing = ["(the checks did not finish in time)"]
            except Exception as e:  # a check that raises is a failed check
                failing = [f"(a check failed: {type(e).__name__})"]
            if (not failing) == serving:
                continue
            serving = not failing
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, status)
            if serving:
                log.info("health: SERVING again")
            else:
                log.warning("health: NOT_SERVING; not answering: %s", "; ".join(failing))

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
        """Deletes records whose retention ended, a batch at a time (safe on many
        nodes), and the revocations of tokens long expired."""
        loop = asyncio.get_running_loop()
        st = self.settings
        wait = min(st.retention_first_sweep_seconds, st.retention_sweep_seconds)
        while True:
            await asyncio.sleep(wait)
            wait = self.settings.retention_sweep_seconds
            try:
                before = now_us() - Revocations.FORGET_AFTER_US
                pruned = await loop.run_in_executor(
                    self._executor, self.vault.control.prune_revocations, before
                )
                if pruned:
                    log.info("%d revocation(s) of tokens long expired deleted", pruned)
            except Exception as e:  # the next round retries
                log.warning("revocation pruning: %s", type(e).__name__)
            for region, cell in self.node.cells.items():
                try:
                    total = 0
                    while n := await loop.run_in_executor(self._executor, cell.sweep_expired):
                        total += n
                    if total:
                        log.info("retention: %d expired record(s) deleted in %s", total, region)
                    reaped = await loop.run_in_executor(self._executor, self._reap, cell)
                    if reaped:
                        log.info(
                            "%d subject key(s) without a subject destroyed in %s", reaped, region
                        )
                except Exception as e:  # the next round retries
                    log.warning("retention worker: %s", type(e).__name__)

    @staticmethod
    def _reap(cell: Cell) -> int:
        """Keys a crash left without their subject (a node without the eraser
        credential leaves them to one that has it)."""
        if not cell.can_erase:
            return 0
        return cell.reap_orphan_keys(ORPHAN_KEY_MIN_AGE_SECONDS)

    async def _rotation_worker(self) -> None:
        """Rotates the subject keys due under each region's policy, rate-limited
        (safe on many nodes: subjects are claimed; a stopped run resumes); and
        re-indexes each region's lookups once its index key is as old as its
        ``index_rotation`` period (or resumes a re-index under way)."""
        loop = asyncio.get_running_loop()
        while True:
            for region, (job, policy) in self.vault.rotations.items():
                try:
                    run = functools.partial(
                        job.run,
                        policy.period_seconds,
                        limiter=RateLimiter(policy.rate_per_second),
                    )
                    done = await loop.run_in_executor(self._executor, run)
                    if done.rotated or done.failed:
                        log.info(
                            "key rotation %s: %d rotated, %d failed",
                            region,
                            done.rotated,
                            done.failed,
                        )
                except Exception as e:  # the next round retries
                    log.warning("key rotation worker (%s): %s", region, type(e).__name__)
            for region, (reindex, policy) in self.vault.reindexes.items():
                try:
                    scheduled = functools.partial(
                        reindex.run_if_due,
                        policy.period_seconds,
                        limiter=RateLimiter(policy.rate_per_second),
                    )
                    result = await loop.run_in_executor(self._executor, scheduled)
                    if result is not None:
                        log.info(
                            "lookup re-index %s: v%d, %d subjects, %d failed, %d unsealed, %s",
                            region,
                            result.version,
                            result.reindexed,
                            result.failed,
                            result.unsealed_subjects,
                            "old version retired" if result.retired else "unfinished",
                        )
                except Exception as e:  # the next round retries
                    log.warning("lookup re-index worker (%s): %s", region, type(e).__name__)
            await asyncio.sleep(self.settings.rotation_check_seconds)

    async def _signing_key_worker(self) -> None:
        """Rotates the signing key when it is older than the control plane's
        period (see :class:`vault.tokens.keyfiles.SigningKeySchedule`)."""
        schedule = self.vault.signing_schedule
        assert schedule is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(self._executor, schedule.run)
            except Exception as e:  # the next round retries (an interrupted one resumes)
                log.warning("signing key rotation: %s", type(e).__name__)
            await asyncio.sleep(self.settings.rotation_check_seconds)

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is None:
            return
        for w in self._workers:
            w.cancel()
        await self.health.enter_graceful_shutdown()
        if self._relay is not None:
            self._relay.drain()
        await self._server.stop(grace)
        self._server = None
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        if self.peers is not None:
            await self.peers.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._probe_executor.shutdown(wait=False, cancel_futures=True)
        self.vault.close()

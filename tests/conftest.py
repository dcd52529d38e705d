"""Shared fixtures: a real OpenBao server and real SQLite cells behind a real gRPC server."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import pytest

from vault.client import VaultClient
from vault.config import CacheSettings, NodeSettings, RegionsConfig, load_regions
from vault.devstack import OpenBaoServer
from vault.keys import TransitKeyProvider
from vault.node import Node
from vault.server import BackgroundServer, VaultServer, build_node


@dataclass
class Bao:
    server: OpenBaoServer
    regions_template: Path
    node_token: str
    audit_log: Path

    @property
    def address(self) -> str:
        return self.server.address

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.server.root_token())

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
    node: Node
    provider: TransitKeyProvider
    server: BackgroundServer
    target: str
    clients: list[VaultClient] = field(default_factory=list)

    def client(self, token: str | None = None) -> VaultClient:
        c = VaultClient(self.target, token=token)
        self.clients.append(c)
        return c

    def db_path(self, region: str) -> Path:
        return self.data_dir / "cells" / f"{region}.db"

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()
        for cell in self.node.cells.values():
            cell.store.engine.dispose()


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    """One real OpenBao server (raft storage, initialised and unsealed) per test session."""
    d = tmp_path_factory.mktemp("openbao")
    server = OpenBaoServer(d, log=False)
    server.start()
    regions = load_regions(data_dir=str(d), openbao_addr=server.address)
    try:
        token = server.configure(regions)
        yield Bao(server, Path(regions.source), token, server.audit_log)
    finally:
        server.stop()


def start_stack(
    bao: Bao,
    data_dir: Path,
    *,
    cache: CacheSettings | None = None,
    database_urls: dict[str, str] | None = None,
) -> Stack:
    regions = load_regions(data_dir=str(data_dir), openbao_addr=bao.address)
    for rid, url in (database_urls or {}).items():
        regions.regions[rid] = dataclasses.replace(regions.regions[rid], database_url=url)
    settings = NodeSettings(data_dir=data_dir, port=0, cache=cache or CacheSettings())
    provider = TransitKeyProvider.connect(bao.address, bao.node_token)
    node = build_node(
        regions, settings, openbao_token=bao.node_token, providers={bao.address: provider}
    )
    bg = BackgroundServer(VaultServer(node, settings))
    port = bg.start()
    return Stack(bao, data_dir, regions, node, provider, bg, f"127.0.0.1:{port}")


@pytest.fixture(scope="session")
def stack(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("node"))
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack) -> VaultClient:
    return stack.client()


@pytest.fixture
def canary() -> str:
    """A value that must never appear anywhere at rest."""
    return f"CANARY-{uuid.uuid4().hex}"

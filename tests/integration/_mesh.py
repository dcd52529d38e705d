"""Three in-process nodes (de, us, ru), each serving one region, one OpenBao,
mutual TLS between them and towards callers (certificates from tests/security/_pki.py).

They share a data dir for the control plane and the token signing key, as
nodes of one deployment share the control database; each opens only its own
region's cell database.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tests._background import BackgroundServer
from tests.conftest import POLICY, SERVICE_PURPOSE, Bao
from tests.security._pki import CA, SERVER_NAMES, Issued, credentials
from vault.client import VaultClient
from vault.config import NodeSettings, PeerTlsSettings, RegionsConfig, TlsSettings, load_regions
from vault.datadir import DataDir
from vault.keys import TransitKeyProvider
from vault.server import Vault, VaultServer, build_vault
from vault.tokens import REGIONS
from vault.tokens.authority import ensure_admin_credential
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

#: One node per region: all five.
NODE_REGIONS = ("de", "us", "ru", "cn", "sg")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mesh:
    bao: Bao
    data_dir: Path
    regions: RegionsConfig
    ca: CA
    caller_cert: Issued
    settings: dict[str, NodeSettings]
    provider: TransitKeyProvider
    admin: str
    servers: dict[str, BackgroundServer] = field(default_factory=dict)
    clients: list[VaultClient] = field(default_factory=list)

    def target(self, region: str) -> str:
        return f"127.0.0.1:{self.settings[region].port}"

    def vault(self, region: str) -> Vault:
        return self.servers[region].server.vault

    def start(self, region: str) -> None:
        settings = self.settings[region]
        vault = build_vault(
            self.regions,
            settings,
            openbao_token=self.bao.node_token,
            eraser_token=self.bao.eraser_token,
            policy=POLICY,
            admin_credential_file=DataDir(self.data_dir).admin_credential,
            serve_regions=frozenset({region}),
            providers={self.bao.address: self.provider},
        )
        bg = BackgroundServer(VaultServer(vault, settings))
        try:
            bg.start()
        except BaseException:
            bg.stop_loop()
            vault.close()
            raise
        self.servers[region] = bg

    def stop(self, region: str) -> None:
        self.servers.pop(region).stop()

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for r in list(self.servers):
            self.stop(r)

    def caller_credentials(self, cert: Issued | None = None) -> grpc.ChannelCredentials:
        return credentials(self.ca, cert or self.caller_cert)

    def issue(
        self,
        basis: str | None = None,
        purpose: str = SERVICE_PURPOSE,
        *,
        regions: list[str] | None = None,
        service: str = "test-service",
    ) -> str:
        p = POLICY.purposes[purpose]
        with grpc.secure_channel(self.target("de"), self.caller_credentials()) as ch:
            resp = pb_grpc.TokenServiceStub(ch).IssueToken(
                pb.IssueTokenRequest(
                    service=service,
                    purpose=purpose,
                    categories=[pb.CategoryGrant(category=c) for c in sorted(p.categories)],
                    operations=sorted(p.operations),
                    regions=regions if regions is not None else sorted(REGIONS),
                    transfer_basis=basis or "",
                    ttl_seconds=600,
                ),
                metadata=(("authorization", f"Bearer {self.admin}"),),
                timeout=10,
            )
        return str(resp.token)

    def client(self, entry: str, token: str, *, timeout: float = 10.0) -> VaultClient:
        c = VaultClient(
            self.target(entry), token=token, credentials=self.caller_credentials(), timeout=timeout
        )
        self.clients.append(c)
        return c

    def db_path(self, region: str) -> Path:
        return self.data_dir / "cells" / f"{region}.db"

    def rows(self) -> dict[str, dict[str, list[str]]]:
        """Every subject and record id of each node's database, read by another process."""
        out = subprocess.run(
            [sys.executable, "-c", _DUMP, *(str(self.db_path(r)) for r in NODE_REGIONS)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        by_path = json.loads(out.stdout)
        return {r: by_path[str(self.db_path(r))] for r in NODE_REGIONS}


_DUMP = """
import json, sqlite3, sys
out = {}
for path in sys.argv[1:]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    out[path] = {
        t: [r[0] for r in con.execute(f"select id from {t}")]
        for t in ("subjects", "records")
    }
    out[path]["key_mounts"] = sorted({r[0] for r in con.execute("select key_mount from subjects")})
    con.close()
print(json.dumps(out))
"""


def start_mesh(
    bao: Bao,
    tmp: Path,
    *,
    nodes: tuple[str, ...] = NODE_REGIONS,
    metrics: frozenset[str] = frozenset(),
    log_format: str = "text",
) -> Mesh:
    """The mesh of ``nodes``; the nodes of ``metrics`` serve /metrics on a free port."""
    pki = tmp / "pki"
    ca = CA("pdvault test CA")
    cert, key = ca.issue("pdvault-node", sans=SERVER_NAMES, server=True).write(pki, "server")
    client_ca = ca.write(pki, "ca")
    data_dir = tmp / "data"
    regions = load_regions(data_dir=str(data_dir), openbao_addr=bao.address)
    ports = {r: free_port() for r in regions.regions}
    regions = dataclasses.replace(
        regions,
        regions={
            rid: dataclasses.replace(rc, endpoint=f"127.0.0.1:{ports[rid]}")
            for rid, rc in regions.regions.items()
        },
    )
    settings = {}
    for r in NODE_REGIONS:
        ncert, nkey = ca.issue(f"pdvault-node.{r}", server=False).write(pki, f"node-{r}")
        settings[r] = NodeSettings(
            data_dir=data_dir,
            port=ports[r],
            tls=TlsSettings(cert, key, client_ca_file=client_ca),
            peer_tls=PeerTlsSettings(ca_file=client_ca, cert_file=ncert, key_file=nkey),
            erasure_poll_seconds=0.2,
            metrics_port=0 if r in metrics else None,
            log_format=log_format,
        )
    admin = ensure_admin_credential(data_dir)
    mesh = Mesh(
        bao,
        data_dir,
        regions,
        ca,
        ca.issue("crm-backend", server=False),
        settings,
        TransitKeyProvider.connect(bao.address, bao.node_token),
        admin,
    )
    try:
        for r in nodes:
            mesh.start(r)
    except BaseException:
        mesh.close()
        raise
    return mesh

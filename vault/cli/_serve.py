"""``pdvault serve``: one node serving one region's cell (the production shape).

    pdvault serve --region de --config /etc/pdvault --data-dir /var/lib/pdvault \\
        --openbao-token-file /run/secrets/bao-token \\
        --tls-cert node.pem --tls-key node-key.pem --tls-client-ca clients-ca.pem \\
        --peer-ca nodes-ca.pem --peer-cert node-de-client.pem --peer-key node-de-client-key.pem

``DIR/regions.yaml`` declares every region (its endpoint, database, OpenBao
address and mounts, node identity) and the transfer rules; ``DIR/policy.yaml``
the purpose policy (default: the shipped one). The node opens only region R's
database and uses only R's Transit mounts (and the control mount's signing
key), so its OpenBao credential should allow nothing else: the HCL is
``vault.devstack.node_policy([R's mounts], control mount)``, e.g. for de::

    path "transit-de/keys/+"    { capabilities = ["create", "read", "update"] }
    path "transit-de/encrypt/+" { capabilities = ["update"] }
    path "transit-de/decrypt/+" { capabilities = ["update"] }
    path "transit-de/rewrap/+"  { capabilities = ["update"] }
    path "transit-control/encrypt/token-signing" { capabilities = ["update"] }
    path "transit-control/decrypt/token-signing" { capabilities = ["update"] }
    path "auth/token/renew-self" { capabilities = ["update"] }

Calls about the other regions' ids are forwarded to their endpoints over
mutual TLS (``--peer-*``); see :mod:`vault.service._forward`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

from vault.cli._workers import Workers, WorkerSpec
from vault.config import NodeSettings, PeerTlsSettings, PoolSettings, load_regions
from vault.datadir import DataDir
from vault.errors import ConfigError
from vault.policy import default_policy_path, load_policy
from vault.server import VaultServer, build_vault
from vault.transport import server_credentials


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="run one node serving one region (production shape)")
    p.add_argument("--region", required=True, help="the region this node serves")
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory with regions.yaml and, optionally, policy.yaml",
    )
    p.add_argument("--data-dir", type=Path, required=True, help="token keys, admin credential")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port", type=int, default=None, help="default: the port of the region's endpoint"
    )
    p.add_argument(
        "--openbao-token-file",
        type=Path,
        default=None,
        help="the node's OpenBao token (default: $BAO_TOKEN); limit it to the region's mounts",
    )
    p.add_argument(
        "--openbao-addr",
        default=os.environ.get("BAO_ADDR", ""),
        help="fills {openbao_addr} in regions.yaml (default: $BAO_ADDR)",
    )
    p.add_argument(
        "--eraser-token-file", type=Path, default=None, help="OpenBao token for key destruction"
    )
    peer = p.add_argument_group("peer TLS", "how this node calls the other regions' nodes")
    peer.add_argument("--peer-ca", type=Path, metavar="FILE")
    peer.add_argument("--peer-cert", type=Path, metavar="FILE", help="this node's client cert")
    peer.add_argument("--peer-key", type=Path, metavar="FILE")
    return p


def _read_secret(path: Path | None, env: str) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(env) or None


async def serve(args: argparse.Namespace) -> int:
    from vault.cli._up import _tls

    data_dir: Path = args.data_dir.resolve()
    try:
        regions = load_regions(
            args.config / "regions.yaml", data_dir=str(data_dir), openbao_addr=args.openbao_addr
        )
        policy_file = args.config / "policy.yaml"
        policy = load_policy(policy_file if policy_file.exists() else default_policy_path())
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    if args.region not in regions.regions:
        print(f"pdvault: {args.region!r} is not a region of {regions.source}", file=sys.stderr)
        return 2
    peer_flags = (args.peer_ca, args.peer_cert, args.peer_key)
    if any(peer_flags) and not all(peer_flags):
        print("pdvault: --peer-ca, --peer-cert and --peer-key go together", file=sys.stderr)
        return 2
    token = _read_secret(args.openbao_token_file, "BAO_TOKEN")
    if token is None:
        print("pdvault: no OpenBao token (--openbao-token-file or $BAO_TOKEN)", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("pdvault: --workers must be at least 1", file=sys.stderr)
        return 2
    port = args.port
    if port is None:
        port = int(regions.regions[args.region].endpoint.rpartition(":")[2])
    settings = NodeSettings(
        data_dir=data_dir,
        host=args.host,
        port=port,
        tls=_tls(args),
        pool=PoolSettings(
            size=args.key_pool,
            regions=frozenset(args.key_pool_regions.split(",")) if args.key_pool_regions else None,
        ),
        reuse_port=args.workers > 1,
        peer_tls=PeerTlsSettings(*(f.resolve() for f in peer_flags)) if all(peer_flags) else None,
    )
    try:
        server_credentials(settings)
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    admin_file = DataDir(data_dir).admin_credential
    vault = build_vault(
        regions,
        settings,
        openbao_token=token,
        eraser_token=_read_secret(args.eraser_token_file, "BAO_ERASER_TOKEN"),
        policy=policy,
        admin_credential_file=admin_file if admin_file.exists() else None,
        serve_regions=frozenset({args.region}),
    )
    server = VaultServer(vault, settings)
    try:
        bound = await server.start()
    except (ConfigError, RuntimeError) as e:
        vault.close()
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    workers = Workers()
    if args.workers > 1:
        spec = WorkerSpec(
            regions,
            dataclasses.replace(settings, port=bound),
            token,
            _read_secret(args.eraser_token_file, "BAO_ERASER_TOKEN"),
            policy_file if policy_file.exists() else default_policy_path(),
            admin_file if admin_file.exists() else None,
            frozenset({args.region}),
        )
        try:
            await asyncio.to_thread(workers.start, spec, args.workers - 1)
        except RuntimeError as e:
            await server.stop(grace=1.0)
            print(f"pdvault: refusing to start: {e}", file=sys.stderr)
            return 2
    print(
        f"pdvault: serving region {args.region} on {settings.host}:{bound} "
        f"({'TLS' if settings.tls else 'plaintext, loopback only'}; forwarding to "
        f"{', '.join(r for r in regions.regions if r != args.region) or 'nobody'}; "
        f"{args.workers} worker process(es))",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.to_thread(workers.stop)
    await server.stop(grace=5.0)
    print("pdvault: stopped", file=sys.stderr)
    return 0

"""``pdvault serve``: one node serving one region's cell (the production shape).

    pdvault serve --region de --config /etc/pdvault --data-dir /var/lib/pdvault \\
        --openbao-role-id-file /run/secrets/bao/role-id \\
        --openbao-secret-id-file /run/secrets/bao/secret-id \\
        --tls-cert node.pem --tls-key node-key.pem --tls-client-ca clients-ca.pem \\
        --peer-ca nodes-ca.pem --peer-cert node-de-client.pem --peer-key node-de-client-key.pem

``DIR/regions.yaml`` declares every region (its endpoint, database, OpenBao
address and mounts, node identity) and the transfer rules; ``DIR/policy.yaml``
the purpose policy (default: the shipped one). The node opens only region R's
database and uses only R's Transit mounts (and the control mount's signing
key), so its OpenBao credential should allow nothing else: the policies are in
``deploy/openbao/policies`` (rendered per mount by
:func:`vault.openbao.role_policy`).

The node authenticates to OpenBao with AppRole (``--openbao-role-id-file`` and
``--openbao-secret-id-file``, or ``$BAO_ROLE_ID`` and ``$BAO_SECRET_ID``) and
keeps its token fresh itself; the eraser likewise (``--eraser-role-id-file``,
``--eraser-secret-id-file``, ``$BAO_ERASER_ROLE_ID``, ``$BAO_ERASER_SECRET_ID``).
A fixed token (``--openbao-token-file``, ``$BAO_TOKEN``) still works, for tools
and tests. To trust a private CA for OpenBao's TLS listener, set
``$REQUESTS_CA_BUNDLE``. A region's ``openbao.address`` may list the nodes of
its OpenBao cluster separated by commas (see :class:`vault.keys.Failover`).

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

from vault.cli._flags import audit_batch_window, key_pool_settings, pool_settings
from vault.cli._workers import Workers, WorkerSpec
from vault.config import NodeSettings, PeerTlsSettings, load_regions
from vault.datadir import DataDir
from vault.errors import ConfigError
from vault.keys import AppRole, OpenBaoCredential
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
    bao = p.add_argument_group(
        "OpenBao", "how this node logs in (AppRole; a fixed token only for tools and tests)"
    )
    bao.add_argument(
        "--openbao-role-id-file", type=Path, metavar="FILE", help="default: $BAO_ROLE_ID"
    )
    bao.add_argument(
        "--openbao-secret-id-file", type=Path, metavar="FILE", help="default: $BAO_SECRET_ID"
    )
    bao.add_argument(
        "--openbao-approle-mount", default="approle", help="the AppRole auth mount's path"
    )
    bao.add_argument(
        "--openbao-token-file",
        type=Path,
        default=None,
        help="a fixed OpenBao token instead of AppRole (default: $BAO_TOKEN)",
    )
    p.add_argument(
        "--openbao-addr",
        default=os.environ.get("BAO_ADDR", ""),
        help="fills {openbao_addr} in regions.yaml (default: $BAO_ADDR)",
    )
    bao.add_argument(
        "--eraser-role-id-file", type=Path, metavar="FILE", help="default: $BAO_ERASER_ROLE_ID"
    )
    bao.add_argument(
        "--eraser-secret-id-file",
        type=Path,
        metavar="FILE",
        help="default: $BAO_ERASER_SECRET_ID",
    )
    bao.add_argument(
        "--eraser-token-file", type=Path, default=None, help="a fixed token for key destruction"
    )
    bao.add_argument(
        "--rotation-role-id-file",
        type=Path,
        metavar="FILE",
        help="scheduled subject-key rotation's login (default: $BAO_ROTATION_ROLE_ID; "
        "without a rotation login the node does not rotate keys)",
    )
    bao.add_argument(
        "--rotation-secret-id-file",
        type=Path,
        metavar="FILE",
        help="default: $BAO_ROTATION_SECRET_ID",
    )
    bao.add_argument(
        "--rotation-token-file", type=Path, default=None, help="a fixed token for key rotation"
    )
    peer = p.add_argument_group("peer TLS", "how this node calls the other regions' nodes")
    peer.add_argument("--peer-ca", type=Path, metavar="FILE")
    peer.add_argument("--peer-cert", type=Path, metavar="FILE", help="this node's client cert")
    peer.add_argument("--peer-key", type=Path, metavar="FILE")
    return p


#: Environment variables that carry OpenBao secrets to a node.
SECRET_ENV = (
    "BAO_TOKEN",
    "BAO_ROLE_ID",
    "BAO_SECRET_ID",
    "BAO_ERASER_TOKEN",
    "BAO_ERASER_ROLE_ID",
    "BAO_ERASER_SECRET_ID",
    "BAO_ROTATION_TOKEN",
    "BAO_ROTATION_ROLE_ID",
    "BAO_ROTATION_SECRET_ID",
)


def _read_secret(path: Path | None, env: str) -> str | None:
    if path is not None:
        return path.read_text().strip()
    return os.environ.get(env) or None


def _credential(
    args: argparse.Namespace, who: str, env: str, mount: str
) -> OpenBaoCredential | None:
    """``who``'s AppRole login (role id and secret id), else a fixed token, else None.

    Exits when only half of an AppRole login is given.
    """
    role_id = _read_secret(getattr(args, f"{who}_role_id_file"), f"{env}_ROLE_ID")
    secret_id = _read_secret(getattr(args, f"{who}_secret_id_file"), f"{env}_SECRET_ID")
    if role_id and secret_id:
        return AppRole(role_id, secret_id, mount)
    if role_id or secret_id:
        raise SystemExit(
            f"pdvault: refusing to start: the {who} AppRole login needs a role id and a secret id"
        )
    return _read_secret(getattr(args, f"{who}_token_file"), f"{env}_TOKEN")


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
    node = _credential(args, "openbao", "BAO", args.openbao_approle_mount)
    eraser = _credential(args, "eraser", "BAO_ERASER", args.openbao_approle_mount)
    if node is None:
        print(
            "pdvault: no OpenBao login (--openbao-role-id-file and --openbao-secret-id-file, "
            "$BAO_ROLE_ID and $BAO_SECRET_ID, or a token)",
            file=sys.stderr,
        )
        return 2
    if args.workers < 1:
        print("pdvault: --workers must be at least 1", file=sys.stderr)
        return 2
    port = args.port
    if port is None:
        port = int(regions.regions[args.region].endpoint.rpartition(":")[2])
    try:
        pool = pool_settings(args)
        key_pool = key_pool_settings(args)
        audit_window = audit_batch_window(args)
    except ValueError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    settings = NodeSettings(
        data_dir=data_dir,
        host=args.host,
        port=port,
        tls=_tls(args),
        pool=key_pool,
        audit_batch_window_seconds=audit_window,
        reuse_port=args.workers > 1,
        peer_tls=PeerTlsSettings(*(f.resolve() for f in peer_flags)) if all(peer_flags) else None,
        db_pool=pool,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_format=args.log_format,
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
        openbao_token=node,
        eraser_token=eraser,
        rotator_token=_credential(args, "rotation", "BAO_ROTATION", args.openbao_approle_mount),
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
            node,
            eraser,
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

"""``pdvault up``: the local stack (OpenBao + five regional cells + gRPC)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import signal
import sys
from pathlib import Path
from typing import IO

from vault.cli._flags import audit_batch_window, key_pool_settings, pool_settings
from vault.cli._workers import Workers, WorkerSpec
from vault.config import CacheSettings, NodeSettings, TlsSettings, load_regions
from vault.datadir import DataDir, write_file
from vault.devstack import BaoMissing, OpenBaoServer, bao_binary
from vault.errors import ConfigError
from vault.policy import default_policy_path, load_policy
from vault.server import VaultServer, build_vault
from vault.tokens.authority import ensure_admin_credential
from vault.transport import INSECURE_LOCAL, TLS_FLAGS, local_dial_host, server_credentials


def _lock_data_dir(data_dir: Path) -> IO[str]:
    f = open(DataDir(data_dir).lock, "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"pdvault: another `pdvault up` is already using {data_dir}") from None
    return f


async def _rotate_audit_forever(bao: OpenBaoServer, max_bytes: int) -> None:
    """Keeps OpenBao's own audit log (every request it serves) to two files."""
    while True:
        await asyncio.sleep(60)
        with contextlib.suppress(OSError):
            if bao.rotate_audit_log(max_bytes):
                print(f"pdvault: OpenBao audit log rotated ({bao.audit_log}.1)", file=sys.stderr)


def _tls(args: argparse.Namespace) -> TlsSettings | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise SystemExit("pdvault: --tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("pdvault: --tls-cert and --tls-key go together")
    if args.insecure_local:
        raise SystemExit(f"pdvault: {INSECURE_LOCAL} and --tls-cert exclude each other")
    return TlsSettings(
        args.tls_cert.resolve(),
        args.tls_key.resolve(),
        args.tls_client_ca.resolve() if args.tls_client_ca else None,
    )


def _transport_banner(settings: NodeSettings) -> str:
    tls = settings.tls
    if tls is None:
        return (
            "  transport    INSECURE: local development only, plaintext on loopback "
            f"({INSECURE_LOCAL}):\n"
            "               tokens, the admin credential and personal data cross it unencrypted.\n"
            f"               Serve TLS with {TLS_FLAGS}."
        )
    if tls.client_ca_file is None:
        return f"  transport    TLS ({tls.cert_file}); no client certificates"
    return (
        f"  transport    mutual TLS ({tls.cert_file}); client certificates signed by "
        f"{tls.client_ca_file} required"
    )


def _workers_banner(count: int, pids: list[int]) -> str:
    if count == 1:
        return "1 process (--workers N: N processes on this port)"
    return f"{count} processes on this port (SO_REUSEPORT; this one and {pids})"


def _pool_banner(size: int) -> str:
    if size == 0:
        return "off (--key-pool N: N subjects per region minted ahead; `pdvault pool status`)"
    return f"{size} subjects per region minted ahead (`pdvault pool status`)"


async def up(args: argparse.Namespace) -> int:
    try:
        bao_binary()  # before anything is created: say what to install
    except BaoMissing as e:
        print(f"pdvault: cannot start the local stack: {e}", file=sys.stderr)
        return 2
    if getattr(args, "regions_mode", "one") == "five":
        from vault.cli._five import up_five

        return await up_five(args, _lock_data_dir)
    if args.workers < 1:
        print("pdvault: --workers must be at least 1", file=sys.stderr)
        return 2
    data_dir: Path = args.data_dir.resolve()
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
        port=args.port,
        cache=CacheSettings(
            max_entries=args.key_cache_entries, max_age_seconds=args.key_cache_seconds
        ),
        reflection=args.reflection,
        tls=_tls(args),
        db_pool=pool,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        log_format=args.log_format,
        audit=not args.no_audit,
        pool=key_pool,
        audit_batch_window_seconds=audit_window,
        reuse_port=args.workers > 1,
    )
    try:
        # Before anything starts: plaintext off loopback, unreadable TLS files.
        server_credentials(settings)
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout = DataDir(data_dir)
    lock = _lock_data_dir(data_dir)
    bao = OpenBaoServer(data_dir)
    try:
        regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
        policy = load_policy(args.policy or default_policy_path())
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    print(f"pdvault: starting OpenBao ({bao.address}, data in {bao.dir})", file=sys.stderr)
    bao.start(reclaim=True)  # under the data dir's lock: a leftover server is an orphan
    server: VaultServer | None = None
    background: list[asyncio.Task[None]] = []
    workers = Workers()
    try:
        creds = bao.configure(regions)
        # Scheduled subject key rotation and lookup re-index (regions.yaml
        # key_rotation, index_rotation) need their own credential.
        scheduled = any(r.key_rotation or r.index_rotation for r in regions.regions.values())
        rotator = creds.rotation if scheduled else None
        ensure_admin_credential(data_dir)
        vault = build_vault(
            regions,
            settings,
            openbao_token=creds.node,
            eraser_token=creds.eraser,
            policy=policy,
            admin_credential_file=layout.admin_credential,
            rotator_token=rotator,
        )
        server = VaultServer(vault, settings)
        port = await server.start()
        if args.workers > 1:
            spec = WorkerSpec(
                regions,
                dataclasses.replace(settings, port=port),
                creds.node,
                creds.eraser,
                Path(policy.source),
                layout.admin_credential,
                None,
            )
            await asyncio.to_thread(workers.start, spec, args.workers - 1)
        scheme = "grpcs://" if settings.tls else ""
        endpoint = f"{scheme}{local_dial_host(settings.host)}:{port}"
        write_file(layout.endpoint, endpoint + "\n", 0o644)
        layout.endpoints.unlink(missing_ok=True)  # no five-region topology here
        background.append(
            asyncio.create_task(_rotate_audit_forever(bao, args.openbao_audit_max_mb * 1_000_000))
        )
        keys = bao.key_counts(regions)
        reflection = "on" if settings.reflection else "off"
        tls_hint = (
            "\n  (over TLS add --ca FILE, and --cert FILE --key FILE for mutual TLS;\n"
            "   or set $PDVAULT_CA, $PDVAULT_CERT, $PDVAULT_KEY)"
            if settings.tls
            else ""
        )
        print(
            f"""
pdvault is running.
  endpoint     {endpoint}  (gRPC; health: SERVING; reflection {reflection})
{_transport_banner(settings)}
  regions      {", ".join(f"{r.id} ({r.name})" for r in regions.regions.values())}
  workers      {_workers_banner(args.workers, workers.pids)}
  key pool     {_pool_banner(args.key_pool)}
  data dir     {data_dir}
  OpenBao      {bao.address}  (local-only unseal material: {bao.dir / "LOCAL-ONLY-unseal.json"})
  keys         {", ".join(f"{m} {n}" for m, n in keys.items())}  (per Transit mount)
  audit log    {bao.audit_log} (OpenBao's own; rotated past {args.openbao_audit_max_mb} MB)
  policy       {policy.source} (revision {policy.revision}, {len(policy.purposes)} purposes)
  admin        {layout.admin_credential} (0600; `pdvault admin rotate` replaces it)

Next: issue a purpose token and follow the README quickstart:
  pdvault token issue --data-dir {args.data_dir} --purpose essential.service \\
      --categories user.name,user.contact.email --ops read,write{tls_hint}
Stop with Ctrl-C.""",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\npdvault: shutting down", file=sys.stderr, flush=True)
    finally:
        for task in background:
            task.cancel()
        await asyncio.to_thread(workers.stop)
        if server is not None:
            await server.stop(grace=5.0)
        with contextlib.suppress(Exception):
            bao.retire()
        bao.stop()
        lock.close()
    print("pdvault: stopped", file=sys.stderr)
    return 0

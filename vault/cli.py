"""The ``pdvault`` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO

import hvac

from vault.authn import ADMIN_CREDENTIAL_FILE, ensure_admin_credential
from vault.config import CacheSettings, NodeSettings, load_regions
from vault.devstack import ENDPOINT_FILE, OpenBaoServer
from vault.errors import ConfigError
from vault.policy import check_main, default_policy_path, load_policy
from vault.server import VaultServer, build_vault

DEFAULT_DATA_DIR = Path(".pdvault")
DEFAULT_PORT = 50051


def _lock_data_dir(data_dir: Path) -> IO[str]:
    f = open(data_dir / ".lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"pdvault: another `pdvault up` is already using {data_dir}") from None
    return f


async def _renew_forever(address: str, token: str) -> None:
    """Keeps the node's periodic OpenBao token alive while the node runs."""
    while True:
        await asyncio.sleep(3600)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(hvac.Client(url=address, token=token).auth.token.renew_self)


async def _up(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = _lock_data_dir(data_dir)
    bao = OpenBaoServer(data_dir)
    try:
        regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
        policy = load_policy(args.policy or default_policy_path())
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        return 2
    settings = NodeSettings(
        data_dir=data_dir,
        host=args.host,
        port=args.port,
        cache=CacheSettings(
            max_entries=args.key_cache_entries, max_age_seconds=args.key_cache_seconds
        ),
    )
    print(f"pdvault: starting OpenBao ({bao.address}, data in {bao.dir})", file=sys.stderr)
    bao.start()
    server: VaultServer | None = None
    try:
        creds = bao.configure(regions)
        admin = ensure_admin_credential(data_dir)
        vault = build_vault(
            regions,
            settings,
            openbao_token=creds.node,
            eraser_token=creds.eraser,
            policy=policy,
            admin_credential=admin,
        )
        server = VaultServer(vault, settings)
        port = await server.start()
        (data_dir / ENDPOINT_FILE).write_text(f"{settings.host}:{port}\n")
        renew = [
            asyncio.create_task(_renew_forever(bao.address, t)) for t in (creds.node, creds.eraser)
        ]
        print(
            f"""
pdvault is running.
  endpoint     {settings.host}:{port}  (gRPC; health: SERVING; reflection on)
  regions      {", ".join(f"{r.id} ({r.name})" for r in regions.regions.values())}
  data dir     {data_dir}
  OpenBao      {bao.address}  (local-only unseal material: {bao.dir / "LOCAL-ONLY-unseal.json"})
  policy       {policy.source} (revision {policy.revision}, {len(policy.purposes)} purposes)
  admin        {data_dir / ADMIN_CREDENTIAL_FILE} (0600)

Next: issue a purpose token and follow the README quickstart:
  pdvault token issue --data-dir {args.data_dir} --purpose essential.service \\
      --categories user.name,user.contact.email --ops read,write
Stop with Ctrl-C.""",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\npdvault: shutting down", file=sys.stderr, flush=True)
        for task in renew:
            task.cancel()
    finally:
        if server is not None:
            await server.stop(grace=5.0)
        bao.stop()
        lock.close()
    print("pdvault: stopped", file=sys.stderr)
    return 0


def _regions_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_regions(args.file, data_dir="DATA_DIR", openbao_addr="OPENBAO_ADDR")
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        f"OK: {len(cfg.regions)} regions ({', '.join(cfg.regions)}), "
        f"{len(cfg.country_region)} countries mapped, default {cfg.default_region}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdvault", description="pdvault personal data vault")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack: OpenBao + five regional cells + gRPC")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    up.add_argument("--port", type=int, default=int(os.environ.get("PDVAULT_PORT", DEFAULT_PORT)))
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--regions", type=Path, default=None, help="regions file (default: regions/regions.yaml)"
    )
    up.add_argument("--policy", type=Path, default=None, help="purpose policy (default: shipped)")
    up.add_argument(
        "--key-cache-entries",
        type=int,
        default=CacheSettings.max_entries,
        help="unwrapped data keys kept in memory (0: every operation asks OpenBao)",
    )
    up.add_argument(
        "--key-cache-seconds",
        type=float,
        default=CacheSettings.max_age_seconds,
        help="how long an unwrapped data key is kept",
    )
    up.add_argument("-v", "--verbose", action="store_true", help="log every request (no content)")

    regions = sub.add_parser("regions", help="region configuration")
    rsub = regions.add_subparsers(dest="regions_command", required=True)
    check = rsub.add_parser("check", help="validate a regions file")
    check.add_argument("file", type=Path, nargs="?", default=None)

    policy = sub.add_parser("policy", help="purpose policy")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    pcheck = psub.add_parser("check", help="validate a policy file")
    pcheck.add_argument("file", type=Path, nargs="?", default=None)

    demo = sub.add_parser("demo", help="the whole story against the running local stack")
    demo.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    from vault import _rightscli, _tokencli

    _tokencli.add_parser(sub)
    _rightscli.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from vault import demo as demo_mod

        return demo_mod.run(args.data_dir)
    if args.command == "policy":
        return check_main(str(args.file or default_policy_path()))
    if args.command == "token":
        from vault import _tokencli

        return _tokencli.run(args)
    if args.command in ("export", "receipt", "erasure", "retention"):
        from vault import _rightscli

        runner = {
            "export": _rightscli.run_export,
            "receipt": _rightscli.run_receipt,
            "erasure": _rightscli.run_reapply,
            "retention": _rightscli.run_retention,
        }[args.command]
        return runner(args)
    if args.command == "up":
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        logging.getLogger("alembic").setLevel(logging.WARNING)
        return asyncio.run(_up(args))
    if args.command == "regions":
        return _regions_check(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())

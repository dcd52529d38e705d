"""The ``pdvault`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from vault.cli import _flags
from vault.config import CacheSettings
from vault.datadir import DEFAULT_DATA_DIR

DEFAULT_PORT = 50051


def add_tls_flags(up: argparse.ArgumentParser) -> None:
    """The server TLS flags of ``pdvault up`` and ``pdvault serve``."""
    tls = up.add_argument_group(
        "transport",
        "TLS with --tls-cert and --tls-key; mutual TLS adds --tls-client-ca. Without them the "
        "node serves plaintext on a loopback address only (--insecure-local, local development).",
    )
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate chain (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="mutual TLS: require client certificates signed by this CA (PEM)",
    )
    tls.add_argument(
        "--insecure-local",
        action="store_true",
        help="plaintext on loopback, for local development (the default without --tls-cert)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pdvault", description="pdvault personal data vault")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack: OpenBao + five regional cells + gRPC")
    up.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    up.add_argument("--port", type=int, default=int(os.environ.get("PDVAULT_PORT", DEFAULT_PORT)))
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="listen address; anything but loopback needs TLS (--tls-cert, --tls-key)",
    )
    add_tls_flags(up)
    up.add_argument(
        "--regions", type=Path, default=None, help="regions file (default: regions/regions.yaml)"
    )
    up.add_argument("--policy", type=Path, default=None, help="purpose policy (default: shipped)")
    up.add_argument(
        "--regions-mode",
        choices=("one", "five"),
        default="one",
        help="one: one process serving all five regions (default); five: one node process per "
        "region (`pdvault serve`), forwarding to each other over mutual TLS, on --port and the "
        "next four ports",
    )
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
    _flags.add_key_pool_flags(up)
    up.add_argument(
        "--openbao-audit-max-mb",
        type=int,
        default=256,
        metavar="MB",
        help="rotate OpenBao's own audit log (to audit.log.1) past this size",
    )
    _flags.add_workers_flag(up)
    _flags.add_audit_flags(up)
    up.add_argument(
        "--reflection",
        action="store_true",
        help="enable gRPC server reflection (off by default: it lists the API to any caller)",
    )
    up.add_argument(
        "--no-audit",
        action="store_true",
        help="benchmarks only: serve without the audit log, to measure what it costs "
        "(never with real personal data)",
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

    admin = sub.add_parser("admin", help="the administrator credential")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    rotate = asub.add_parser(
        "rotate",
        help="replace the administrator credential; a running node switches within a second",
    )
    rotate.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    from vault.cli import (
        _audit,
        _connect,
        _db,
        _health,
        _import,
        _keys,
        _pool,
        _rights,
        _serve,
        _tokens,
    )

    _audit.add_parser(sub)

    serve = _serve.add_parser(sub)
    add_tls_flags(serve)
    _flags.add_pool_flags(serve)
    _flags.add_metrics_flags(serve)
    _flags.add_log_flags(serve)
    _flags.add_key_pool_flags(serve)
    _flags.add_workers_flag(serve)
    _flags.add_audit_flags(serve)
    _health.add_parser(sub)
    _pool.add_parser(sub)
    _import.add_parser(sub)

    _connect.add_flags(demo, target=False)

    _tokens.add_parser(sub)
    _keys.add_parser(sub)
    _rights.add_parsers(sub)
    _db.add_parsers(sub)
    _flags.add_pool_flags(up)
    _flags.add_metrics_flags(up)
    _flags.add_log_flags(up)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Sub-commands import what they need: `pdvault token …` stays quick to start.
    if args.command == "demo":
        from vault.cli import _demo

        return _demo.run(args)
    if args.command in ("policy", "regions"):
        from vault.cli import _check

        return (_check.policy_check if args.command == "policy" else _check.regions_check)(args)
    if args.command == "admin":
        from vault.tokens.authority import ADMIN_CHECK_SECONDS, rotate_admin_credential

        try:
            path = rotate_admin_credential(args.data_dir)
        except FileNotFoundError:
            print(
                f"pdvault: no administrator credential in {args.data_dir} to rotate "
                "(is `pdvault up` using this data dir?)",
                file=sys.stderr,
            )
            return 1
        print(
            f"pdvault: a new administrator credential is in {path} (0600). A running node "
            f"accepts it within {ADMIN_CHECK_SECONDS:g} s and refuses the old one from then."
        )
        return 0
    if args.command == "health":
        from vault.cli import _health

        return _health.run(args)
    if args.command == "keys":
        from vault.cli import _keys

        return _keys.run(args)
    if args.command == "audit":
        from vault.cli import _audit

        return _audit.run(args)
    if args.command == "import":
        from vault.cli import _import

        return _import.run(args)
    if args.command == "pool":
        from vault.cli import _pool

        return _pool.run(args)
    if args.command == "token":
        from vault.cli import _tokens

        return _tokens.run(args)
    if args.command in ("export", "access-report", "receipt", "erasure", "retention"):
        from vault.cli import _rights

        runner = {
            "export": _rights.run_export,
            "access-report": _rights.run_access_report,
            "receipt": _rights.run_receipt,
            "erasure": _rights.run_reapply,
            "retention": _rights.run_retention,
        }[args.command]
        return runner(args)
    if args.command == "db":
        from vault.cli import _db

        return _db.run(args)
    if args.command == "serve":
        from vault.cli import _serve
        from vault.logs import configure

        configure(args.log_format, logging.INFO)
        return asyncio.run(_serve.serve(args))
    if args.command == "up":
        from vault.cli import _up
        from vault.logs import configure

        configure(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
        return asyncio.run(_up.up(args))
    return 2

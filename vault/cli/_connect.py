"""How the commands that talk to a vault reach it: target and TLS flags.

``--target`` defaults to the data dir's endpoint (``grpcs://…`` when the
local stack serves TLS). ``--ca`` (the CA the server's certificate chains
to) and ``--cert``/``--key`` (a client certificate, for mutual TLS) default
to ``$PDVAULT_CA``, ``$PDVAULT_CERT``, ``$PDVAULT_KEY``; any of them, or a
``grpcs://`` target, means TLS. When none is given and the target is a node of
the data dir's five-region topology (``endpoints.json``), the data dir's local
CA and client certificate (``pki/``) are used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc

from vault.client import VaultClient, VaultClientError
from vault.datadir import DataDir


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def add_flags(p: argparse.ArgumentParser, *, target: bool = True) -> None:
    if target:
        p.add_argument(
            "--target",
            help="host:port, or grpcs://host:port for TLS "
            "(default: the endpoint of the data dir's stack, else $PDVAULT_TARGET)",
        )
    p.add_argument(
        "--ca",
        type=Path,
        default=_env_path("PDVAULT_CA"),
        metavar="FILE",
        help="TLS: the CA certificate(s) the server's certificate must chain to "
        "(PEM; default $PDVAULT_CA, else the system's)",
    )
    p.add_argument(
        "--cert",
        type=Path,
        default=_env_path("PDVAULT_CERT"),
        metavar="FILE",
        help="mutual TLS: this client's certificate (PEM; default $PDVAULT_CERT)",
    )
    p.add_argument(
        "--key",
        type=Path,
        default=_env_path("PDVAULT_KEY"),
        metavar="FILE",
        help="mutual TLS: its private key (PEM; default $PDVAULT_KEY)",
    )


def read_file(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as e:
        raise SystemExit(f"pdvault: {flag} {path}: cannot be read ({e.strerror})") from None


def connect(args: argparse.Namespace, token: str | None, target: str | None = None) -> VaultClient:
    """A client for ``args`` (``--target``/``--ca``/``--cert``/``--key``/``--data-dir``)."""
    if (args.cert is None) != (args.key is None):
        raise SystemExit("pdvault: --cert and --key go together")
    layout = DataDir(args.data_dir)
    target = target or layout.target(getattr(args, "target", None))
    ca, cert, key = args.ca, args.cert, args.key
    if ca is None and cert is None:
        local = layout.local_tls_files(target)
        if local is not None:
            ca, cert, key = local
    return VaultClient(
        target,
        token=token,
        ca=read_file(ca, "--ca"),
        cert=read_file(cert, "--cert"),
        key=read_file(key, "--key"),
    )


def describe(err: VaultClientError) -> str:
    """The error for a person, with a hint when the connection itself failed."""
    if err.code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"{err} (the vault cannot be reached, or refused the TLS handshake: "
            "check --target, --ca, and --cert/--key under mutual TLS)"
        )
    return str(err)

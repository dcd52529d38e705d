"""``pdvault token issue|exchange|revoke|inspect`` — tokens on stdout, for scripts."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vault.cli import _connect
from vault.client import VaultClient, VaultClientError
from vault.datadir import DEFAULT_DATA_DIR, DataDir
from vault.errors import Unauthenticated
from vault.tokens import REGIONS, decode


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(sub: Any) -> None:
    tok = sub.add_parser("token", help="purpose tokens: issue, exchange, revoke, inspect")
    tsub = tok.add_subparsers(dest="token_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        _connect.add_flags(p)

    def narrowing(p: argparse.ArgumentParser, *, required: bool) -> None:
        p.add_argument("--categories", type=_csv, required=required, help="a,b,…")
        p.add_argument("--fields", type=_csv, default=[], help="category.field,… (only these)")
        p.add_argument("--ops", type=_csv, required=required, help="read,write,delete,…")
        p.add_argument("--regions", type=_csv, default=None, help="de,us,… (default: all)")
        p.add_argument("--subjects", type=_csv, default=None, help="subject ids (default: any)")
        p.add_argument("--ttl", type=int, default=None, help="seconds")

    issue = tsub.add_parser("issue", help="issue a token (administrator credential)")
    common(issue)
    issue.add_argument("--service", default="local-service", help="the calling service")
    issue.add_argument("--purpose", required=True)
    narrowing(issue, required=True)
    issue.add_argument("--transfer-basis", default="")

    ex = tsub.add_parser("exchange", help="exchange a token for a narrower one")
    common(ex)
    ex.add_argument("token")
    narrowing(ex, required=False)

    rv = tsub.add_parser("revoke", help="revoke a token by id")
    common(rv)
    rv.add_argument("token_id")
    rv.add_argument("--token", help="revoke as this token's holder instead of as administrator")

    rk = tsub.add_parser(
        "rotate-key",
        help="sign tokens and receipts with a new key; running nodes switch within a second",
    )
    rk.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    rk.add_argument("--regions", type=Path, default=None)
    rk.add_argument(
        "--openbao-token",
        default=os.environ.get("BAO_TOKEN"),
        help="a token that may wrap and unwrap with the control mount's token-signing key "
        "(default: $BAO_TOKEN, else the local stack's root token)",
    )

    ins = tsub.add_parser("inspect", help="show a token's claims and whether it verifies")
    ins.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ins.add_argument("token")


def _client(args: argparse.Namespace, bearer: str) -> VaultClient:
    return _connect.connect(args, bearer)


def _fields_by_category(categories: list[str], fields: list[str]) -> dict[str, list[str]]:
    by_cat: dict[str, list[str]] = {c: [] for c in categories}
    for f in fields:
        cat, _, name = f.rpartition(".")
        if cat not in by_cat:
            raise SystemExit(f"pdvault: --fields {f}: its category is not in --categories")
        by_cat[cat].append(name)
    return by_cat


def _fail(err: VaultClientError) -> SystemExit:
    detail = "; ".join(f"{f}: {d}" for f, d in err.violations)
    message = _connect.describe(err) + (f" ({detail})" if detail else "")
    print(f"pdvault: {message}", file=sys.stderr)
    return SystemExit(1)


def _unverified_claims(token: str) -> dict[str, Any]:
    parts = token.split(".")
    raw = parts[2] if len(parts) >= 3 else ""
    body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))[:-64]  # strip the signature
    return dict(json.loads(body))


def run(args: argparse.Namespace) -> int:
    cmd = args.token_command
    if cmd == "inspect":
        return _inspect(args)
    if cmd == "rotate-key":
        return _rotate_key(args)
    try:
        if cmd == "issue":
            with _client(args, DataDir(args.data_dir).read_admin_credential()) as vc:
                resp = vc.issue_token(
                    service=args.service,
                    purpose=args.purpose,
                    categories=_fields_by_category(args.categories, args.fields),
                    operations=args.ops,
                    regions=args.regions or sorted(REGIONS),
                    subjects=args.subjects or [],
                    transfer_basis=args.transfer_basis,
                    ttl_seconds=args.ttl or 0,
                )
            print(resp.token)
            return 0
        if cmd == "exchange":
            with _client(args, args.token) as vc:
                resp = vc.exchange_token(
                    categories=_fields_by_category(args.categories or [], args.fields),
                    operations=args.ops or [],
                    regions=args.regions or [],
                    subjects=args.subjects or [],
                    ttl_seconds=args.ttl or 0,
                )
            print(resp.token)
            return 0
        if cmd == "revoke":
            bearer = args.token or DataDir(args.data_dir).read_admin_credential()
            with _client(args, bearer) as vc:
                rresp = vc.revoke_token(args.token_id)
            print(f"{rresp.token_id} {'revoked' if rresp.revoked else 'was already revoked'}")
            return 0
    except VaultClientError as e:
        raise _fail(e) from None
    return 2


def _rotate_key(args: argparse.Namespace) -> int:
    from vault.config import load_regions
    from vault.devstack import OpenBaoServer
    from vault.errors import KeyServiceUnavailable
    from vault.keys import TransitKeyProvider
    from vault.tokens.keyfiles import FOLLOW_SECONDS, RETIRE_AFTER, rotate_signing_key

    data_dir: Path = args.data_dir.resolve()
    bao = OpenBaoServer(data_dir, log=False)
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
    try:
        token = args.openbao_token or bao.root_token()
    except OSError:
        print("pdvault: no OpenBao token (--openbao-token or $BAO_TOKEN)", file=sys.stderr)
        return 1
    keys = TransitKeyProvider.connect(regions.control.openbao_address, token)
    try:
        done = rotate_signing_key(
            DataDir(data_dir).tokens, keys, regions.control.transit_mount, now=time.time()
        )
    except FileNotFoundError:
        print(f"pdvault: no signing key in {data_dir} to rotate", file=sys.stderr)
        return 1
    except KeyServiceUnavailable as e:
        print(
            f"pdvault: OpenBao refused or is unreachable ({e}); nothing changed "
            "that a second run would not finish",
            file=sys.stderr,
        )
        return 1
    print(f"new signing key: {done.new_kid}")
    for kid in done.retired:
        print(f"retired (tokens it signed accepted for {RETIRE_AFTER // 86400} more days): {kid}")
    for kid in done.removed:
        print(f"removed (no token it signed is still valid): {kid}")
    print(
        f"running nodes sign with the new key within {FOLLOW_SECONDS:g} s; receipts signed by "
        "any earlier key still verify (`pdvault receipt keys`)"
    )
    return 0


def _inspect(args: argparse.Namespace) -> int:
    layout = DataDir(args.data_dir)
    try:
        claims = _unverified_claims(args.token)
    except (ValueError, IndexError):
        print("pdvault: not a readable PASETO v4.public token", file=sys.stderr)
        return 1
    status = "not checked (no verification keys in the data dir)"
    code = 0
    if layout.verification_keys.exists():
        try:
            from vault.tokens.keyfiles import accepted_keys, read_published

            # The keys a node accepts now: a retired key's time may be up.
            now = time.time()
            decode(args.token, accepted_keys(read_published(layout.tokens), now), now=now)
            status = "valid signature, within its validity period (revocation not checked)"
        except Unauthenticated as e:
            status = f"INVALID: {e.reason}"
            code = 1
    print(json.dumps({"verification": status, "claims": claims}, indent=2))
    return code

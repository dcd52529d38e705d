"""``pdvault audit``: verify the audit logs, save witness copies of checkpoints
and the audit keys' public halves.

    pdvault audit verify [--region R ...] [--checkpoint FILE] [--public-key FILE]
    pdvault audit checkpoint --out FILE       (append the newest checkpoints)
    pdvault audit public-key --out FILE       (from OpenBao's key read)

Verification opens every audit database read-only and takes the public keys
from ``--public-key`` or from OpenBao (never from the audited database).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from vault.audit import CONTROL_LOG, SIGNING_KEY_NAME, audit_url, load_checkpoints
from vault.audit._checkpoint import load_public_keys, save_checkpoints, save_public_keys
from vault.audit._store import read_checkpoints, read_only_engine
from vault.audit._verify import LogReport, verify_log
from vault.config import RegionsConfig, load_regions
from vault.datadir import DEFAULT_DATA_DIR
from vault.keys import KeyRef, TransitSigner


def add_parser(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify the audit logs; witness copies of checkpoints")
    asub = p.add_subparsers(dest="audit_command", required=True)
    for name, text in (
        (
            "verify",
            "recompute every chain, check every checkpoint; non-zero on the first bad entry",
        ),
        ("checkpoint", "append the newest signed checkpoint of each log to --out (witness copy)"),
        ("public-key", "save the audit keys' public halves (read from OpenBao) to --out"),
    ):
        c = asub.add_parser(name, help=text)
        c.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        c.add_argument("--regions", type=Path, default=None, help="regions file")
        c.add_argument(
            "--region",
            action="append",
            default=None,
            help="a region id, or control (repeatable; default: every region and control)",
        )
        c.add_argument(
            "--openbao-token",
            default=os.environ.get("BAO_TOKEN"),
            help="a token that may read the audit keys (default: $BAO_TOKEN, else the local "
            "stack's root token)",
        )
        if name == "verify":
            c.add_argument("--checkpoint", type=Path, help="witness copies saved earlier")
            c.add_argument("--public-key", type=Path, help="public keys saved earlier")
        else:
            c.add_argument("--out", type=Path, required=True)


def places_of(regions: RegionsConfig) -> dict[str, tuple[str, str, str]]:
    """log → (audit database URL, OpenBao address, mount of its key)."""
    out = {
        rid: (audit_url(r.database_url, rid), r.openbao_address, r.transit_mounts[0])
        for rid, r in regions.regions.items()
    }
    c = regions.control
    out[CONTROL_LOG] = (audit_url(c.database_url, CONTROL_LOG), c.openbao_address, c.transit_mount)
    return out


def _setup(args: argparse.Namespace) -> tuple[dict[str, tuple[str, str, str]], list[str]]:
    data_dir: Path = args.data_dir.resolve()
    from vault.devstack import OpenBaoServer

    bao = OpenBaoServer(data_dir, log=False)
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
    places = places_of(regions)
    logs = args.region or sorted(places)
    unknown = [x for x in logs if x not in places]
    if unknown:
        raise SystemExit(f"pdvault: no such region: {', '.join(unknown)}")
    if not args.openbao_token and getattr(args, "public_key", None) is None:
        try:
            args.openbao_token = bao.root_token()
        except (OSError, ValueError, KeyError):
            args.openbao_token = None
    return places, logs


def public_keys(
    places: dict[str, tuple[str, str, str]], logs: list[str], token: str | None
) -> dict[str, dict[int, bytes]]:
    out = {}
    for log in logs:
        _, address, mount = places[log]
        signer = TransitSigner.for_key(address, token or "", KeyRef(mount, SIGNING_KEY_NAME))
        out[log] = signer.public_keys()
    return out


def verify_all(
    places: dict[str, tuple[str, str, str]],
    logs: list[str],
    keys: dict[str, dict[int, bytes]],
    saved: list[str],
) -> list[LogReport]:
    """Every log's report; a log without a database yet is reported as such."""
    out = []
    for log in logs:
        try:
            engine = read_only_engine(places[log][0])
        except FileNotFoundError:
            out.append(LogReport(log, problem="no audit database"))
            continue
        try:
            out.append(verify_log(engine, log, keys.get(log) or None, saved))
        finally:
            engine.dispose()
    return out


def _time(us: int | None) -> str:
    if us is None:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def run(args: argparse.Namespace) -> int:
    places, logs = _setup(args)
    if args.audit_command == "public-key":
        save_public_keys(args.out, public_keys(places, logs, args.openbao_token))
        print(f"saved the public keys of {len(logs)} audit log(s) to {args.out}")
        return 0
    if args.audit_command == "checkpoint":
        notes = []
        for log in logs:
            url = places[log][0]
            try:
                stored = read_checkpoints(read_only_engine(url), log)
            except FileNotFoundError:
                continue
            if stored:
                notes.append(stored[-1].note)
        save_checkpoints(args.out, notes)
        print(f"appended {len(notes)} checkpoint(s) to {args.out}")
        return 0
    if args.public_key is not None:
        keys = load_public_keys(args.public_key)
    else:
        keys = public_keys(places, logs, args.openbao_token)
    saved = load_checkpoints(args.checkpoint) if args.checkpoint else []
    failed = False
    print(f"{'log':<8} {'entries':>8} {'checkpoints':>11}  {'first':<19}  {'last':<19}  result")
    for report in verify_all(places, logs, keys, saved):
        log = report.log
        if report.problem == "no audit database" and not saved:
            print(f"{log:<8} {'-':>8} {'-':>11}  {'-':<19}  {'-':<19}  no log yet")
            continue
        failed |= not report.ok
        print(
            f"{log:<8} {report.entries:>8} {report.checkpoints:>11}  {_time(report.first_us):<19}"
            f"  {_time(report.last_us):<19}  {'ok' if report.ok else 'FAILED'}"
        )
        if report.problem:
            print(f"pdvault: audit log {log}: {report.problem}", file=sys.stderr)
    return 1 if failed else 0


def access_table(entries: list[Any], title: str) -> Table:
    """An access report as a table (time, who, purpose, basis, what, where, decision)."""
    table = Table(title=title)
    for col in (
        "time (UTC)",
        "operation",
        "service",
        "purpose",
        "legal basis",
        "categories",
        "fields",
        "region",
        "decision",
    ):
        table.add_column(col)
    for e in entries:
        region = e.region + (f" (from {e.entry_region})" if e.entry_region else "")
        table.add_row(
            e.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            e.operation,
            e.service + (f" [{e.client_identity}]" if e.client_identity else ""),
            e.purpose,
            e.legal_basis + (f" + {e.transfer_basis}" if e.transfer_basis else ""),
            ", ".join(e.categories),
            ", ".join(e.fields),
            region,
            e.decision,
        )
    return table

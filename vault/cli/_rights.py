"""``pdvault export``, ``pdvault receipt verify``, ``pdvault erasure reapply``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from vault.cell import Cell
from vault.cli import _connect
from vault.cli._audit import access_table
from vault.client import VaultClientError
from vault.config import NodeSettings, RegionsConfig, load_regions
from vault.control import ControlStore, ErasureEntry
from vault.datadir import DEFAULT_DATA_DIR, DataDir
from vault.devstack import OpenBaoServer
from vault.erasure import reapply, verify_receipt
from vault.errors import Unauthenticated
from vault.policy import Authorizer, default_policy_path, load_policy
from vault.server import KeyServices, build_cells
from vault.store import make_engine
from vault.tokens import HistoryError, verify_history


def _export_token_flag(p: Any) -> None:
    p.add_argument(
        "--token",
        default=os.environ.get("PDVAULT_TOKEN"),
        help="a token with the export operation (default: $PDVAULT_TOKEN)",
    )


def add_parsers(sub: Any) -> None:
    ex = sub.add_parser("export", help="a subject's data as JSON (portability)")
    ex.add_argument("subject_id")
    ex.add_argument("-o", "--output", type=Path, required=True)
    ex.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    _connect.add_flags(ex)
    _export_token_flag(ex)

    ar = sub.add_parser("access-report", help="who accessed a subject's data (audit log)")
    ar.add_argument("subject_id")
    ar.add_argument("--since", default=None, help="only from this ISO time on (UTC)")
    ar.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    _connect.add_flags(ar)
    _export_token_flag(ar)

    rc = sub.add_parser("receipt", help="erasure receipts")
    rsub = rc.add_subparsers(dest="receipt_command", required=True)
    rv = rsub.add_parser("verify", help="check a receipt's signature offline")
    rv.add_argument("file", type=Path, help="the signed receipt, or JSON holding signed_receipt")
    rv.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="the signing-key history (default: DATA_DIR/tokens/signing-key-history.json) "
        "or a published key set",
    )
    rv.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    rk = rsub.add_parser(
        "keys", help="the signing-key history receipts verify under, its chain checked"
    )
    rk.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    rk.add_argument("--json", action="store_true", help="print the history file itself")

    er = sub.add_parser("erasure", help="the erasure ledger")
    esub = er.add_subparsers(dest="erasure_command", required=True)
    ra = esub.add_parser("reapply", help="destroy again every key the ledger lists")
    ra.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ra.add_argument("--regions", type=Path, default=None)
    ra.add_argument(
        "--openbao-token",
        default=os.environ.get("BAO_TOKEN"),
        help="a token allowed to delete subject keys (default: $BAO_TOKEN, "
        "else the local stack's root token)",
    )

    rt = sub.add_parser("retention", help="retention of records")
    rtsub = rt.add_subparsers(dest="retention_command", required=True)
    sw = rtsub.add_parser("sweep", help="delete every record whose retention has ended")
    sw.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    sw.add_argument("--regions", type=Path, default=None)
    sw.add_argument("--batch", type=int, default=500)


def _cells(regions: RegionsConfig, data_dir: Path, openbao_token: str | None) -> dict[str, Cell]:
    """Every region's cell, built the way a node builds them (``openbao_token``:
    a credential that may destroy keys; ``None`` when no key is needed)."""
    return build_cells(
        regions,
        NodeSettings(data_dir=data_dir, audit=False),  # serves no request
        KeyServices(openbao_token or "", openbao_token),
        Authorizer(load_policy(default_policy_path())),
    ).cells


def _create_private(path: Path) -> int:
    """``path`` opened for writing, truncated, mode 0600 (not left to the umask),
    never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to an existing file
    except OSError:
        os.close(fd)
        raise
    return fd


def run_export(args: argparse.Namespace) -> int:
    if not args.token:
        print(
            "pdvault: export needs a token with the export operation (--token or $PDVAULT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    err = Console(stderr=True)
    size = 0
    with _connect.connect(args, args.token) as vc:
        # Personal data: readable by its owner only.
        try:
            fd = _create_private(args.output)
        except OSError as e:
            print(f"pdvault: {args.output}: cannot be written ({e.strerror})", file=sys.stderr)
            return 1
        with os.fdopen(fd, "wb") as out:
            try:
                with err.status("exporting…"):
                    for piece in vc.export_subject_bytes(args.subject_id):
                        out.write(piece)
                        size += len(piece)
            except VaultClientError as e:
                args.output.unlink(missing_ok=True)
                print(f"pdvault: {_connect.describe(e)}", file=sys.stderr)
                return 1
    doc = json.loads(args.output.read_bytes())
    err.print(
        f"exported {len(doc['records'])} record(s), {len(doc['consents'])} consent(s), "
        f"{size} bytes → {args.output}"
    )
    return 0


def run_access_report(args: argparse.Namespace) -> int:
    if not args.token:
        print(
            "pdvault: access-report needs a token with the export operation "
            "(--token or $PDVAULT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    since_us = 0
    if args.since:
        try:
            since = dt.datetime.fromisoformat(args.since)
        except ValueError:
            print("pdvault: --since must be an ISO time, e.g. 2026-11-29T10:00", file=sys.stderr)
            return 2
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
        since_us = int(since.timestamp() * 1_000_000)
    with _connect.connect(args, args.token) as vc:
        try:
            entries = vc.access_report(args.subject_id, since_us=since_us)
        except VaultClientError as e:
            print(f"pdvault: {_connect.describe(e)}", file=sys.stderr)
            return 1
    Console(width=200).print(access_table(entries, f"accesses to {args.subject_id}"))
    print(f"{len(entries)} access(es)")
    return 0


def run_receipt(args: argparse.Namespace) -> int:
    if args.receipt_command == "keys":
        return _receipt_keys(args)
    text = args.file.read_text().strip()
    if text.startswith("{"):
        text = str(json.loads(text).get("signed_receipt", ""))
    try:
        doc = verify_receipt(text, DataDir(args.data_dir).read_receipt_keys(args.keys))
    except HistoryError as e:
        print(f"INVALID key history: {e}", file=sys.stderr)
        return 1
    except Unauthenticated as e:
        print(f"INVALID receipt: {e.reason}", file=sys.stderr)
        return 1
    print(json.dumps({"verified": True, "receipt": doc}, indent=2))
    return 0


def _receipt_keys(args: argparse.Namespace) -> int:
    path = DataDir(args.data_dir).signing_key_history
    try:
        text = path.read_text()
        history = verify_history(text)
    except OSError:
        print(f"pdvault: no signing-key history at {path}", file=sys.stderr)
        return 1
    except HistoryError as e:
        print(f"INVALID key history: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(text)
        return 0
    for entry in history:
        added = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.added_at))
        last = "  (signing now)" if entry is history[-1] else ""
        print(f"{entry.seq:>3}  {added}  {entry.key.kid}{last}")
    print(f"{len(history)} key(s); chain verified: each added key endorsed by the one before")
    return 0


def run_reapply(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    bao = OpenBaoServer(data_dir, log=False)
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
    token = args.openbao_token or bao.root_token()
    control = ControlStore(make_engine(regions.control.database_url))
    cells = _cells(regions, data_dir, token)
    entries = control.destroyed_erasures()
    console = Console(stderr=True)
    with Progress(
        TextColumn("re-destroying erased subjects' keys"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("reapply", total=len(entries))

        def tick(_: ErasureEntry, __: bool) -> None:
            bar.advance(task)

        summary = reapply(control, cells, tick)
    print(
        f"checked {summary.checked} erased subject(s): {len(summary.destroyed_again)} key(s) "
        f"were back and are destroyed again, {len(summary.failed)} failed"
    )
    for sid in summary.destroyed_again:
        print(f"  destroyed again: {sid}")
    for sid in summary.failed:
        print(f"  FAILED: {sid}", file=sys.stderr)
    control.close()
    for cell in cells.values():
        cell.close()
    return 1 if summary.failed else 0


def run_retention(args: argparse.Namespace) -> int:
    """Sweeps the cell databases directly: no key is needed to delete ciphertext."""
    data_dir: Path = args.data_dir.resolve()
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr="http://unused")
    # No key service is called: deleting ciphertext needs no key.
    cells = _cells(regions, data_dir, None)
    totals = {rid: c.count_expired() for rid, c in cells.items()}
    deleted = dict.fromkeys(cells, 0)
    with Progress(
        TextColumn("deleting expired records"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("sweep", total=sum(totals.values()))
        for rid, cell in cells.items():
            while n := cell.sweep_expired(args.batch):
                deleted[rid] += n
                bar.advance(task, n)
    for rid, cell in cells.items():
        print(f"{rid}: {deleted[rid]} expired record(s) deleted")
        cell.close()
    print(f"total: {sum(deleted.values())}")
    return 0

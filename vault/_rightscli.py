"""``pdvault export``, ``pdvault receipt verify``, ``pdvault erasure reapply``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from vault.client import VaultClient, VaultClientError
from vault.config import load_regions
from vault.control import ControlStore, ErasureEntry
from vault.devstack import OpenBaoServer, local_target
from vault.erasure import reapply, verify_receipt
from vault.errors import Unauthenticated
from vault.keys import TransitKeyShredder
from vault.store import CellStore, make_engine, migrate
from vault.tokens import KeySet, VerificationKey


def add_parsers(sub: Any) -> None:
    ex = sub.add_parser("export", help="a subject's data as JSON (portability)")
    ex.add_argument("subject_id")
    ex.add_argument("-o", "--output", type=Path, required=True)
    ex.add_argument("--data-dir", type=Path, default=Path(".pdvault"))
    ex.add_argument("--target")
    ex.add_argument(
        "--token",
        default=os.environ.get("PDVAULT_TOKEN"),
        help="a token with the export operation (default: $PDVAULT_TOKEN)",
    )

    rc = sub.add_parser("receipt", help="erasure receipts")
    rsub = rc.add_subparsers(dest="receipt_command", required=True)
    rv = rsub.add_parser("verify", help="check a receipt's signature offline")
    rv.add_argument("file", type=Path, help="the signed receipt, or JSON holding signed_receipt")
    rv.add_argument(
        "--keys",
        type=Path,
        default=None,
        help="verification keys (default: DATA_DIR/tokens/verification-keys.json)",
    )
    rv.add_argument("--data-dir", type=Path, default=Path(".pdvault"))

    er = sub.add_parser("erasure", help="the erasure ledger")
    esub = er.add_subparsers(dest="erasure_command", required=True)
    ra = esub.add_parser("reapply", help="destroy again every key the ledger lists")
    ra.add_argument("--data-dir", type=Path, default=Path(".pdvault"))
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
    sw.add_argument("--data-dir", type=Path, default=Path(".pdvault"))
    sw.add_argument("--regions", type=Path, default=None)
    sw.add_argument("--batch", type=int, default=500)


def _target(args: argparse.Namespace) -> str:
    return local_target(args.data_dir, args.target)


def run_export(args: argparse.Namespace) -> int:
    if not args.token:
        print(
            "pdvault: export needs a token with the export operation (--token or $PDVAULT_TOKEN)",
            file=sys.stderr,
        )
        return 2
    err = Console(stderr=True)
    size = 0
    with VaultClient(_target(args), token=args.token) as vc, args.output.open("wb") as out:
        try:
            with err.status("exporting…"):
                for piece in vc.export_subject_bytes(args.subject_id):
                    out.write(piece)
                    size += len(piece)
        except VaultClientError as e:
            args.output.unlink(missing_ok=True)
            print(f"pdvault: {e}", file=sys.stderr)
            return 1
    doc = json.loads(args.output.read_bytes())
    err.print(
        f"exported {len(doc['records'])} record(s), {len(doc['consents'])} consent(s), "
        f"{size} bytes → {args.output}"
    )
    return 0


def _keyset(path: Path) -> KeySet:
    published = json.loads(path.read_text())["keys"]
    return KeySet(VerificationKey.from_paserk(k["kid"], k["paserk"]) for k in published)


def run_receipt(args: argparse.Namespace) -> int:
    keys_file = args.keys or args.data_dir / "tokens" / "verification-keys.json"
    text = args.file.read_text().strip()
    if text.startswith("{"):
        text = str(json.loads(text).get("signed_receipt", ""))
    try:
        doc = verify_receipt(text, _keyset(keys_file))
    except Unauthenticated as e:
        print(f"INVALID receipt: {e.reason}", file=sys.stderr)
        return 1
    print(json.dumps({"verified": True, "receipt": doc}, indent=2))
    return 0


def run_reapply(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    bao = OpenBaoServer(data_dir, log=False)
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
    token = args.openbao_token or bao.root_token()
    control = ControlStore(make_engine(regions.control.database_url))
    shredders = {
        rid: TransitKeyShredder.connect(r.openbao_address, token)
        for rid, r in regions.regions.items()
    }
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

        summary = reapply(control, shredders.__getitem__, tick)
    print(
        f"checked {summary.checked} erased subject(s): {len(summary.destroyed_again)} key(s) "
        f"were back and are destroyed again, {len(summary.failed)} failed"
    )
    for sid in summary.destroyed_again:
        print(f"  destroyed again: {sid}")
    for sid in summary.failed:
        print(f"  FAILED: {sid}", file=sys.stderr)
    control.engine.dispose()
    return 1 if summary.failed else 0


def run_retention(args: argparse.Namespace) -> int:
    """Sweeps the cell databases directly: no key is needed to delete ciphertext."""
    data_dir: Path = args.data_dir.resolve()
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr="unused")
    now = time.time_ns() // 1000
    stores = {}
    for rid, r in regions.regions.items():
        engine = make_engine(r.database_url)
        migrate(engine)
        stores[rid] = CellStore(engine)
    totals = {rid: s.count_expired(now) for rid, s in stores.items()}
    deleted = dict.fromkeys(stores, 0)
    with Progress(
        TextColumn("deleting expired records"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("sweep", total=sum(totals.values()))
        for rid, store in stores.items():
            while n := store.sweep_expired(now, args.batch):
                deleted[rid] += n
                bar.advance(task, n)
    for rid in stores:
        print(f"{rid}: {deleted[rid]} expired record(s) deleted")
        stores[rid].engine.dispose()
    print(f"total: {sum(deleted.values())}")
    return 0

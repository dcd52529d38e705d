"""``pdvault pool status``: the subject-key pool of each region, read from the
cell databases (what every node sees): depth, entries minted, refill rate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect

from vault.config import load_regions
from vault.datadir import DEFAULT_DATA_DIR
from vault.db import now_us
from vault.errors import ConfigError, StoreUnavailable
from vault.store import PoolStore, make_engine


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pool = sub.add_parser("pool", help="the subject-key pool (subjects minted ahead of sign-up)")
    psub = pool.add_subparsers(dest="pool_command", required=True)
    status = psub.add_parser("status", help="pool depth and refill rate per region")
    status.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    status.add_argument(
        "--regions", type=Path, default=None, help="regions file (default: regions/regions.yaml)"
    )
    status.add_argument(
        "--window", type=int, default=600, help="seconds of fills the refill rate is taken over"
    )


def run(args: argparse.Namespace) -> int:
    try:
        regions = load_regions(
            args.regions, data_dir=str(args.data_dir.resolve()), openbao_addr="unused"
        )
    except ConfigError as e:
        print(f"pdvault: {e}", file=sys.stderr)
        return 2
    table = Table(title="subject-key pool")
    for col in ("region", "depth", "minted", f"minted, last {args.window}s", "refill/s", "oldest"):
        table.add_column(col, justify="left" if col == "region" else "right")
    failed = False
    for rid, rc in regions.regions.items():
        engine = make_engine(rc.database_url)
        try:
            if not inspect(engine).has_table("subject_pool"):
                table.add_row(rid, "-", "-", "-", "-", "no pool table (node not started yet)")
                continue
            st = PoolStore(engine).status(now_us(), args.window)
        except StoreUnavailable:
            table.add_row(rid, "-", "-", "-", "-", "database unavailable")
            failed = True
            continue
        finally:
            engine.dispose()
        oldest = (
            f"{(now_us() - st.oldest_entry_us) / 1e6:.0f} s"
            if st.oldest_entry_us is not None
            else "-"
        )
        rate = f"{st.rate_per_second:.1f}" if st.rate_per_second is not None else "-"
        table.add_row(rid, str(st.depth), str(st.minted), str(st.minted_in_window), rate, oldest)
    Console(width=120).print(table)
    return 1 if failed else 0

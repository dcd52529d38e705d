"""``pdvault db upgrade``: the alembic migrations of the cells and the control
plane, applied ahead of a deployment.

    pdvault db upgrade --config /etc/pdvault --region de   # de's cell and the control plane
    pdvault db upgrade --data-dir ~/.pdvault               # the local stack: every database

A node migrates the databases it opens when it starts, too; running this first
lets an operator apply a schema change once, before rolling the nodes, with a
role that may change the schema while the nodes' role may not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vault.config import load_regions
from vault.datadir import DEFAULT_DATA_DIR
from vault.errors import ConfigError


def add_parsers(sub: Any) -> None:
    db = sub.add_parser("db", help="database schemas")
    dsub = db.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser(
        "upgrade", help="apply the migrations to the cell databases and the control plane"
    )
    where = up.add_mutually_exclusive_group()
    where.add_argument(
        "--config", type=Path, metavar="DIR", help="directory with regions.yaml (as for serve)"
    )
    where.add_argument(
        "--regions", type=Path, metavar="FILE", help="regions file (default: the shipped one)"
    )
    up.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="fills {data_dir} in the regions file (SQLite files of the local stack)",
    )
    up.add_argument(
        "--region",
        action="append",
        default=None,
        metavar="R",
        help="only this region's cell (repeatable; default: every region)",
    )
    up.add_argument(
        "--no-control", action="store_true", help="leave the control plane's database alone"
    )


def _upgrade(what: str, url: str, script_location: Path) -> bool:
    from sqlalchemy.exc import DBAPIError

    from vault.db import make_engine, migrate

    engine = make_engine(url)
    try:
        revision = migrate(engine, script_location)
    except DBAPIError as e:
        # The driver's message may hold the URL (a password): only its class.
        print(f"pdvault: {what}: database unavailable ({type(e.orig).__name__})", file=sys.stderr)
        return False
    finally:
        engine.dispose()
    print(f"pdvault: {what}: schema at revision {revision}")
    return True


def run(args: argparse.Namespace) -> int:
    import vault.control._store as control_store
    import vault.store._migrate as cell_store

    path = args.config / "regions.yaml" if args.config else args.regions
    try:
        regions = load_regions(path, data_dir=str(args.data_dir.resolve()))
    except ConfigError as e:
        print(f"pdvault: {e}", file=sys.stderr)
        return 2
    chosen = args.region or sorted(regions.regions)
    unknown = [r for r in chosen if r not in regions.regions]
    if unknown:
        print(f"pdvault: not a region of {regions.source}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    ok = True
    for rid in chosen:
        url = regions.regions[rid].database_url
        ok = _upgrade(f"cell {rid}", url, cell_store._MIGRATIONS) and ok
    if not args.no_control:
        url = regions.control.database_url
        ok = _upgrade("control plane", url, control_store._MIGRATIONS) and ok
    return 0 if ok else 1

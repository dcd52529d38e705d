"""``pdvault regions check`` and ``pdvault policy check``: validate configuration."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from vault.config import RegionsConfig, load_regions
from vault.errors import ConfigError
from vault.policy import check_main, default_policy_path

#: A cell of the transfer matrix that allows nothing.
NO_TRANSFER_CELL = "—"
#: The diagonal: data in its home region, no transfer, always allowed.
LOCAL_CELL = "local"


def policy_check(args: argparse.Namespace) -> int:
    return check_main(str(args.file or default_policy_path()))


def regions_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_regions(args.file, data_dir="DATA_DIR", openbao_addr="OPENBAO_ADDR")
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        f"OK: {len(cfg.regions)} regions ({', '.join(cfg.regions)}), "
        f"{len(cfg.country_region)} countries mapped, default {cfg.default_region}"
    )
    table = transfer_table(cfg)
    console = Console()
    if not console.is_terminal:
        # Piped: print whole lines rather than fold the cells at 80 columns.
        wide = console.options.update(width=10_000, max_width=10_000)
        needed = Measurement.get(console, wide, table).maximum
        console = Console(width=max(console.width, needed))
    console.print(table)
    return 0


def transfer_table(cfg: RegionsConfig) -> Table:
    """The transfer matrix: rows are home regions, columns destinations, cells bases."""
    rules = cfg.transfers
    matrix = rules.matrix()
    table = Table(
        title="Cross-border transfers (home → destination: accepted transfer_basis)",
        caption=(
            f"{NO_TRANSFER_CELL} no transfer; {LOCAL_CELL}: no border crossed; "
            "* only for some purposes or categories. "
            "A write entering by a destination node is governed by the same rule."
        ),
    )
    # In a narrow terminal long names fold onto the next line, never cut off.
    table.add_column("home → to", overflow="fold")
    for dest in rules.regions:
        table.add_column(dest, overflow="fold")
    for home in rules.regions:
        cells = []
        for dest in rules.regions:
            if dest == home:
                cells.append(LOCAL_CELL)
                continue
            bases = [
                basis + ("*" if rules.limited_only(home, dest, basis) else "")
                for basis in matrix[(home, dest)]
            ]
            cells.append(", ".join(bases) or NO_TRANSFER_CELL)
        table.add_row(Text(f"{home} ({cfg.regions[home].name})"), *map(Text, cells))
    return table

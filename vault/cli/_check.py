"""``pdvault regions check`` and ``pdvault policy check``: validate configuration."""

from __future__ import annotations

import argparse
import sys

from vault.config import load_regions
from vault.errors import ConfigError
from vault.policy import check_main, default_policy_path


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
    return 0

"""Flags shared by the commands that run a node (``up``, ``serve``)."""

from __future__ import annotations

import argparse

from vault.config import PoolSettings


def add_pool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("database pool", "connections to each PostgreSQL database")
    g.add_argument(
        "--db-pool-size",
        type=int,
        default=PoolSettings.size,
        help=f"connections kept open per database (default {PoolSettings.size})",
    )
    g.add_argument(
        "--db-max-overflow",
        type=int,
        default=PoolSettings.max_overflow,
        help=f"extra connections opened under load (default {PoolSettings.max_overflow})",
    )


def pool_settings(args: argparse.Namespace) -> PoolSettings:
    """The pool flags; ValueError (reported by the caller) if out of range."""
    return PoolSettings(size=args.db_pool_size, max_overflow=args.db_max_overflow)


def add_metrics_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics", "Prometheus endpoint (GET /metrics)")
    g.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port (default: off; 9464 is customary)",
    )
    g.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default 127.0.0.1; 0.0.0.0 for a scraper "
        "on another host: it lists no personal data, but keep it off public networks)",
    )


def add_log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines (default) or one JSON object per line, with a request id per call",
    )

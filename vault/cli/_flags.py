"""Flags shared by the commands that run a node (``up``, ``serve``)."""

from __future__ import annotations

import argparse

from vault.audit import DEFAULT_BATCH_WINDOW
from vault.config import KeyPoolSettings, PoolSettings

#: Longest audit batch window accepted: every audited call may wait this long.
MAX_AUDIT_BATCH_MS = 100.0


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


def add_key_pool_flags(p: argparse.ArgumentParser) -> None:
    """``--key-pool``: the subject-key pool of ``pdvault up`` and ``pdvault serve``."""
    p.add_argument(
        "--key-pool",
        type=int,
        default=KeyPoolSettings.size,
        metavar="N",
        help="subjects minted ahead per region, with their keys, so that CreateSubject needs "
        "no key-service call (0: mint none; entries other nodes minted are still used)",
    )
    p.add_argument(
        "--key-pool-regions",
        default=None,
        metavar="R,R",
        help="fill pools only for these regions (default: every region served)",
    )


def add_workers_flag(p: argparse.ArgumentParser) -> None:
    """``--workers``: server processes of ``pdvault up`` and ``pdvault serve``."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), each with its own caches; "
        "about one per core",
    )


def key_pool_settings(args: argparse.Namespace) -> KeyPoolSettings:
    """The key-pool flags; ValueError (reported by the caller) if out of range."""
    regions = frozenset(args.key_pool_regions.split(",")) if args.key_pool_regions else None
    return KeyPoolSettings(size=args.key_pool, regions=regions)


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


def add_audit_flags(p: argparse.ArgumentParser) -> None:
    """``--audit-batch-ms``: the audit writers' batch window (vault.audit._writer)."""
    p.add_argument(
        "--audit-batch-ms",
        type=float,
        default=DEFAULT_BATCH_WINDOW * 1000,
        metavar="MS",
        help="the longest an audit entry waits for the calls of other callers to share its "
        "commit (default %(default)g; it waits only while other calls are in progress, so a "
        "lone caller is not held; 0: commit after every turn of the event loop)",
    )


def audit_batch_window(args: argparse.Namespace) -> float:
    """The batch window in seconds; ValueError (reported by the caller) if out of range."""
    ms = float(args.audit_batch_ms)
    if not 0 <= ms <= MAX_AUDIT_BATCH_MS:
        raise ValueError(f"--audit-batch-ms must be between 0 and {MAX_AUDIT_BATCH_MS:g}")
    return ms / 1000

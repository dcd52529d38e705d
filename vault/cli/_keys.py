"""``pdvault keys rotate|reindex|rekey|status``: subject key rotation jobs,
blind-index re-index jobs, a subject's rekey (its records under a fresh data
key) and key coverage."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from vault.audit import AuditStore, audit_url
from vault.config import RegionConfig, load_regions, parse_duration
from vault.datadir import DEFAULT_DATA_DIR, DataDir
from vault.devstack import OpenBaoServer
from vault.errors import DecryptionFailed, KeyServiceUnavailable, VaultError
from vault.keys import OpenBaoCredential
from vault.rotation import (
    LookupReindex,
    RateLimiter,
    ReindexSummary,
    SubjectKeyRotation,
    SubjectRekey,
)
from vault.server import region_key_provider, region_rotator
from vault.store import IndexStore, RekeyStore, RotationStore, make_engine, migrate
from vault.tokens.keyfiles import HISTORY_FILE, read_history, read_published, signing_key_age


def _duration(text: str) -> int:
    seconds = parse_duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError("a duration like 90d, 12h, 30m or 0s")
    return seconds


def _rate(text: str) -> float:
    value = text.removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a rate like 50/s") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError("the rate must be positive")
    return rate


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="key rotation jobs and key status")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    rot = ksub.add_parser(
        "rotate",
        help="rotate subject keys of a region (resumable, safe on several nodes at once)",
    )
    rot.add_argument("--region", required=True)
    rot.add_argument(
        "--older-than",
        type=_duration,
        default=0,
        help="only subjects whose key was last rotated (or created) this long ago: 90d, 12h "
        "(default: every subject)",
    )
    rot.add_argument("--rate", type=_rate, default=None, help="at most N subjects per second: 50/s")
    rix = ksub.add_parser(
        "reindex",
        help="re-index a region's lookups under a new index key version and retire the old "
        "(resumable, safe on several nodes at once)",
    )
    rix.add_argument("--region", required=True)
    rix.add_argument("--rate", type=_rate, default=None, help="at most N subjects per second: 50/s")
    rix.add_argument(
        "--drop-unsealed",
        action="store_true",
        help="retire the old version even though some lookups have no sealed value (set before "
        "values were sealed): their entries are deleted and no longer find their subject",
    )
    rk = ksub.add_parser(
        "rekey",
        help="re-encrypt one subject's records under a fresh data key (a data key that may "
        "have leaked; resumable)",
    )
    rk.add_argument("subject_id", metavar="SUBJECT_ID")
    rk.add_argument(
        "--region", default=None, help="the subject's region (default: from the subject id)"
    )
    rk.add_argument(
        "--rotate",
        action="store_true",
        help="then rotate the subject's Transit key and trim its old versions, so a backup's "
        "old wrap of the old data key no longer opens",
    )
    st = ksub.add_parser(
        "status", help="per region: key versions in use, index key versions, signing keys"
    )
    for p in (rot, rix, rk, st):
        p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
        p.add_argument("--regions", type=Path, default=None)
    for p in (rot, rix, rk):
        p.add_argument(
            "--openbao-token",
            default=os.environ.get("BAO_ROTATION_TOKEN"),
            help="a token of the pdvault-rotation role (default: $BAO_ROTATION_TOKEN, else an "
            "AppRole login made for this run from the local stack's root token)",
        )


def run(args: argparse.Namespace) -> int:
    if args.keys_command == "rotate":
        return _rotate(args)
    if args.keys_command == "reindex":
        return _with_rotation_credential(args, args.region, _run_reindex)
    if args.keys_command == "rekey":
        return _rekey(args)
    return _status(args)


def _rotate(args: argparse.Namespace) -> int:
    return _with_rotation_credential(args, args.region, _run_rotation)


def _rekey(args: argparse.Namespace) -> int:
    sid: str = args.subject_id
    region = args.region or sid.partition("_")[0]
    return _with_rotation_credential(args, region, _run_rekey)


def _with_rotation_credential(
    args: argparse.Namespace,
    region_id: str,
    job: Any,
) -> int:
    data_dir: Path = args.data_dir.resolve()
    bao = OpenBaoServer(data_dir, log=False)
    regions = load_regions(args.regions, data_dir=str(data_dir), openbao_addr=bao.address)
    region = regions.regions.get(region_id)
    if region is None:
        print(f"pdvault: no region {region_id!r} in {regions.source}", file=sys.stderr)
        return 2
    credential: OpenBaoCredential = args.openbao_token or bao.rotation_login(regions)
    try:
        return int(job(args, region, credential))
    except KeyboardInterrupt:
        # The subject in hand is released (its claim) on the way out; the job's
        # cursor is in the database.
        print("pdvault: interrupted; run the command again to resume", file=sys.stderr)
        return 130
    finally:
        bao.retire()  # the login made for this run (if any) ends with it


def _run_rekey(
    args: argparse.Namespace, region: RegionConfig, credential: OpenBaoCredential
) -> int:
    engine = make_engine(region.database_url)
    migrate(engine)
    rotator = region_rotator(region, credential)
    # The region's audit log (shared with the nodes: each append chains on the
    # stored head) records the rekey under the subject's pseudonym.
    log = AuditStore.open(audit_url(region.database_url, region.id), region.id)
    job = SubjectRekey(RekeyStore(engine), rotator, region.id, audit_log=log)
    rotation = (
        SubjectKeyRotation(RotationStore(engine), rotator, region.id) if args.rotate else None
    )
    console = Console(stderr=True)
    # The subject id is the operator's own input; it is printed back, never data.
    try:
        with console.status(f"rekeying {args.subject_id}") as status:

            def tick(done: int) -> None:
                status.update(f"rekeying {args.subject_id}: {done} records")

            s = job.run(args.subject_id, rotation=rotation, progress=tick)
    except (KeyServiceUnavailable, DecryptionFailed) as e:
        print(
            f"pdvault: {args.subject_id}: {e or 'the data key does not open'}; run again to resume",
            file=sys.stderr,
        )
        return 1
    except VaultError as e:  # not found, erased, held by another job, changed meanwhile
        print(f"pdvault: {args.subject_id}: {e}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
        log.close()
    print(
        f"{args.subject_id}: rekeyed to data-key generation {s.generation}"
        + (" (resumed)" if s.resumed else "")
        + f": {s.reencrypted} records re-encrypted, {s.by_writers} re-sealed by writers "
        f"meanwhile, {s.retries} compare-and-set retries, {s.passes} pass(es), "
        f"in {s.seconds:.1f} s"
        + ("" if s.rotated is None else f"; Transit key rotation: {s.rotated}")
    )
    return 0 if s.rotated in (None, "rotated") else 1


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[str, str], None]]:
    """A progress bar on stderr with the rate in subjects/s; yields the job's
    per-subject callback."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("job", total=total, rate="")
        started = time.monotonic()
        count = [0]

        def tick(_: str, __: str) -> None:
            count[0] += 1
            elapsed = max(time.monotonic() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{count[0] / elapsed:.1f} subjects/s")

        yield tick


def _run_rotation(
    args: argparse.Namespace, region: RegionConfig, credential: OpenBaoCredential
) -> int:
    engine = make_engine(region.database_url)
    migrate(engine)
    store = RotationStore(engine)
    job = SubjectKeyRotation(store, region_rotator(region, credential), region.id)
    limiter = RateLimiter(args.rate)
    total = store.coverage().subjects
    with _progress(f"rotating {region.id} subject keys", total) as tick:
        try:
            s = job.run(args.older_than, limiter=limiter, progress=tick)
        except KeyServiceUnavailable as e:
            print(f"pdvault: {e}; run again to resume", file=sys.stderr)
            return 1
    rate = s.rotated / s.seconds if s.seconds else 0.0
    print(
        f"{region.id}: {s.rotated} rotated, {s.gone} no longer due (erased or rotated "
        f"elsewhere), {s.held} held by another job, {s.failed} failed, in {s.seconds:.1f} s "
        f"({rate:.1f} subjects/s); job {s.job_id} "
        + ("finished" if s.finished else "unfinished: run again to resume")
        + (" (resumed)" if s.resumed else "")
    )
    engine.dispose()
    return 0 if s.finished else 1


def reindex_job(region: RegionConfig, credential: OpenBaoCredential) -> LookupReindex:
    """A re-index job of one region's cell, with the rotation role's credential."""
    engine = make_engine(region.database_url)
    migrate(engine)
    return LookupReindex(
        RotationStore(engine),
        IndexStore(engine),
        region_key_provider(region, credential),
        region_rotator(region, credential),
        region.id,
        region.transit_mounts[0],
    )


def _run_reindex(
    args: argparse.Namespace, region: RegionConfig, credential: OpenBaoCredential
) -> int:
    job = reindex_job(region, credential)
    limiter = RateLimiter(args.rate)
    engine = make_engine(region.database_url)
    index = IndexStore(engine)
    total = index.count_candidates(min(index.active(), default=1))
    engine.dispose()
    with _progress(f"re-indexing {region.id} lookups", total) as tick:
        try:
            s = job.run(drop_unsealed=args.drop_unsealed, limiter=limiter, progress=tick)
        except KeyServiceUnavailable as e:
            print(f"pdvault: {e}; run again to resume", file=sys.stderr)
            return 1
    for line in reindex_summary(s):
        print(line)
    return 0 if s.finished else 1


def reindex_summary(s: ReindexSummary) -> list[str]:
    """The summary lines of a re-index run (counts only, no personal data)."""
    if not s.version:
        return [f"{s.region}: no lookup index key yet: nothing to re-index"]
    rate = s.reindexed / s.seconds if s.seconds else 0.0
    lines = [
        f"{s.region}: index key v{s.old_version} -> v{s.version}: {s.reindexed} subjects "
        f"re-indexed, {s.gone} erased meanwhile, {s.unsealed} without sealed lookup values, "
        f"{s.failed} failed, in {s.seconds:.1f} s ({rate:.1f} subjects/s); job {s.job_id}"
        + (" (resumed)" if s.resumed else "")
    ]
    if s.retired:
        lines.append(
            f"{s.region}: v{s.old_version} retired: its digests and wrapped key are deleted"
            + (
                f"; {s.dropped_entries} lookup entries of {s.unsealed_subjects} subjects had no "
                "sealed value and were dropped (--drop-unsealed): they no longer find anyone"
                if s.dropped_entries
                else ""
            )
        )
    elif s.finished:
        lines.append(f"{s.region}: v{s.old_version} was already retired by another job")
    elif s.unsealed_subjects:
        lines.append(
            f"{s.region}: v{s.old_version} NOT retired: {s.unsealed_subjects} subjects hold "
            f"{s.unsealed_entries} lookup entries without a sealed value (set before values were "
            "sealed); set them again, or run with --drop-unsealed to delete them"
        )
    else:
        lines.append(f"{s.region}: unfinished: run again to resume")
    return lines


def _age(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.1f} d" if days >= 1 else f"{seconds / 3600:.1f} h"


def _status(args: argparse.Namespace) -> int:
    for line in status_report(args.data_dir.resolve(), args.regions):
        print(line)
    return 0


def status_report(data_dir: Path, regions_file: Path | None = None) -> list[str]:
    """The lines of ``pdvault keys status`` (read from the databases and key files)."""
    regions = load_regions(regions_file, data_dir=str(data_dir), openbao_addr="http://unused")
    now = time.time()
    out = ["region  subjects  on latest version  key versions in use  oldest key (since rotation)"]
    for rid, rc in regions.regions.items():
        engine = make_engine(rc.database_url)
        migrate(engine)
        cov = RotationStore(engine).coverage()
        index_versions = IndexStore(engine).versions()
        engine.dispose()
        share = f"{100 * cov.on_latest / cov.subjects:.1f}%" if cov.subjects else "-"
        versions = f"v{cov.oldest_version}..v{cov.newest_version}" if cov.subjects else "-"
        oldest = _age(now - cov.oldest_rotation_us / 1e6) if cov.oldest_rotation_us else "-"
        out.append(f"{rid:<7} {cov.subjects:>8}  {share:>17}  {versions:>19}  {oldest:>27}")
        active = [
            f"v{v.version} (age {_age(now - v.created_at / 1e6)})"
            for v in index_versions
            if v.state == "active"
        ]
        retired = sum(1 for v in index_versions if v.state == "retired")
        out.append(
            f"        lookup index key: {', '.join(active) or '-'}"
            + (" (re-index under way)" if len(active) > 1 else "")
            + (f"; {retired} retired" if retired else "")
        )
    tokens = DataDir(data_dir).tokens
    if (tokens / HISTORY_FILE).exists():
        out.append("signing keys (tokens and receipts):")
        for p in read_published(tokens):
            age = _age(now - p.created_at) if p.created_at else "?"
            state = "signing" if p.retired_at is None else f"retired {_age(now - p.retired_at)} ago"
            out.append(f"  {p.key.kid}  age {age}  {state}")
        out.append(f"  receipt key history: {len(read_history(tokens))} key(s), chain verified")
        period = regions.control.signing_key_rotation_seconds
        if period:
            key_age = signing_key_age(tokens, now)
            due = "now" if key_age is None or key_age >= period else f"in {_age(period - key_age)}"
            out.append(f"  scheduled rotation: every {_age(period)}, next due {due}")
        else:
            out.append("  scheduled rotation: none (pdvault token rotate-key by hand)")
    return out

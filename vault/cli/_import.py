"""``pdvault import FILE.jsonl``: bulk onboarding through ImportSubjects.

One person per line::

    {"key": "crm-000042", "country": "DE", "minor": false,
     "lookups": {"email": "ada@example.org"},
     "records": [{"category": "user.name", "fields": {"first": "Ada"}}]}

``key`` (required, unique per person, [A-Za-z0-9_.:-]{1,128}) is the person's
idempotency key: the vault creates each person once however often the line is
sent. Progress is kept in ``FILE.jsonl.progress`` (the lines acknowledged by
the vault, in order); run the same command again after an interruption and it
resumes from there — a batch that was in flight when it stopped is sent again,
which writes nothing twice. ``--ids OUT.jsonl`` appends ``{"key", "subject_id"}``
for every person acknowledged (a person sent again is listed again, with the
same subject id).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vault.cli import _connect
from vault.client import VaultClient, VaultClientError
from vault.datadir import DEFAULT_DATA_DIR
from vault.v1 import vault_pb2 as pb

#: People per ImportSubjects call (the server takes at most 1000).
DEFAULT_BATCH = 200


class BadLine(Exception):
    """A line that is not a person (its number only: lines hold personal data)."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import", help="bulk import people and their records from JSON lines")
    p.add_argument("file", type=Path, help="one person per line (see `pdvault import --help`)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    _connect.add_flags(p)
    p.add_argument(
        "--token",
        default=os.environ.get("PDVAULT_TOKEN"),
        help="a token with write on the records' categories (default: $PDVAULT_TOKEN)",
    )
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="people per call (max 1000)")
    p.add_argument("--parallel", type=int, default=4, help="calls in flight at once")
    p.add_argument("--ids", type=Path, default=None, help="append key → subject_id lines here")
    p.add_argument(
        "--restart", action="store_true", help="ignore saved progress and send every line again"
    )


def person(line: str, lineno: int) -> tuple[str, pb.ImportSubjectRequest]:
    """The request of one line, and its key; BadLine names only the line number."""
    try:
        doc: Any = json.loads(line)
    except ValueError:
        raise BadLine(f"line {lineno}: not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str) or not doc["key"]:
        raise BadLine(f'line {lineno}: not an object with a "key"')
    try:
        lookups = doc.get("lookups") or {}
        records = doc.get("records") or []
        req = pb.ImportSubjectRequest(
            subject=pb.CreateSubjectRequest(
                country=doc.get("country", ""),
                region=doc.get("region", ""),
                minor=bool(doc.get("minor", False)),
                idempotency_key=doc["key"],
                lookups=[pb.Lookup(kind=k, value=v) for k, v in dict(lookups).items()],
            ),
            records=[
                pb.ImportRecord(category=r["category"], fields=dict(r["fields"])) for r in records
            ],
        )
    except (TypeError, KeyError, ValueError, AttributeError):
        raise BadLine(f"line {lineno}: a field has the wrong shape") from None
    return doc["key"], req


def _batches(path: Path, skip: int, size: int) -> Iterator[tuple[int, list[tuple[str, Any]]]]:
    """(lines done after this batch, [(key, request)]) from line ``skip`` on."""
    batch: list[tuple[str, Any]] = []
    n = 0
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n <= skip or not line.strip():
                continue
            batch.append(person(line, n))
            if len(batch) == size:
                yield n, batch
                batch = []
    if batch:
        yield n, batch


class Checkpoint:
    """The lines the vault acknowledged, kept beside the file (written atomically)."""

    def __init__(self, source: Path) -> None:
        self.path = source.with_name(source.name + ".progress")
        self.source = source

    def load(self) -> int:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return 0
        if doc.get("file") != str(self.source.resolve()):
            return 0
        return int(doc.get("lines_done", 0))

    def save(self, lines: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"file": str(self.source.resolve()), "lines_done": lines}))
        os.replace(tmp, self.path)


def _send(vc: VaultClient, batch: list[tuple[str, Any]]) -> list[tuple[str, str, int]]:
    reply = vc.import_subjects(req for _, req in batch)
    if len(reply.results) != len(batch):
        raise RuntimeError("the vault answered for a different number of people")
    return [
        (k, r.subject_id, r.records_written) for (k, _), r in zip(batch, reply.results, strict=True)
    ]


def run(args: argparse.Namespace) -> int:
    if not args.token:
        print("pdvault: import needs a token (--token or $PDVAULT_TOKEN)", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= 1000 or args.parallel < 1:
        print("pdvault: --batch must be 1-1000 and --parallel at least 1", file=sys.stderr)
        return 2
    try:
        total = sum(1 for line in args.file.open(encoding="utf-8") if line.strip())
    except OSError as e:
        print(f"pdvault: {args.file}: cannot be read ({e.strerror})", file=sys.stderr)
        return 2
    checkpoint = Checkpoint(args.file)
    start = 0 if args.restart else checkpoint.load()
    if start:
        print(f"pdvault: resuming after line {start} ({checkpoint.path})", file=sys.stderr)
    ids_out = args.ids.open("a", encoding="utf-8") if args.ids else None
    people = records = 0
    done_through = start
    # Calls finish out of order; progress moves only over a gap-free prefix.
    finished: dict[int, int] = {}
    order: list[int] = []
    try:
        with (
            _connect.connect(args, args.token) as vc,
            ThreadPoolExecutor(args.parallel) as pool,
            Progress(
                TextColumn("importing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                transient=False,
            ) as bar,
        ):
            task = bar.add_task("import", total=total, completed=start, rate="")
            inflight: dict[Future[list[tuple[str, str, int]]], int] = {}
            batches = _batches(args.file, start, args.batch)

            def collect(futures: set[Future[list[tuple[str, str, int]]]]) -> None:
                nonlocal people, records, done_through
                for fut in futures:
                    end = inflight.pop(fut)
                    results = fut.result()  # raises the call's error
                    people += len(results)
                    records += sum(r for _, _, r in results)
                    if ids_out is not None:
                        for key, sid, _ in results:
                            ids_out.write(json.dumps({"key": key, "subject_id": sid}) + "\n")
                        # Before the checkpoint moves: a line counted done is in the file.
                        ids_out.flush()
                    finished[end] = len(results)
                    bar.advance(task, len(results))
                while order and order[0] in finished:
                    done_through = order.pop(0)
                    finished.pop(done_through)
                    checkpoint.save(done_through)
                elapsed = bar.tasks[0].elapsed or 0
                if elapsed:
                    bar.update(task, rate=f"{people / elapsed:.0f} people/s")

            for end, batch in batches:
                order.append(end)
                inflight[pool.submit(_send, vc, batch)] = end
                if len(inflight) >= args.parallel:
                    done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                    collect(done)
            while inflight:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                collect(done)
    except BadLine as e:
        print(f"pdvault: {args.file}: {e}; nothing after line {done_through} sent", file=sys.stderr)
        return 2
    except VaultClientError as e:
        print(
            f"pdvault: import stopped: {_connect.describe(e)}. Lines 1-{done_through} are "
            "imported; run the same command again to resume.",
            file=sys.stderr,
        )
        return 1
    finally:
        if ids_out is not None:
            ids_out.close()
    print(f"pdvault: {people} people, {records} new records imported ({done_through} lines done)")
    return 0

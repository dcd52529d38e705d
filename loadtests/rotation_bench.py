"""What subject key rotation costs: rotate+re-wrap throughput, and GetRecord
throughput while a rate-limited rotation runs, relative to none.

    .venv/bin/python loadtests/rotation_bench.py                  # starts its own local stack
    .venv/bin/python loadtests/rotation_bench.py --subjects 400 --rate 20 --seconds 10

Starts ``pdvault up`` in a temporary data dir and makes ``--subjects`` subjects
of de with one record each. Then, in order:

1. ``pdvault keys rotate --region de`` without a rate limit and without load:
   rotate + re-wrap + trim throughput in subjects/s (as the command reports it);
2. ``--rounds`` times, interleaved: GetRecord at 16 concurrent callers with no
   rotation, then GetRecord while ``pdvault keys rotate --region de --rate R/s``
   runs (every subject is due again: ``--older-than 0s``; the job is stopped
   after the row, then finished unmeasured, resumed from its cursor).

The rotation runs as its own process (as an operator would run it), the
server in another, this load generator in a third. Prints each row, the
rotation rate achieved under load, and the ratio of the means (with/without;
target: >= 80%).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import Result, run
from core_bench import issue_token, start_stack

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

TARGET_RATIO = 0.80


def _rotate_cmd(data_dir: Path, rate: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "vault.cli", "keys", "rotate", "--region", "de"]
    cmd += ["--data-dir", str(data_dir), "--older-than", "0s"]
    return cmd + (["--rate", f"{rate:g}/s"] if rate else [])


def _rotated_per_second(stdout: str) -> tuple[int, float]:
    m = re.search(r"de: (\d+) rotated.*\(([\d.]+) subjects/s\)", stdout)
    if not m:
        raise SystemExit(f"unexpected output of pdvault keys rotate: {stdout!r}")
    return int(m.group(1)), float(m.group(2))


async def bench(args: argparse.Namespace, data_dir: Path, target: str) -> None:
    token = issue_token(data_dir, service="rotation-bench")
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.PersonalDataVaultStub(ch)
        print(f"setup: {args.subjects} subjects of de with one record each ...", file=sys.stderr)
        rids = []
        for _ in range(args.subjects):
            s = await stub.CreateSubject(pb.CreateSubjectRequest(country="DE"), metadata=md)
            r = await stub.PutRecord(
                pb.PutRecordRequest(
                    subject_id=s.subject_id,
                    category="user.contact.email",
                    fields={"address": "x" * 64},
                ),
                metadata=md,
            )
            rids.append(r.record_id)
        rng = random.Random(7)

        async def get(_: int) -> None:
            await stub.GetRecord(pb.GetRecordRequest(record_id=rng.choice(rids)), metadata=md)

        async def load(name: str) -> Result:
            res = await run(name, get, concurrency=args.concurrency, seconds=args.seconds)
            print(res.row(), flush=True)
            return res

        print(
            f"target {target}, {args.concurrency} concurrent callers, {args.seconds:.0f}s per "
            f"row, {args.subjects} subjects, {args.rounds} round(s); {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        started = time.monotonic()
        alone = subprocess.run(
            _rotate_cmd(data_dir, None), capture_output=True, text=True, check=True
        )
        n, per_s = _rotated_per_second(alone.stdout)
        print(
            f"rotate+rewrap+trim, no load, no rate limit: {n} subjects in "
            f"{time.monotonic() - started:.1f} s wall, {per_s:.1f} subjects/s (job's own figure)"
        )

        without: list[Result] = []
        during: list[Result] = []
        achieved: list[float] = []
        for _ in range(args.rounds):
            without.append(await load("GetRecord, no rotation"))
            rotation = subprocess.Popen(
                _rotate_cmd(data_dir, args.rate),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.5)  # the job's process has started and is rotating
            window = time.time()
            during.append(await load(f"GetRecord, rotation at {args.rate:g}/s"))
            done = _rotated_since(data_dir, window) / (time.time() - window)
            achieved.append(done)
            print(f"  rotation during that row: {done:.1f} subjects/s", flush=True)
            rotation.send_signal(signal.SIGINT)  # stopped mid-way
            rotation.wait(30)
            # Finish the stopped job (resumed, unmeasured), so the next round's
            # job starts afresh with every subject due again.
            subprocess.run(_rotate_cmd(data_dir, None), capture_output=True, check=False)

    base = sum(r.rps for r in without) / len(without)
    load_rps = sum(r.rps for r in during) / len(during)
    ratio = load_rps / base if base else 0.0
    errors = sum(sum(r.errors.values()) for r in during)
    print(
        f"rate-limited rotation achieved {sum(achieved) / len(achieved):.1f} subjects/s "
        f"(limit {args.rate:g}/s) while loaded"
    )
    print(
        f"GetRecord during rotation / without (mean of {args.rounds} interleaved rounds): "
        f"{load_rps:.0f} / {base:.0f} req/s = {ratio:.0%} (target >= {TARGET_RATIO:.0%}: "
        f"{'met' if ratio >= TARGET_RATIO else 'MISSED'}); errors during rotation: {errors}"
    )


def _rotated_since(data_dir: Path, since: float) -> int:
    """Subjects of de whose key was rotated after ``since`` (read-only)."""
    db = data_dir / "cells" / "de.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM subjects WHERE key_rotated_at >= ?", (int(since * 1e6),)
        ).fetchone()
    return int(n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subjects", type=int, default=400)
    p.add_argument("--rate", type=float, default=10.0, help="rotation rate limit, subjects/s")
    p.add_argument("--rounds", type=int, default=3, help="interleaved without/with rounds")
    p.add_argument("--seconds", type=float, default=10.0, help="per load row")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    if args.subjects < args.rate * (args.seconds + 2) * args.rounds:
        p.error("--subjects must keep the rate-limited rotation busy for every load row")
    with tempfile.TemporaryDirectory(prefix="pdvault-rotation-bench-") as tmp:
        data_dir = Path(tmp) / "pdv"
        proc, target = start_stack(data_dir)
        try:
            asyncio.run(bench(args, data_dir, target))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)


if __name__ == "__main__":
    main()

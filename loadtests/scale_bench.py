"""What a key per person costs as the population grows, on this machine.

    .venv/bin/python loadtests/scale_bench.py --subjects 100000 --sample-every 10000
    .venv/bin/python loadtests/scale_bench.py --subjects 20000 --mounts 4 --phases grow
    .venv/bin/python loadtests/scale_bench.py --pool 5000 --phases pool

Starts ``pdvault up`` in a temporary data dir (its own OpenBao, raft storage)
and drives it with ``--concurrency`` callers over gRPC. Phases:

grow   creates ``--subjects`` people in one region (``--region``), each with
       CreateSubject (the inline path: the pool is off) followed by one
       PutRecord, as a sign-up does. Every ``--sample-every`` people it prints
       the creation rate and p50/p99 over that window, OpenBao's resident
       memory, its raft storage and its own audit log on disk, and the region's
       database (file and WAL), and derives the cost per person.
read   GetRecord over the whole population, on the node restarted: ``--reads``
       records spread over every person (cold: each needs a Transit decrypt),
       then the same records again (warm: data keys cached). p50/p99 of each.
erase  EraseSubject of ``--erasures`` people: erasures/s, p50/p99.
pool   restarts with ``--pool`` pooled subjects in the region, waits until the
       pool is full, then creates ``--pool`` people with CreateSubject alone
       (all from the pool): rate and p99; then keeps creating for
       ``--sustain-seconds`` with the pool empty (inline path, the filler
       competing for OpenBao): the sustained rate.
import ``pdvault import`` of ``--import-people`` people with two records each
       into a node whose pool (``--pool``) is full: people/s and records/s.

Figures depend on what else the machine runs: the header prints the cores and
the load average at the start, and each sample the load average then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_bench import issue_token

from vault.config import default_regions_file
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

COUNTRY = {"de": "DE", "us": "US", "sg": "SG", "cn": "CN", "ru": "RU"}


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class Stack:
    """``pdvault up`` in a data dir, and what it occupies."""

    def __init__(self, data_dir: Path, region: str, mounts: int, flags: list[str]) -> None:
        self.data_dir = data_dir
        self.region = region
        self.started = time.perf_counter()
        regions = self._regions_file(mounts)
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "vault.cli", "up", "--data-dir", str(data_dir)),
                *("--port", "0", "--regions", str(regions), *flags),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        self.target = ""
        for line in self.proc.stdout:
            m = re.search(r"endpoint\s+(\S+:\d+)", line)
            if m:
                self.target = m.group(1)
            if "Stop with Ctrl-C." in line:
                break
        if not self.target:
            raise SystemExit("pdvault up did not start")
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        self.bao = next(k for k in kids if k.name() == "bao")

    def _regions_file(self, mounts: int) -> Path:
        """The shipped regions file, with ``mounts`` Transit mounts in the region."""
        raw: Any = yaml.safe_load(default_regions_file().read_text())
        for r in raw["regions"]:
            if r["id"] == self.region and mounts > 1:
                base = r["openbao"]["mounts"][0]
                r["openbao"]["mounts"] = [base] + [f"{base}-{i}" for i in range(2, mounts + 1)]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        path = self.data_dir.parent / f"regions-{mounts}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    def footprint(self) -> dict[str, int]:
        bao_dir = self.data_dir / "openbao"
        db = self.data_dir / "cells" / f"{self.region}.db"
        return {
            "bao_rss": self.bao.memory_info().rss,
            "raft": _tree_bytes(bao_dir / "raft"),
            "audit": (bao_dir / "audit.log").stat().st_size
            if (bao_dir / "audit.log").exists()
            else 0,
            "db": sum(p.stat().st_size for p in db.parent.glob(f"{db.name}*")),
        }

    def _query(self, sql: str) -> tuple[Any, ...]:
        path = self.data_dir / "cells" / f"{self.region}.db"
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return tuple(db.execute(sql).fetchone())
        except sqlite3.OperationalError:  # not migrated yet
            return ()
        finally:
            db.close()

    def pool_depth(self) -> int:
        row = self._query("SELECT count(*) FROM subject_pool")
        return int(row[0]) if row else 0

    def pool_fill_rate(self) -> float:
        """Entries per second of minting time, from the filler's own log."""
        row = self._query("SELECT sum(entries), sum(duration_us) FROM subject_pool_fills")
        return float(row[0]) / (float(row[1]) / 1e6) if row and row[1] else float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class Driver:
    """``concurrency`` callers over ``channels`` connections."""

    def __init__(self, target: str, token: str, rights: str, concurrency: int) -> None:
        opts = [("grpc.use_local_subchannel_pool", 1)]
        self.chans = [grpc.aio.insecure_channel(target, options=opts) for _ in range(4)]
        self.stubs = [pb_grpc.PersonalDataVaultStub(c) for c in self.chans]  # type: ignore[no-untyped-call]
        self.md = (("authorization", f"Bearer {token}"),)
        self.rights = (("authorization", f"Bearer {rights}"),)
        self.concurrency = concurrency

    async def close(self) -> None:
        for c in self.chans:
            await c.close()

    async def many(self, n: int, op: Any, on_done: Any = None) -> list[float]:
        """Runs ``op(i, stub)`` for i in 0..n-1 with ``concurrency`` callers;
        the latency of each (ms), in completion order."""
        lat: list[float] = []
        nxt = 0

        async def worker(w: int) -> None:
            nonlocal nxt
            stub = self.stubs[w % len(self.stubs)]
            while nxt < n:
                i = nxt
                nxt += 1
                t0 = time.perf_counter()
                await op(i, stub)
                lat.append((time.perf_counter() - t0) * 1000)
                if on_done is not None:
                    on_done(len(lat))

        await asyncio.gather(*(worker(w) for w in range(self.concurrency)))
        return lat


async def timed(d: Driver, n: int, op: Any) -> tuple[float, list[float]]:
    """Runs ``op`` ``n`` times (see Driver.many): the rate per second and the latencies."""
    t0 = time.perf_counter()
    lat = await d.many(n, op)
    return n / (time.perf_counter() - t0), lat


async def grow(stack: Stack, d: Driver, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    country = COUNTRY[stack.region]
    sids: list[str] = [""] * args.subjects
    rids: list[str] = [""] * args.subjects

    async def signup(i: int, stub: Any) -> None:
        s = await stub.CreateSubject(pb.CreateSubjectRequest(country=country), metadata=d.md)
        r = await stub.PutRecord(
            pb.PutRecordRequest(
                subject_id=s.subject_id, category="user.name", fields={"first": f"p{i}"}
            ),
            metadata=d.md,
        )
        sids[i], rids[i] = s.subject_id, r.record_id

    base = stack.footprint()
    print(
        f"grow: {args.subjects} people in {stack.region} (CreateSubject + PutRecord, "
        f"{args.mounts} mount(s), pool off), {args.concurrency} callers; at start: "
        f"OpenBao RSS {_mb(base['bao_rss'])}, raft {_mb(base['raft'])}, audit log "
        f"{_mb(base['audit'])}, database {_mb(base['db'])}",
        flush=True,
    )
    print(
        f"{'people':>8} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'bao RSS':>10} "
        f"{'raft':>10} {'audit log':>10} {'database':>10} {'load':>6}",
        flush=True,
    )
    done = 0
    while done < args.subjects:
        step = min(args.sample_every, args.subjects - done)
        rate, lat = await timed(d, step, lambda i, stub, off=done: signup(off + i, stub))
        done += step
        fp = stack.footprint()
        print(
            f"{done:>8} {rate:>8.1f} {_pct(lat, 50):>8.1f} {_pct(lat, 99):>8.1f} "
            f"{_mb(fp['bao_rss']):>10} {_mb(fp['raft']):>10} {_mb(fp['audit']):>10} "
            f"{_mb(fp['db']):>10} {os.getloadavg()[0]:>6.1f}",
            flush=True,
        )
    fp = stack.footprint()
    per = {k: (fp[k] - base[k]) / args.subjects for k in fp}
    print(
        f"per person (growth over the run / people): OpenBao RSS {per['bao_rss']:.0f} B, "
        f"raft {per['raft']:.0f} B, OpenBao audit log {per['audit']:.0f} B, "
        f"database {per['db']:.0f} B (one record of one field each)",
        flush=True,
    )
    return sids, rids


async def read(d: Driver, rids: list[str], args: argparse.Namespace) -> None:
    # Spread over the whole population, on a node just restarted (cold caches).
    step = max(1, len(rids) // args.reads)
    chosen = rids[::step][: args.reads]

    async def get(i: int, stub: Any) -> None:
        await stub.GetRecord(pb.GetRecordRequest(record_id=chosen[i]), metadata=d.md)

    for label in ("cold (Transit decrypt per person)", "warm (data key cached)"):
        rate, lat = await timed(d, len(chosen), get)
        print(
            f"GetRecord {label}: {len(chosen)} records of {len(rids)} people, {rate:.0f}/s, "
            f"p50 {_pct(lat, 50):.2f} ms, p99 {_pct(lat, 99):.2f} ms",
            flush=True,
        )


async def erase(d: Driver, sids: list[str], args: argparse.Namespace) -> None:
    victims = sids[-args.erasures :]

    async def one(i: int, stub: Any) -> None:
        await stub.EraseSubject(
            pb.EraseSubjectRequest(subject_id=victims[i], reason="load-test"), metadata=d.rights
        )

    rate, lat = await timed(d, len(victims), one)
    print(
        f"EraseSubject: {len(victims)} of {len(sids)} people, {rate:.1f}/s, "
        f"p50 {_pct(lat, 50):.1f} ms, p99 {_pct(lat, 99):.1f} ms",
        flush=True,
    )


async def pool(stack: Stack, d: Driver, args: argparse.Namespace) -> None:
    country = COUNTRY[stack.region]
    while (depth := stack.pool_depth()) < args.pool:
        await asyncio.sleep(1)
    fill = time.perf_counter() - stack.started
    print(
        f"pool: {depth} subjects minted ahead {fill:.0f} s after the start; the filler's pace "
        f"{stack.pool_fill_rate():.0f} entries/s ({args.mounts} mount(s), 4 key-service calls "
        "at a time)",
        flush=True,
    )

    async def create(i: int, stub: Any) -> None:
        await stub.CreateSubject(pb.CreateSubjectRequest(country=country), metadata=d.md)

    n = int(args.pool * 0.9)  # the filler starts refilling meanwhile: stay within the pool
    rate, lat = await timed(d, n, create)
    print(
        f"CreateSubject from a full pool: {n} people, {rate:.0f}/s, p50 {_pct(lat, 50):.2f} ms, "
        f"p99 {_pct(lat, 99):.2f} ms",
        flush=True,
    )
    # Empty it, then measure the inline path while the filler competes.
    await d.many(max(0, stack.pool_depth() + 50), create)
    t0 = time.perf_counter()
    count = 0
    lat_all: list[float] = []
    while time.perf_counter() - t0 < args.sustain_seconds:
        lat_all += await d.many(100, create)
        count += 100
    rate = count / (time.perf_counter() - t0)
    print(
        f"CreateSubject sustained with the pool drained ({args.mounts} mount(s)): {count} people "
        f"in {args.sustain_seconds:.0f} s, {rate:.0f}/s, p50 {_pct(lat_all, 50):.1f} ms, "
        f"p99 {_pct(lat_all, 99):.1f} ms",
        flush=True,
    )


def bulk_import(stack: Stack, token: str, args: argparse.Namespace, work: Path) -> None:
    """``pdvault import`` of ``--import-people`` people with two records each."""
    country = COUNTRY[stack.region]
    people = work / "people.jsonl"
    with people.open("w") as f:
        for i in range(args.import_people):
            doc = {
                "key": f"bench-{i:08d}",
                "country": country,
                "records": [
                    {"category": "user.name", "fields": {"first": f"Person {i}"}},
                    {"category": "user.contact.email", "fields": {"address": f"p{i}@x.org"}},
                ],
            }
            f.write(json.dumps(doc) + "\n")
    while stack.pool_depth() < min(args.pool, args.import_people):
        time.sleep(1)
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            *(sys.executable, "-m", "vault.cli", "import", str(people)),
            *("--target", stack.target, "--data-dir", str(stack.data_dir), "--token", token),
            *("--batch", "200", "--parallel", "4"),
        ],
        capture_output=True,
        text=True,
    )
    spent = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"pdvault import failed: {out.stderr[-2000:]}")
    n = args.import_people
    print(
        f"pdvault import: {n} people, {2 * n} records in {spent:.1f} s: {n / spent:.0f} people/s, "
        f"{2 * n / spent:.0f} records/s (pool {args.pool}, batches of 200, 4 calls in flight)",
        flush=True,
    )


async def main_async(args: argparse.Namespace, work: Path) -> None:
    phases = set(args.phases.split(","))
    print(
        f"scale_bench: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start "
        "(the machine may be shared: figures are lower bounds)",
        flush=True,
    )
    pooled = ["--key-pool", str(args.pool), "--key-pool-regions", args.region]
    if phases & {"grow", "read", "erase"}:
        with running(work, "grow", args) as stack:
            d = Driver(stack.target, *_tokens(stack.data_dir), args.concurrency)
            try:
                sids, rids = await grow(stack, d, args)
            finally:
                await d.close()
        # A restarted node: every data-key cache empty, the first reads are cold.
        with running(work, "grow", args) as stack:
            d = Driver(stack.target, *_tokens(stack.data_dir), args.concurrency)
            try:
                if "read" in phases:
                    await read(d, rids, args)
                if "erase" in phases:
                    await erase(d, sids, args)
            finally:
                await d.close()
    if "import" in phases:
        with running(work, "import", args, pooled) as stack:
            token = issue_token(
                stack.data_dir,
                service="scale-bench",
                categories="user.name,user.contact.email",
                ops="read,write",
            )
            bulk_import(stack, token, args, work / "import")
    if "pool" in phases:
        with running(work, "pool", args, pooled) as stack:
            d = Driver(stack.target, *_tokens(stack.data_dir), args.concurrency)
            try:
                await pool(stack, d, args)
            finally:
                await d.close()


@contextlib.contextmanager
def running(
    work: Path, name: str, args: argparse.Namespace, flags: list[str] | None = None
) -> Iterator[Stack]:
    """``pdvault up`` on ``work/name/data`` for the duration of a phase."""
    stack = Stack(work / name / "data", args.region, args.mounts, flags or [])
    try:
        yield stack
    finally:
        stack.stop()


def _tokens(data_dir: Path) -> tuple[str, str]:
    service = issue_token(data_dir, service="scale-bench", categories="user.name", ops="read,write")
    rights = issue_token(
        data_dir,
        service="scale-bench",
        purpose="essential.subject_rights",
        categories="user.name",
        ops="read,write,erase",
    )
    return service, rights


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--sample-every", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--region", default="de", choices=sorted(COUNTRY))
    ap.add_argument("--mounts", type=int, default=1, help="Transit mounts of the region")
    ap.add_argument("--reads", type=int, default=5000, help="records read cold, then warm")
    ap.add_argument("--erasures", type=int, default=500)
    ap.add_argument("--pool", type=int, default=5000, help="pool size of the pool phase")
    ap.add_argument("--sustain-seconds", type=float, default=60)
    ap.add_argument("--import-people", type=int, default=5000, help="people of the import phase")
    ap.add_argument("--phases", default="grow,read,erase,pool")
    ap.add_argument("--keep", type=Path, default=None, help="work in this dir and keep it")
    args = ap.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        asyncio.run(main_async(args, args.keep))
        return
    with tempfile.TemporaryDirectory(prefix="pdvault-scale-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))


if __name__ == "__main__":
    main()

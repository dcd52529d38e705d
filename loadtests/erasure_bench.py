"""Erasures per second of a local stack (each destroys a real OpenBao key).

    .venv/bin/python loadtests/erasure_bench.py [--subjects 300] [--concurrency 8]

Creates the subjects (two records each) first, then erases them all with N
concurrent callers and prints erasures/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import Result
from core_bench import issue_token, start_stack

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc


async def bench(target: str, token: str, subjects: int, concurrency: int) -> None:
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.PersonalDataVaultStub(ch)
        print(f"setup: {subjects} subjects with two records each ...", file=sys.stderr)
        sids: list[str] = []
        for i in range(subjects):
            s = await stub.CreateSubject(
                pb.CreateSubjectRequest(country=("DE", "US", "SG")[i % 3]), metadata=md
            )
            for cat, fields in (
                ("user.name", {"first": "x"}),
                ("user.contact.email", {"address": "x@y.z"}),
            ):
                await stub.PutRecord(
                    pb.PutRecordRequest(subject_id=s.subject_id, category=cat, fields=fields),
                    metadata=md,
                )
            sids.append(s.subject_id)
        queue = list(sids)
        result = Result("EraseSubject", concurrency, 0.0)

        async def worker() -> None:
            while queue:
                sid = queue.pop()
                t0 = time.perf_counter()
                r = await stub.EraseSubject(pb.EraseSubjectRequest(subject_id=sid), metadata=md)
                assert r.state == pb.ERASURE_STATE_COMPLETED and r.records_affected == 2
                result.latencies_ms.append((time.perf_counter() - t0) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - t0
        print(result.row())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--subjects", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdvault-erasure-bench-") as d:
        proc, target = start_stack(Path(d))
        try:
            token = issue_token(
                Path(d),
                service="erasure-bench",
                purpose="essential.subject_rights",
                categories="user.name,user.contact.email",
                ops="write,erase",
            )
            asyncio.run(bench(target, token, args.subjects, args.concurrency))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()

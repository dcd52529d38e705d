"""GetRecord, PutRecord and FindSubjects throughput of a pdvault node at 16 concurrent callers.

    .venv/bin/python loadtests/core_bench.py                  # starts its own local stack
    .venv/bin/python loadtests/core_bench.py --target 127.0.0.1:50051 --token "$TOKEN"
    .venv/bin/python loadtests/core_bench.py --metrics --ops GetRecord  # metrics on
    .venv/bin/python loadtests/core_bench.py --workers 2 --channels 8 --ops GetRecord

Prints requests/s and p50/p99 latency per operation. Without ``--target`` it
starts ``pdvault up`` (``--workers N`` server processes on one port) in a
temporary data dir and also prints the CPU each process group used during each
operation (the node's server processes, OpenBao, this client), in cores.
``--channels K`` spreads the callers over K connections: the kernel hands each
connection to one worker, so with one connection one worker does all the work.
(The node is a separate process, so the server and this client do not share a GIL.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import run

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc


def start_stack(data_dir: Path, *flags: str, workers: int = 1) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vault.cli", "up", "--data-dir", str(data_dir)),
            *("--port", "0", "--workers", str(workers), *flags),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"endpoint\s+(\S+:\d+)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("pdvault up did not start")


def issue_token(
    data_dir: Path,
    *,
    service: str = "core-bench",
    purpose: str = "essential.service",
    categories: str = "user.contact.email",
    ops: str = "read,write",
    transfer_basis: str = "",
) -> str:
    """A token from the local stack's administrator credential, via the CLI."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault.cli",
            "token",
            "issue",
            "--data-dir",
            str(data_dir),
            "--service",
            service,
            "--purpose",
            purpose,
            "--categories",
            categories,
            "--ops",
            ops,
            "--ttl",
            "86400",
            *(("--transfer-basis", transfer_basis) if transfer_basis else ()),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuGroups:
    """CPU seconds of the process groups of a local stack: the node's server
    processes (the ``pdvault up`` process and its workers), OpenBao, this client."""

    def __init__(self, up_pid: int) -> None:
        import psutil

        up = psutil.Process(up_pid)
        kids = up.children(recursive=True)
        self.groups = {
            "server": [up, *(k for k in kids if "vault.cli._workers" in " ".join(k.cmdline()))],
            "openbao": [k for k in kids if k.name() == "bao"],
            "client": [psutil.Process()],
        }

    def sample(self) -> dict[str, float]:
        out = {}
        for name, procs in self.groups.items():
            total = 0.0
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
            out[name] = total
        return out


async def bench(
    target: str,
    token: str | None,
    seconds: float,
    concurrency: int,
    subjects: int,
    payload: int,
    ops: frozenset[str] = frozenset({"GetRecord", "PutRecord", "FindSubjects"}),
    server_pid: int | None = None,
    *,
    channels: int = 1,
    cpu: CpuGroups | None = None,
) -> None:
    md = (("authorization", f"Bearer {token}"),) if token else ()
    # Each channel its own connection (grpc shares them between channels otherwise).
    options = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(target, options=options) for _ in range(channels)]
    stubs = [pb_grpc.PersonalDataVaultStub(c) for c in chans]  # type: ignore[no-untyped-call]
    try:
        stub = stubs[0]
        value = "x" * payload
        print(f"setup: {subjects} subjects with one record each ...", file=sys.stderr)
        sids, rids = [], []
        for i in range(subjects):
            s = await stub.CreateSubject(
                pb.CreateSubjectRequest(
                    country=("DE", "US", "SG")[i % 3],
                    lookups=[pb.Lookup(kind="email", value=f"bench-{i}@example.org")],
                ),
                metadata=md,
            )
            r = await stub.PutRecord(
                pb.PutRecordRequest(
                    subject_id=s.subject_id,
                    category="user.contact.email",
                    fields={"address": value},
                ),
                metadata=md,
            )
            sids.append(s.subject_id)
            rids.append(r.record_id)
        rng = random.Random(7)

        async def get(i: int) -> None:
            await stubs[i % channels].GetRecord(
                pb.GetRecordRequest(record_id=rng.choice(rids)), metadata=md
            )

        async def put(i: int) -> None:
            await stubs[i % channels].PutRecord(
                pb.PutRecordRequest(
                    subject_id=rng.choice(sids),
                    category="user.contact.email",
                    fields={"address": value},
                ),
                metadata=md,
            )

        async def find(c: int) -> None:
            i = rng.randrange(subjects)
            await stubs[c % channels].FindSubjects(
                pb.FindSubjectsRequest(
                    lookup=pb.Lookup(kind="email", value=f"bench-{i}@example.org"),
                    region=sids[i][:2],
                ),
                metadata=md,
            )

        print(
            f"target {target}, {concurrency} concurrent callers over {channels} connection(s), "
            f"{seconds:.0f}s per operation, "
            f"{payload}-byte field; {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}"
        )
        for name, fn in (("GetRecord", get), ("PutRecord", put), ("FindSubjects", find)):
            if name not in ops:
                continue
            calls = [0]

            async def counted(i: int, fn: Any = fn, calls: list[int] = calls) -> None:
                await fn(i)
                calls[0] += 1

            cpu_before = _cpu_seconds(server_pid)
            groups_before = cpu.sample() if cpu else {}
            t0 = time.perf_counter()
            res = await run(name, counted, concurrency=concurrency, seconds=seconds)
            cpu_after = _cpu_seconds(server_pid)
            line = res.row()
            if cpu_before is not None and cpu_after is not None and calls[0]:
                # CPU time of the server process per call: steadier than requests/s
                # on a machine that other processes share.
                line += f"   server cpu {1e6 * (cpu_after - cpu_before) / calls[0]:.0f} us/call"
            print(line, flush=True)
            if cpu:
                wall = time.perf_counter() - t0
                used = {k: (v - groups_before[k]) / wall for k, v in cpu.sample().items()}
                print(
                    "  CPU (cores, warm-up included): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in used.items()),
                    flush=True,
                )
    finally:
        for c in chans:
            await c.close()


_SHORT = {"get": "GetRecord", "put": "PutRecord", "find": "FindSubjects"}


def _op_names(ops: str) -> frozenset[str]:
    """``--ops``: RPC names, or get/put/find for short."""
    return frozenset(_SHORT.get(o.strip(), o.strip()) for o in ops.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--target", help="host:port of a running node (default: start a local stack)")
    ap.add_argument("--token", default=os.environ.get("PDVAULT_TOKEN"))
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--payload", type=int, default=64, help="bytes per field value")
    ap.add_argument(
        "--ops",
        default="GetRecord,PutRecord,FindSubjects",
        help="operations to measure (get, put, find for short)",
    )
    ap.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="with --target: the server's process id, to report its CPU per call",
    )
    ap.add_argument(
        "--metrics",
        action="store_true",
        help="the local stack serves Prometheus metrics (--metrics-port 0): their cost",
    )
    ap.add_argument("--workers", type=int, default=1, help="server processes of the local stack")
    ap.add_argument("--channels", type=int, default=1, help="connections the callers share")
    args = ap.parse_args()
    proc = None
    target = args.target
    tmp = None
    if target is None:
        tmp = tempfile.TemporaryDirectory(prefix="pdvault-bench-")
        flags = ("--metrics-port", "0") if args.metrics else ()
        proc, target = start_stack(Path(tmp.name), *flags, workers=args.workers)
        args.token = args.token or issue_token(Path(tmp.name))
    try:
        asyncio.run(
            bench(
                target,
                args.token,
                args.seconds,
                args.concurrency,
                args.subjects,
                args.payload,
                _op_names(args.ops),
                proc.pid if proc is not None else args.server_pid,
                channels=args.channels,
                cpu=CpuGroups(proc.pid) if proc is not None else None,
            )
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()

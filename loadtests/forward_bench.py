"""What forwarding costs: GetRecord at the home node against GetRecord through
a foreign entry node, 16 concurrent callers each, in one run.

    .venv/bin/python loadtests/forward_bench.py           # starts `pdvault up --regions-mode five`
    .venv/bin/python loadtests/forward_bench.py --data-dir .pdvault   # a five-region stack running

The records belong to subjects of ``--home`` (de); the forwarded row enters by
``--entry`` (us) with a token whose ``transfer_basis`` is ``scc`` (de -> us is
allowed under scc by regions/regions.yaml), so every call crosses the border:
the entry node authenticates, forwards over mutual TLS, the home node checks
the rules, records the transfer in its cell, reads and opens the record, and
the entry node checks the reply again. ``--rpc GetSubject`` measures the hop
alone (no plaintext: no transfer decision, nothing recorded). Both rows use
the same client, records and token; ``--rounds N`` interleaves them N times.
Prints req/s and p50/p99 per row and the forwarded/home throughput ratio
(target: >= 60%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _loadgen import Result, run
from core_bench import issue_token

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

TARGET_RATIO = 0.60


def start_five(data_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vault.cli", "up", "--regions-mode", "five"),
            *("--data-dir", str(data_dir), "--port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.match(r"Stop with Ctrl-C", line):
            return proc
    raise SystemExit("pdvault up --regions-mode five did not start")


def _processes(data_dir: Path) -> dict[str, int]:
    """The stack's processes by role (Linux /proc): each region's node, OpenBao, this client."""
    found = {"client": os.getpid()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if not any(str(data_dir) in a for a in args):
            continue
        if "serve" in args and "--region" in args:
            found[args[args.index("--region") + 1]] = int(entry.name)
        elif any(a.endswith("/bao") for a in args):
            found["openbao"] = int(entry.name)
    return found


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds used so far by each process (its threads included)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {}
    for role, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        used[role] = (int(fields[11]) + int(fields[12])) / tick
    return used


def _cpu_row(
    before: dict[str, float], after: dict[str, float], calls: int, roles: list[str]
) -> str:
    per = {r: (after[r] - before[r]) * 1e6 / calls for r in after if r in before and calls}
    shown = [r for r in roles if r in per]
    rest = sum(v for r, v in per.items() if r not in shown)
    parts = [f"{r} {per[r]:4.0f}" for r in shown] + [f"other {rest:4.0f}"]
    return f"{'':<28} cpu us/call: " + ", ".join(parts) + f"; total {sum(per.values()):4.0f}"


def _channel(endpoint: str, pki: Path) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / "client-key.pem").read_bytes(),
        certificate_chain=(pki / "client.pem").read_bytes(),
    )
    return grpc.aio.secure_channel(endpoint.removeprefix("grpcs://"), creds)


async def bench(args: argparse.Namespace, data_dir: Path) -> list[tuple[Result, Result]]:
    endpoints = json.loads((data_dir / "endpoints.json").read_text())
    token = issue_token(data_dir, service="forward-bench", transfer_basis="scc")
    md = (("authorization", f"Bearer {token}"),)
    pki = data_dir / "pki"
    country = {"de": "DE", "us": "US", "sg": "SG", "cn": "CN", "ru": "RU"}[args.home]
    async with (
        _channel(endpoints[args.home], pki) as home_ch,
        _channel(endpoints[args.entry], pki) as entry_ch,
    ):
        home = pb_grpc.PersonalDataVaultStub(home_ch)
        entry = pb_grpc.PersonalDataVaultStub(entry_ch)
        print(
            f"setup: {args.subjects} {args.home} subjects with one record each ...", file=sys.stderr
        )
        rids, sids = [], []
        for _ in range(args.subjects):
            s = await home.CreateSubject(pb.CreateSubjectRequest(country=country), metadata=md)
            r = await home.PutRecord(
                pb.PutRecordRequest(
                    subject_id=s.subject_id,
                    category="user.contact.email",
                    fields={"address": "x" * args.payload},
                ),
                metadata=md,
            )
            rids.append(r.record_id)
            sids.append(s.subject_id)
        rng = random.Random(7)
        calls = [0]

        def getter(stub: pb_grpc.PersonalDataVaultStub):  # type: ignore[no-untyped-def]
            async def get(_: int) -> None:
                calls[0] += 1
                if args.rpc == "GetSubject":
                    sreq = pb.GetSubjectRequest(subject_id=rng.choice(sids))
                    await stub.GetSubject(sreq, metadata=md, timeout=30)
                    return
                req = pb.GetRecordRequest(record_id=rng.choice(rids))
                await stub.GetRecord(req, metadata=md, timeout=30)

            return get

        print(
            f"home {args.home} {endpoints[args.home]}, entry {args.entry} "
            f"{endpoints[args.entry]}; {args.concurrency} callers, {args.seconds:.0f}s per row, "
            f"{args.rounds} round(s), {args.payload}-byte field; {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, grpcio {grpc.__version__}"
        )
        pids = _processes(data_dir) if args.cpu else {}
        roles = ["client", args.entry, args.home, "openbao"]

        async def row(name: str, stub: pb_grpc.PersonalDataVaultStub) -> Result:
            calls[0] = 0
            before = _cpu_seconds(pids)
            result = await run(
                name, getter(stub), concurrency=args.concurrency, seconds=args.seconds
            )
            print(result.row(), flush=True)
            if pids:
                print(_cpu_row(before, _cpu_seconds(pids), calls[0], roles), flush=True)
            return result

        rounds = []
        for i in range(args.rounds):
            h = await row(f"{args.rpc} at home ({args.home})", home)
            f = await row(f"{args.rpc} {args.entry}->{args.home}", entry)
            ratio = f.rps / h.rps if h.rps else 0.0
            print(f"round {i + 1}: forwarded / home throughput = {ratio:.0%}", flush=True)
            rounds.append((h, f))
        return rounds


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data-dir", type=Path, help="a running five-region stack (default: start one)"
    )
    ap.add_argument("--home", default="de")
    ap.add_argument("--entry", default="us")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--rpc",
        choices=("GetRecord", "GetSubject"),
        default="GetRecord",
        help="GetSubject: forwarded too, but no plaintext, so no transfer decision or "
        "record (isolates the cost of the extra hop)",
    )
    ap.add_argument(
        "--cpu",
        action="store_true",
        help="also print each process's CPU time per call (client, entry node, home node, "
        "OpenBao, the other nodes), from /proc (Linux)",
    )
    args = ap.parse_args()
    proc = None
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="pdvault-fwd-bench-")
        data_dir = Path(tmp.name)
        started = time.monotonic()
        proc = start_five(data_dir)
        print(f"five-region stack up in {time.monotonic() - started:.1f}s", file=sys.stderr)
    try:
        rounds = asyncio.run(bench(args, data_dir.resolve()))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        if tmp is not None:
            tmp.cleanup()
    ratios = [f.rps / h.rps for h, f in rounds if h.rps]
    if ratios:
        ratio = statistics.median(ratios)
        verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
        print(
            f"forwarded / home throughput: median {ratio:.0%} over {len(ratios)} round(s) "
            f"(target >= {TARGET_RATIO:.0%}): {verdict}"
        )


if __name__ == "__main__":
    main()

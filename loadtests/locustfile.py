"""Locust load test of the pdvault read/write core, with an SLO gate.

    locust -f loadtests/locustfile.py --headless -u 16 -r 4 -t 60s \\
        --host 127.0.0.1:50051 --csv loadtests/out/run --html loadtests/out/run.html

Each simulated user holds one gRPC channel and, with no think time (closed
loop; see ``--pdv-user-rate`` to pace it), picks its next operation from a
weighted mix:

========  ===========================================  =======
weight    operation                                    default
========  ===========================================  =======
read      GetRecord of a popular subject's record      80
write     PutRecord replacing that record (last        15
          writer wins)
create    CreateSubject + PutRecord of a first record  4
erase     EraseSubject of a subject this user created  1
          itself (``--pdv-erase-rpc DeleteRecord``:
          delete one of its records instead)
========  ===========================================  =======

Subject popularity is Zipf-distributed over a population of ``--pdv-subjects``
subjects created (with one record each) when the test starts; those set-up
calls are not counted. ``erase`` only touches subjects its own user created, so
it never makes another user's read fail. It is a real crypto-shredding erasure,
with a second token (purpose ``essential.subject_rights``, operation ``erase``)
from ``PDVAULT_ERASE_TOKEN`` or issued like the first; ``--pdv-erase-rpc
DeleteRecord`` deletes one record instead (for deployments that must keep keys).

Every call is reported to locust as ``request_type="grpc"``, ``name=<RPC>``,
with the gRPC status code name in the request context. At the end of the run
the SLO file (``--pdv-slo``, default ``loadtests/slo.yaml``) is checked and the
process exits 1 if any objective was missed.

The target is ``--host`` as ``host:port`` (``grpcs://host:port`` for TLS; the CA
bundle from ``PDVAULT_TLS_CA`` if set, a client certificate for mutual TLS from
``PDVAULT_TLS_CERT``/``PDVAULT_TLS_KEY``). ``--pdv-entry-nodes
[REGION=]host:port,…`` spreads the users over several entry nodes (a
five-region stack's nodes: the region and the TLS files come from the data
dir's ``endpoints.json`` and ``pki/``); every call is then reported as
``RPC [entry->home]``, e.g. ``GetRecord [us->de]``, and the SLO gate checks
each RPC over all of its entry/home pairs. The purpose token comes from
``PDVAULT_TOKEN``; without it one is issued at start through
``TokenService.IssueToken`` with the administrator credential of the local stack
in ``PDVAULT_DATA_DIR`` (default ``./.pdvault``). See ``loadtests/README.md``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import gevent.pool
import grpc
import grpc.experimental.gevent as grpc_gevent
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from locust import User, events, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import StatsEntry

from vault.datadir import DEFAULT_DATA_DIR, DataDir
from vault.v1 import vault_pb2 as pb
from vault.v1 import vault_pb2_grpc as pb_grpc

# grpc's C core must yield to gevent's hub instead of blocking the whole
# process; this has to run before the first channel is created (locust has
# already monkey-patched the standard library by the time it imports us).
grpc_gevent.init_gevent()

log = logging.getLogger("pdvault.load")

HERE = Path(__file__).resolve().parent
DEFAULT_SLO = HERE / "slo.yaml"
CATEGORY = "user.contact.email"
TOKEN_CATEGORIES = ("user.contact.email", "user.name")
#: (environment variable, purpose, operations) of the service token and the erasure token
SERVICE_TOKEN = ("PDVAULT_TOKEN", "essential.service", ("read", "write", "delete"))
ERASE_TOKEN = ("PDVAULT_ERASE_TOKEN", "essential.subject_rights", ("erase",))
ERASE_RPCS = ("DeleteRecord", "EraseSubject")
ALL_REGIONS = ("cn", "de", "ru", "sg", "us")
OPERATIONS = ("read", "write", "create", "erase")


# -- command line / web UI parameters -------------------------------------


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    def add(flag: str, **kwargs: Any) -> None:
        # Straight on the parser (only its add_argument knows include_in_web_ui),
        # with locust's naming for the environment: --pdv-subjects, LOCUST_PDV_SUBJECTS.
        kwargs.setdefault("include_in_web_ui", True)
        env = "LOCUST_" + flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, env_var=env, **kwargs)

    for op, default in zip(OPERATIONS, (80.0, 15.0, 4.0, 1.0), strict=True):
        add(
            f"--pdv-{op}-weight",
            type=float,
            default=default,
            help=f"relative weight of the {op!r} operation (default {default:g})",
        )
    add(
        "--pdv-erase-rpc",
        choices=ERASE_RPCS,
        default="EraseSubject",
        help="what an 'erase' calls: EraseSubject (default) or DeleteRecord of one record",
    )
    add(
        "--pdv-subjects",
        type=int,
        default=1000,
        help="subjects created (one record each) before the load starts (default 1000)",
    )
    add(
        "--pdv-zipf",
        type=float,
        default=1.0,
        help="Zipf exponent of subject popularity; 0 = uniform (default 1.0)",
    )
    add(
        "--pdv-payload",
        type=int,
        default=64,
        help="bytes of the record's one field value (default 64)",
    )
    add(
        "--pdv-countries",
        default="DE,US,CN,RU,SG",
        help="countries of residence of new subjects, COUNTRY[:WEIGHT],… — the country "
        "decides the region (default DE,US,CN,RU,SG: the five regions evenly)",
    )
    add(
        "--pdv-user-rate",
        type=float,
        default=0.0,
        help="operations per second per user; 0 = as fast as replies come (default 0)",
    )
    add(
        "--pdv-timeout",
        type=float,
        default=10.0,
        help="deadline of each call in seconds (default 10)",
    )
    add(
        "--pdv-setup-concurrency",
        type=int,
        default=16,
        include_in_web_ui=False,
        help="concurrent calls while creating the population (default 16)",
    )
    add(
        "--pdv-entry-nodes",
        default="",
        help="entry nodes [REGION=]host:port,… (default: --host); users are spread over them "
        "and calls reported per entry and home region, e.g. 'GetRecord [us->de]'",
    )
    add(
        "--pdv-transfer-basis",
        default="",
        help="transfer_basis of the token issued at start (scc, consent, …): calls whose "
        "entry and home regions differ need one the regions file accepts",
    )
    add(
        "--pdv-slo",
        default=str(DEFAULT_SLO),
        help="SLO file checked at the end of the run; 'none' disables the gate",
    )


@dataclass(frozen=True)
class Settings:
    """The ``--pdv-*`` options, checked once per test."""

    weights: dict[str, float]
    subjects: int
    zipf: float
    payload: int
    countries: tuple[str, ...]
    country_weights: tuple[float, ...]
    user_rate: float
    timeout: float
    setup_concurrency: int
    erase_rpc: str
    entry_nodes: str = ""
    transfer_basis: str = ""

    def population_key(self) -> tuple[object, ...]:
        return (self.subjects, self.zipf, self.payload, self.countries, self.country_weights)

    @classmethod
    def from_options(cls, o: Any) -> Settings:
        weights = {op: float(getattr(o, f"pdv_{op}_weight")) for op in OPERATIONS}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError("--pdv-*-weight: weights must be >= 0 and not all 0")
        countries, cweights = _parse_countries(str(o.pdv_countries))
        subjects, payload = int(o.pdv_subjects), int(o.pdv_payload)
        if subjects < 1:
            raise ValueError("--pdv-subjects must be at least 1")
        if not 1 <= payload <= 64 * 1024:
            raise ValueError("--pdv-payload must be 1..65536 bytes (the vault's value limit)")
        return cls(
            weights=weights,
            subjects=subjects,
            zipf=max(0.0, float(o.pdv_zipf)),
            payload=payload,
            countries=countries,
            country_weights=cweights,
            user_rate=max(0.0, float(o.pdv_user_rate)),
            timeout=float(o.pdv_timeout),
            setup_concurrency=max(1, int(o.pdv_setup_concurrency)),
            erase_rpc=_erase_rpc(str(o.pdv_erase_rpc)),
            entry_nodes=str(getattr(o, "pdv_entry_nodes", "") or ""),
            transfer_basis=str(getattr(o, "pdv_transfer_basis", "") or ""),
        )


def _erase_rpc(name: str) -> str:
    if name not in ERASE_RPCS:
        raise ValueError(f"--pdv-erase-rpc {name!r}: one of {', '.join(ERASE_RPCS)}")
    if name == "EraseSubject" and not hasattr(pb, "EraseSubjectRequest"):
        raise ValueError("--pdv-erase-rpc EraseSubject: this pdvault's API has no EraseSubject")
    return name


def _parse_countries(spec: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    names: list[str] = []
    weights: list[float] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, w = item.partition(":")
        names.append(name.strip().upper())
        weights.append(float(w) if w else 1.0)
    if not names or any(w < 0 for w in weights) or not any(weights):
        raise ValueError(f"--pdv-countries {spec!r}: expected COUNTRY[:WEIGHT],…")
    return tuple(names), tuple(weights)


# -- connection and token ---------------------------------------------------


def _data_dir() -> DataDir:
    return DataDir(Path(os.environ.get("PDVAULT_DATA_DIR", str(DEFAULT_DATA_DIR))))


def resolve_target(host: str | None) -> tuple[str, bool]:
    """``(host:port, tls)`` from locust's ``--host``; without one, the local stack's."""
    if not host:
        host = _data_dir().target()
    scheme, sep, rest = host.partition("://")
    if not sep:
        return host.rstrip("/"), False
    if scheme not in ("grpc", "grpcs", "http", "https"):
        raise ValueError(f"--host {host!r}: expected host:port or grpcs://host:port")
    return rest.rstrip("/"), scheme in ("grpcs", "https")


@dataclass(frozen=True)
class Entry:
    """An entry node: where a user's calls go in; ``region`` labels the report."""

    target: str
    tls: bool
    region: str


def _local_endpoints() -> dict[str, str]:
    """host:port -> region of the data dir's five-region stack (``endpoints.json``)."""
    return {
        ep.partition("://")[2] or ep: region
        for region, ep in _data_dir().region_endpoints().items()
    }


def resolve_entries(spec: str, host: str | None) -> list[Entry]:
    """``--pdv-entry-nodes`` (``[REGION=]host:port,…``), else ``--host`` alone."""
    local = _local_endpoints()
    out = []
    for item in [i.strip() for i in spec.split(",") if i.strip()] or [host or ""]:
        label, sep, address = item.rpartition("=")
        target, tls = resolve_target(address or None)
        if target in local:
            tls = True  # a five-region stack's nodes serve mutual TLS only
        out.append(Entry(target, tls, label if sep else local.get(target, target)))
    return out


def open_channel(target: str, tls: bool) -> grpc.Channel:
    if not tls:
        return grpc.insecure_channel(target)
    ca, cert, key = (os.environ.get(f"PDVAULT_TLS_{k}") for k in ("CA", "CERT", "KEY"))
    local = _data_dir().local_tls_files(f"grpcs://{target}")
    if local is not None and not ca and not cert:
        ca, cert, key = (str(p) for p in local)
    creds = grpc.ssl_channel_credentials(
        Path(ca).read_bytes() if ca else None,
        Path(key).read_bytes() if key else None,
        Path(cert).read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds)


def obtain_token(
    target: str, tls: bool, kind: tuple[str, str, tuple[str, ...]], transfer_basis: str = ""
) -> str:
    """The token from ``kind``'s variable, else one issued with the local stack's
    administrator credential."""
    variable, purpose, operations = kind
    token = os.environ.get(variable, "").strip()
    if token:
        return token
    cred = _data_dir().admin_credential
    try:
        admin = cred.read_text().strip()
    except OSError:
        raise RuntimeError(
            f"no token: set {variable}, or PDVAULT_DATA_DIR to the data dir of a local "
            f"`pdvault up` (no administrator credential at {cred})"
        ) from None
    request = pb.IssueTokenRequest(
        service="pdvault-locust",
        purpose=purpose,
        categories=[pb.CategoryGrant(category=c) for c in TOKEN_CATEGORIES],
        operations=list(operations),
        regions=list(ALL_REGIONS),
        transfer_basis=transfer_basis,
        ttl_seconds=86400,
    )
    with open_channel(target, tls) as ch:
        stub = pb_grpc.TokenServiceStub(ch)
        try:
            resp = stub.IssueToken(
                request, timeout=15, metadata=(("authorization", f"Bearer {admin}"),)
            )
        except grpc.RpcError as e:
            raise RuntimeError(f"IssueToken failed: {e.code().name}: {e.details()}") from None
    return str(resp.token)


# -- the shared population ----------------------------------------------------


class ZipfSampler:
    """Indices 0..n-1 with P(k) proportional to 1 / (k+1)**s (s = 0: uniform)."""

    def __init__(self, n: int, s: float) -> None:
        self._cum = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))

    def __call__(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self._cum, rng.random() * self._cum[-1]), len(self._cum) - 1)

    def share_of_top(self, k: int) -> float:
        return self._cum[min(k, len(self._cum)) - 1] / self._cum[-1]


@dataclass
class Population:
    """Subjects created at test start, ``(subject_id, record_id)``, in random popularity order."""

    records: list[tuple[str, str]] = field(default_factory=list)
    sampler: ZipfSampler | None = None

    def pick(self, rng: random.Random) -> tuple[str, str]:
        assert self.sampler is not None
        return self.records[self.sampler(rng)]


@dataclass
class Run:
    """What every user of this process shares during one test."""

    settings: Settings
    target: str
    tls: bool
    token: str
    erase_token: str | None
    population: Population
    #: Where users enter; more than one (``--pdv-entry-nodes``): reported per entry/home.
    entries: tuple[Entry, ...] = ()

    @property
    def breakdown(self) -> bool:
        return bool(self.settings.entry_nodes)


_run: Run | None = None
_failed = False
_setup_lock = gevent.lock.Semaphore()


class CallFailed(Exception):
    """A gRPC call that did not return OK; its text groups locust's failure report."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(f"{code.name} {reason}".strip())
        self.code = code


def _reason(err: grpc.RpcError) -> str:
    """The server's stable ErrorInfo reason; messages vary and would split the report."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except Exception:  # a malformed status detail must not break the load run
        return ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


class _Vault:
    """One channel and the RPCs of the mix, each reported to locust."""

    def __init__(
        self,
        env: Environment | None,
        run: Run,
        *,
        report: bool = True,
        entry: Entry | None = None,
    ) -> None:
        self._env = env
        self._report = report
        entry = entry or (run.entries[0] if run.entries else Entry(run.target, run.tls, ""))
        #: "us" when calls are reported per entry and home region, else None.
        self._entry = entry.region if run.breakdown else None
        self._md = (("authorization", f"Bearer {run.token}"),)
        self._erase_md = (("authorization", f"Bearer {run.erase_token or run.token}"),)
        self._erase_rpc = run.settings.erase_rpc
        self._timeout = run.settings.timeout
        self._channel = open_channel(entry.target, entry.tls)
        self._stub = pb_grpc.PersonalDataVaultStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, request: Any, metadata: Any = None, home: str = "") -> Any:
        method: Callable[..., Any] = getattr(self._stub, name)
        start = time.perf_counter()
        response: Any = None
        exception: Exception | None = None
        code = grpc.StatusCode.OK
        try:
            response = method(request, timeout=self._timeout, metadata=metadata or self._md)
        except grpc.RpcError as e:
            code = e.code()
            exception = CallFailed(code, _reason(e))
        elapsed_ms = (time.perf_counter() - start) * 1000
        if self._report and self._env is not None:
            if self._entry is not None:
                if not home and response is not None and getattr(response, "region", ""):
                    home = str(response.region)  # CreateSubject: the region it chose
                name = f"{name} [{self._entry}->{home or '?'}]"
            self._env.events.request.fire(
                request_type="grpc",
                name=name,
                response_time=elapsed_ms,
                response_length=response.ByteSize() if response is not None else 0,
                response=response,
                exception=exception,
                context={"code": code.name},
            )
        elif exception is not None:
            raise exception
        return response

    def create_subject(self, country: str) -> pb.Subject | None:
        req = pb.CreateSubjectRequest(country=country, idempotency_key=uuid.uuid4().hex)
        return self._call("CreateSubject", req)  # type: ignore[no-any-return]

    def put_record(self, subject_id: str, value: str, record_id: str = "") -> pb.Record | None:
        req = pb.PutRecordRequest(
            subject_id=subject_id,
            category=CATEGORY,
            fields={"address": value},
            record_id=record_id,
        )
        return self._call("PutRecord", req, home=subject_id[:2])  # type: ignore[no-any-return]

    def get_record(self, record_id: str) -> pb.Record | None:
        req = pb.GetRecordRequest(record_id=record_id)
        return self._call("GetRecord", req, home=record_id[:2])  # type: ignore[no-any-return]

    def erase(self, subject_id: str, record_id: str) -> object:
        if self._erase_rpc == "EraseSubject":
            req = pb.EraseSubjectRequest(subject_id=subject_id, reason="load_test")
            return self._call("EraseSubject", req, self._erase_md, home=subject_id[:2])
        req2 = pb.DeleteRecordRequest(record_id=record_id)
        return self._call("DeleteRecord", req2, home=record_id[:2])


def _value(size: int, rng: random.Random) -> str:
    # Random per call so the vault cannot benefit from repeated plaintexts.
    return rng.randbytes((size + 1) // 2).hex()[:size]


def _build_population(env: Environment, run: Run) -> None:
    s = run.settings
    rng = random.Random()
    countries = rng.choices(s.countries, weights=s.country_weights, k=s.subjects)
    vault = _Vault(env, run, report=False)
    # With several entry nodes: each first record through its home region's node
    # if one is listed (no border crossed while setting up), else the first node.
    at_home = {e.region: _Vault(env, run, report=False, entry=e) for e in run.entries[1:]}
    records: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    started = time.monotonic()

    def create(country: str) -> None:
        if errors:
            return
        try:
            subject = vault.create_subject(country)
            assert subject is not None
            writer = at_home.get(subject.region, vault)
            rec = writer.put_record(subject.subject_id, _value(s.payload, rng))
            assert rec is not None
            records.append((subject.subject_id, rec.record_id))
        except Exception as e:
            errors.append(e)

    pool = gevent.pool.Pool(s.setup_concurrency)
    try:
        for c in countries:
            pool.spawn(create, c)
        pool.join()
    finally:
        vault.close()
        for v in at_home.values():
            v.close()
    if errors:
        raise RuntimeError(f"creating the subject population failed: {errors[0]}")
    rng.shuffle(records)  # popularity rank independent of region and creation order
    run.population.records = records
    run.population.sampler = ZipfSampler(len(records), s.zipf)
    top = run.population.sampler.share_of_top(max(1, len(records) // 100))
    log.info(
        "population: %d subjects in %.1fs (Zipf s=%.2f: the top 1%% get %.0f%% of reads/writes)",
        len(records),
        time.monotonic() - started,
        s.zipf,
        top * 100,
    )


def _prepare(environment: Environment) -> Run:
    """The token and population for a test; reused while the options that shape them hold."""
    settings = Settings.from_options(environment.parsed_options)
    entries = tuple(resolve_entries(settings.entry_nodes, environment.host))
    target, tls = entries[0].target, entries[0].tls
    prev = _run
    if prev is not None and (prev.target, prev.tls) != (target, tls):
        prev = None
    if prev is not None and prev.settings.transfer_basis != settings.transfer_basis:
        prev = None
    token = (
        prev.token
        if prev is not None
        else obtain_token(target, tls, SERVICE_TOKEN, settings.transfer_basis)
    )
    erase_token = None
    if settings.erase_rpc == "EraseSubject":
        erase_token = (prev.erase_token if prev is not None else None) or obtain_token(
            target, tls, ERASE_TOKEN, settings.transfer_basis
        )
    if prev is not None and prev.settings.population_key() == settings.population_key():
        return Run(settings, target, tls, token, erase_token, prev.population, entries)
    run = Run(settings, target, tls, token, erase_token, Population(), entries)
    log.info(
        "target %s%s; mix %s (erase = %s); %d-byte values",
        ", ".join(f"{e.region}={e.target}" if e.region != e.target else e.target for e in entries)
        if settings.entry_nodes
        else target,
        " (TLS)" if tls else "",
        ", ".join(f"{k} {v:g}" for k, v in settings.weights.items()),
        settings.erase_rpc,
        settings.payload,
    )
    _build_population(environment, run)
    return run


def _start(environment: Environment) -> None:
    global _run, _failed
    with _setup_lock:
        if _failed:
            return
        try:
            _run = _prepare(environment)
        except Exception as e:
            _run, _failed = None, True
            log.error("pdvault load test cannot start: %s", e)
            environment.process_exit_code = 2
            if environment.runner is not None:
                gevent.spawn_later(0, environment.runner.quit)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    # A headless single-process run builds its population before locust starts
    # the --run-time clock; otherwise it is built when the test starts (the web
    # UI may still change the options, and workers only get them then).
    opts = environment.parsed_options
    runner = environment.runner
    if opts is not None and opts.headless and not isinstance(runner, MasterRunner | WorkerRunner):
        _start(environment)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):  # workers run the users
        _start(environment)


# -- the user ---------------------------------------------------------------


class _Session:
    """One user's connection and state: the operations of the mix."""

    _count = itertools.count()

    def __init__(self, environment: Environment, run: Run) -> None:
        self.run = run
        # Users are spread over the entry nodes in turn.
        entry = run.entries[next(self._count) % len(run.entries)] if run.entries else None
        self.vault = _Vault(environment, run, entry=entry)
        self.rng = random.Random()
        self.own: list[tuple[str, str]] = []  # subjects this user created; erase takes these
        self._ops = list(run.settings.weights)
        self._cum_weights = list(itertools.accumulate(run.settings.weights.values()))

    def next_operation(self) -> None:
        (op,) = self.rng.choices(self._ops, cum_weights=self._cum_weights)
        getattr(self, op)()

    def read(self) -> None:
        _, record_id = self.run.population.pick(self.rng)
        self.vault.get_record(record_id)

    def write(self) -> None:
        subject_id, record_id = self.run.population.pick(self.rng)
        value = _value(self.run.settings.payload, self.rng)
        self.vault.put_record(subject_id, value, record_id=record_id)

    def create(self) -> None:
        s = self.run.settings
        (country,) = self.rng.choices(s.countries, weights=s.country_weights)
        subject = self.vault.create_subject(country)
        if subject is None:
            return
        rec = self.vault.put_record(subject.subject_id, _value(s.payload, self.rng))
        if rec is not None:
            self.own.append((subject.subject_id, rec.record_id))

    def erase(self) -> None:
        if not self.own:
            # Nothing of its own yet: sign someone up first (counted as a create),
            # so an erasure never races another user's reads.
            self.create()
            if not self.own:
                return
        subject_id, record_id = self.own.pop(0)
        self.vault.erase(subject_id, record_id)


class VaultUser(User):
    """A backend service calling the vault: reads, writes, sign-ups and erasures."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self._session: _Session | None = None

    def wait_time(self) -> float:
        rate = self._session.run.settings.user_rate if self._session is not None else 0.0
        if rate <= 0:
            return 0.0
        # constant pacing: 1/rate seconds from one operation's start to the next's
        run_time = time.perf_counter() - self._cp_last_run - self._cp_last_wait_time
        self._cp_last_wait_time = max(0.0, 1.0 / rate - run_time)
        self._cp_last_run = time.perf_counter()
        return self._cp_last_wait_time

    def on_start(self) -> None:
        with _setup_lock:  # waits for the population if it is still being created
            run = _run
        if run is not None:  # else setup failed and the runner is quitting
            self._session = _Session(self.environment, run)

    def on_stop(self) -> None:
        if self._session is not None:
            self._session.vault.close()

    @task
    def operation(self) -> None:
        if self._session is None:
            gevent.sleep(1)
        else:
            self._session.next_operation()


# -- SLO gate ---------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    operation: str
    p50_ms: float | None
    p99_ms: float | None
    max_error_rate: float | None


@dataclass(frozen=True)
class SLO:
    """``slo.yaml``: latency objectives per operation and a maximum error rate."""

    source: str
    objectives: tuple[Objective, ...]
    max_error_rate: float
    min_requests: int
    fail_on_cpu_warning: bool

    @classmethod
    def load(cls, path: Path) -> SLO:
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError(f"{path}: expected a mapping with version: 1")
        unknown_top = set(doc) - {
            "version",
            "max_error_rate",
            "min_requests",
            "fail_on_cpu_warning",
            "operations",
        }
        if unknown_top:
            raise ValueError(f"{path}: unknown keys {sorted(unknown_top)}")
        ops = doc.get("operations") or {}
        if not isinstance(ops, dict):
            raise ValueError(f"{path}: operations must map an RPC name to its objectives")
        objectives = []
        for name, spec in ops.items():
            spec = spec or {}
            unknown = set(spec) - {"p50_ms", "p99_ms", "max_error_rate"}
            if unknown:
                raise ValueError(f"{path}: {name}: unknown keys {sorted(unknown)}")
            objectives.append(
                Objective(
                    str(name),
                    _opt_float(spec.get("p50_ms")),
                    _opt_float(spec.get("p99_ms")),
                    _opt_float(spec.get("max_error_rate")),
                )
            )
        return cls(
            source=str(path),
            objectives=tuple(objectives),
            max_error_rate=float(doc.get("max_error_rate", 0.0)),
            min_requests=int(doc.get("min_requests", 1)),
            fail_on_cpu_warning=bool(doc.get("fail_on_cpu_warning", False)),
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass
class Verdict:
    """What the SLO gate found: objectives missed, held, not checked, and RPCs not called."""

    missed: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _entry_for(stats: Any, operation: str) -> Any:
    """The stats of ``operation``: its own row, or its ``operation [entry->home]``
    rows (``--pdv-entry-nodes``) merged into one."""
    entry = stats.entries.get((operation, "grpc"))
    if entry is not None:
        return entry
    parts = [
        e
        for (name, method), e in stats.entries.items()
        if method == "grpc" and name.startswith(f"{operation} [")
    ]
    if not parts:
        return None
    merged = StatsEntry(stats, operation, "grpc", use_response_times_cache=False)
    for e in parts:
        merged.extend(e)
    return merged


def check_slo(slo: SLO, stats: Any, *, cpu_warning: bool) -> Verdict:
    """Locust's RequestStats (aggregated over workers) against ``slo``."""
    v = Verdict()
    missed, held, skipped = v.missed, v.held, v.skipped
    total = stats.total
    if total.num_requests == 0:
        missed.append("no requests were made")
        return v
    rate = total.num_failures / total.num_requests
    line = f"error rate {rate:.3%} ({total.num_failures}/{total.num_requests})"
    if rate > slo.max_error_rate:
        missed.append(f"{line} > max {slo.max_error_rate:.3%}")
    else:
        held.append(f"{line} <= max {slo.max_error_rate:.3%}")
    for o in slo.objectives:
        entry = _entry_for(stats, o.operation)
        if entry is None or entry.num_requests == 0:
            v.unused.append(o.operation)
            continue
        if o.max_error_rate is not None:
            r = entry.num_failures / entry.num_requests
            if r > o.max_error_rate:
                missed.append(f"{o.operation}: error rate {r:.3%} > max {o.max_error_rate:.3%}")
        if entry.num_requests < slo.min_requests:
            # a p99 of a few dozen samples is just their maximum
            skipped.append(
                f"{o.operation}: latency of {entry.num_requests} requests "
                f"(< min_requests {slo.min_requests})"
            )
            continue
        for pct, limit in ((0.50, o.p50_ms), (0.99, o.p99_ms)):
            if limit is None:
                continue
            got = entry.get_response_time_percentile(pct)
            label = f"{o.operation}: p{round(pct * 100)} {got} ms"
            if got > limit:
                missed.append(f"{label} > {limit:g} ms")
            else:
                held.append(f"{label} <= {limit:g} ms")
    if cpu_warning:
        msg = "the load generator's CPU went above 90%: latencies include client queueing"
        (missed if slo.fail_on_cpu_warning else skipped).append(msg)
    return v


@events.quitting.add_listener
def _slo_gate(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner):
        return  # the master (or the single local process) holds the aggregated stats
    if environment.process_exit_code == 2:
        return  # the test never started; already reported
    path = getattr(environment.parsed_options, "pdv_slo", str(DEFAULT_SLO))
    if not path or path.lower() == "none":
        return
    try:
        slo = SLO.load(Path(path))
    except (OSError, ValueError, yaml.YAMLError) as e:
        log.error("SLO gate: cannot read %s: %s", path, e)
        environment.process_exit_code = 1
        return
    cpu_warning = bool(
        runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False)
    )
    verdict = check_slo(slo, runner.stats, cpu_warning=cpu_warning)
    for line in verdict.held:
        log.info("SLO ok: %s", line)
    for line in verdict.skipped:
        log.warning("SLO not checked: %s", line)
    if verdict.unused:
        log.info("SLO not checked (not called in this run): %s", ", ".join(verdict.unused))
    if verdict.missed:
        for line in verdict.missed:
            log.error("SLO MISSED: %s", line)
        n = len(verdict.missed)
        log.error("SLO gate FAILED (%s): %d objective(s) missed", slo.source, n)
        environment.process_exit_code = 1
        return
    log.info("SLO gate passed (%s)", slo.source)
    if runner.exceptions:
        log.error("the locustfile raised %d exception(s): see the report", len(runner.exceptions))
        environment.process_exit_code = 1
    else:
        # Failures within the error budget do not fail the run: the SLO file decides.
        environment.process_exit_code = 0

"""``pdvault up --regions-mode five``: the local five-region topology.

One node per region, each a ``pdvault serve --region R`` child process on its
own loopback port, with its own cell database and the shared control database
and token keys of the data dir; calls about another region's ids are forwarded
to that region's node over mutual TLS, and the transfer rules of the regions
file decide (and the home cell records) every crossing, as in production.

What it sets up, in the data dir:

- **one OpenBao** (as ``pdvault up``), a Transit mount per region, and per
  region an AppRole login for the node, limited to that region's mount(s) plus
  the control mount's ``token-signing`` encrypt/decrypt (``pdvault-node-R``),
  and one for the eraser limited likewise (``pdvault-eraser-R``), with the
  policies of ``deploy/openbao/policies``. Not five ``bao`` servers: on
  a developer machine that would add four processes (~100 MB each), ports,
  unseal material and start time, and test nothing the mount-limited
  credentials do not already enforce (a region's node cannot use another
  region's mount; tests/integration/test_serve.py). Production runs an
  OpenBao cluster per region, in the region (deploy/README.md). The role and
  secret ids reach the children in their environment (``BAO_ROLE_ID``,
  ``BAO_SECRET_ID``, ``BAO_ERASER_ROLE_ID``, ``BAO_ERASER_SECRET_ID``), never
  on disk; each node logs in itself, and the secret ids are destroyed when
  the stack stops;
- ``pki/``: a local CA, a server certificate per node, a client certificate
  per node carrying its region's ``node_identity``, and a client certificate
  for local callers (:mod:`vault.devpki`);
- ``five/regions.yaml``: the regions file with the regions' endpoints pointing
  at the five nodes (``five/policy.yaml`` with ``--policy``), and
  ``five/logs/R.log``, each node's output;
- ``endpoint``: the entry node (de by default) the CLI talks to, and
  ``endpoints.json``: every region's node.

The cells (``cells/R.db``), control database and OpenBao are the same files
as the one-process stack's: the same data dir can be started either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vault.cli._serve import SECRET_ENV
from vault.config import default_regions_file, load_regions
from vault.control import ControlStore
from vault.datadir import DataDir, write_file
from vault.db import make_engine
from vault.devpki import LOCAL_CLIENT_IDENTITY, Pki, ensure_local_pki
from vault.devstack import OpenBaoServer
from vault.errors import ConfigError
from vault.keys import TransitKeyProvider
from vault.policy import default_policy_path, load_policy
from vault.tokens.authority import ensure_admin_credential, load_or_create_signing_key
from vault.transport import is_loopback

#: The region whose node the CLI talks to (``DATA_DIR/endpoint``).
ENTRY_REGION = "de"
START_TIMEOUT = 120.0


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _any_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports(order: list[str], first: int) -> dict[str, int]:
    """The entry node on ``first`` (0: any free port), the others on the next
    ports where free, else on any free port."""
    out: dict[str, int] = {}
    for i, region in enumerate(order):
        wanted = first + i if first else 0
        out[region] = wanted if wanted and _free(wanted) else _any_port()
    return out


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A node must not outlive `pdvault up` even if it is killed (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _refuse_flags(args: argparse.Namespace) -> str | None:
    if args.tls_cert or args.tls_key or args.tls_client_ca or args.insecure_local:
        return (
            "--regions-mode five makes its own local CA and serves mutual TLS "
            "(DATA_DIR/pki/); the --tls-* and --insecure-local flags are for --regions-mode one"
        )
    if args.reflection:
        return "--reflection is for --regions-mode one"
    if not is_loopback(args.host):
        return "--regions-mode five is a local topology: its nodes listen on loopback only"
    return None


class Five:
    """The five node processes of one data dir."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.data_dir: Path = args.data_dir.resolve()
        self.layout = DataDir(self.data_dir)
        self.config_dir = self.layout.five
        self.logs = self.config_dir / "logs"
        self.regions_source: Path = args.regions or default_regions_file()
        self.policy_file: Path | None = args.policy
        self.first_port: int = args.port
        self.key_pool: int = args.key_pool
        self.workers: int = args.workers
        self.pool_regions: str | None = args.key_pool_regions
        # Passed on to every node as given to `pdvault up`.
        self.log_format: str = args.log_format
        self.audit_batch_ms: float = args.audit_batch_ms
        self.metrics_host: str = args.metrics_host
        #: The first node's metrics port; the others get the next ones, in
        #: region order (None: no metrics; 0: each a free port, in its log).
        self.metrics_port: int | None = args.metrics_port
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: The regions in the order their nodes start (the entry region first).
        self.order: list[str] = []
        self.endpoints: dict[str, str] = {}

    def write_config(self, ports: dict[str, int]) -> Path:
        raw: Any = yaml.safe_load(self.regions_source.read_text())
        for r in raw["regions"]:
            r["endpoint"] = f"127.0.0.1:{ports[r['id']]}"
        self.config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.config_dir / "regions.yaml"
        header = (
            f"# Generated by `pdvault up --regions-mode five` from {self.regions_source}\n"
            "# at every start (the endpoints are this start's ports). Edit the source.\n"
        )
        write_file(path, header + yaml.safe_dump(raw, sort_keys=False), 0o644)
        policy = self.config_dir / "policy.yaml"
        if self.policy_file is not None:
            write_file(policy, self.policy_file.read_text(), 0o644)
        else:
            policy.unlink(missing_ok=True)
        return path

    def spawn(self, region: str, port: int, pki: Pki, bao_addr: str, env: dict[str, str]) -> None:
        cert, key = pki.server(region)
        peer_cert, peer_key = pki.peer(region)
        self.logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.logs / f"{region}.log", "ab")  # noqa: SIM115 - owned by the child
        log.write(f"--- pdvault serve --region {region} starting\n".encode())
        log.flush()
        self.procs[region] = subprocess.Popen(
            [
                *(sys.executable, "-m", "vault.cli", "serve", "--region", region),
                *("--config", str(self.config_dir), "--data-dir", str(self.data_dir)),
                *("--host", "127.0.0.1", "--port", str(port), "--openbao-addr", bao_addr),
                *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)),
                *("--peer-ca", str(pki.ca), "--peer-cert", str(peer_cert)),
                *("--peer-key", str(peer_key), "--key-pool", str(self.key_pool)),
                *("--workers", str(self.workers)),
                *(("--key-pool-regions", self.pool_regions) if self.pool_regions else ()),
                *("--log-format", self.log_format, "--audit-batch-ms", f"{self.audit_batch_ms:g}"),
                *self._metrics_flags(region),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches `pdvault up`, which stops the nodes in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()

    def metrics_port_of(self, region: str) -> int | None:
        """The node's metrics port: the first one plus the region's place in order."""
        if not self.metrics_port:
            return self.metrics_port
        return self.metrics_port + self.order.index(region)

    def _metrics_flags(self, region: str) -> tuple[str, ...]:
        port = self.metrics_port_of(region)
        if port is None:
            return ()
        return ("--metrics-port", str(port), "--metrics-host", self.metrics_host)

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(self.procs)
        while waiting:
            for region in sorted(waiting):
                proc = self.procs[region]
                log = self.logs / f"{region}.log"
                text = log.read_text(errors="replace")
                start = text.rfind(f"--- pdvault serve --region {region} starting")
                if f"serving region {region} on" in text[start:]:
                    waiting.discard(region)
                elif proc.poll() is not None:
                    raise RuntimeError(
                        f"the {region} node exited with code {proc.returncode}; see {log}"
                    )
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"the nodes of {', '.join(sorted(waiting))} did not start")
            await asyncio.sleep(0.2)

    def dead(self) -> list[str]:
        return [r for r, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def up_five(args: argparse.Namespace, lock_data_dir: Any) -> int:
    refused = _refuse_flags(args)
    if refused:
        print(f"pdvault: refusing to start: {refused}", file=sys.stderr)
        return 2
    five = Five(args)
    data_dir, layout = five.data_dir, five.layout
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = lock_data_dir(data_dir)
    bao = OpenBaoServer(data_dir)
    try:
        regions = load_regions(
            five.regions_source, data_dir=str(data_dir), openbao_addr=bao.address
        )
        policy = load_policy(args.policy or default_policy_path())
    except ConfigError as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        lock.close()
        return 2
    identities = {r.id: r.node_identity for r in regions.regions.values()}
    if LOCAL_CLIENT_IDENTITY in identities.values():
        print(f"pdvault: {LOCAL_CLIENT_IDENTITY} cannot be a node identity", file=sys.stderr)
        lock.close()
        return 2
    entry = ENTRY_REGION if ENTRY_REGION in regions.regions else next(iter(regions.regions))
    order = [entry, *(r for r in regions.regions if r != entry)]
    # A stale endpoint of an earlier run must not be taken for this one.
    layout.endpoint.unlink(missing_ok=True)
    layout.endpoints.unlink(missing_ok=True)
    ports = _ports(order, five.first_port)
    five.order = order
    five.write_config(ports)
    pki = ensure_local_pki(layout.pki, identities)
    print(f"pdvault: starting OpenBao ({bao.address}, data in {bao.dir})", file=sys.stderr)
    bao.start()
    code = 0
    try:
        creds = bao.configure_per_region(regions)
        ensure_admin_credential(data_dir)
        # Before the nodes start side by side: the control database's schema and
        # the token signing key exist once (else five nodes would race to make them).
        ControlStore(make_engine(regions.control.database_url)).close()
        load_or_create_signing_key(
            layout.tokens,
            TransitKeyProvider.connect(regions.control.openbao_address, creds[entry].node),
            regions.control.transit_mount,
        )
        base_env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        base_env["PYTHONUNBUFFERED"] = "1"
        print(f"pdvault: starting {len(order)} nodes ({', '.join(order)})", file=sys.stderr)
        for region in order:
            node, eraser = creds[region].node, creds[region].eraser
            env = base_env | {
                "BAO_ROLE_ID": node.role_id,
                "BAO_SECRET_ID": node.secret_id,
                "BAO_ERASER_ROLE_ID": eraser.role_id,
                "BAO_ERASER_SECRET_ID": eraser.secret_id,
            }
            five.spawn(region, ports[region], pki, bao.address, env)
        await five.wait_ready(START_TIMEOUT)
        five.endpoints = {r: f"grpcs://127.0.0.1:{ports[r]}" for r in order}
        write_file(layout.endpoints, json.dumps(five.endpoints, indent=2) + "\n", 0o644)
        write_file(layout.endpoint, five.endpoints[entry] + "\n", 0o644)
        _banner(args, five, regions, entry, pki, bao, policy)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            dead = five.dead()
            if dead:
                print(
                    f"pdvault: the node of {', '.join(dead)} exited; stopping the others "
                    f"(see {five.logs})",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        print("\npdvault: shutting down", file=sys.stderr, flush=True)
    except (RuntimeError, ConfigError) as e:
        print(f"pdvault: refusing to start: {e}", file=sys.stderr)
        code = 2
    finally:
        five.stop()
        if bao.running:
            with contextlib.suppress(Exception):
                bao.retire()
        bao.stop()
        lock.close()
    print("pdvault: stopped", file=sys.stderr)
    return code


def _metrics_lines(five: Five) -> str:
    """The banner's line about the nodes' metrics endpoints (empty without)."""
    if five.metrics_port is None:
        return ""
    if five.metrics_port == 0:
        return f"  metrics      each node on a free port (see its log in {five.logs}/)\n"
    where = ", ".join(f"{r} {five.metrics_host}:{five.metrics_port_of(r)}" for r in five.order)
    return f"  metrics      /metrics of {where}\n"


def _banner(
    args: argparse.Namespace,
    five: Five,
    regions: Any,
    entry: str,
    pki: Pki,
    bao: OpenBaoServer,
    policy: Any,
) -> None:
    nodes = "\n".join(
        f"               {r}  {ep:<26} {regions.regions[r].name}"
        + ("  <- entry (DATA_DIR/endpoint)" if r == entry else "")
        for r, ep in five.endpoints.items()
    )
    cert, key = pki.client
    config = five.config_dir / "regions.yaml"
    print(
        f"""
pdvault is running: five regions, one node each (--regions-mode five).
  endpoint     {five.endpoints[entry]}  (the {entry} node; gRPC, health: SERVING)
  nodes        (all in {five.layout.endpoints}; calls about another region's ids are
               forwarded to its node; the transfer rules decide each crossing)
{nodes}
  transport    mutual TLS, nodes and callers: CA {pki.ca}
               client certificate {cert} (key {key.name}, 0600)
               the CLI uses them for these endpoints by itself
{_metrics_lines(five)}  config       {config} (generated), node logs {five.logs}/
  data dir     {five.data_dir}
  OpenBao      {bao.address}  (one server, a Transit mount per region; each node's
               token reaches only its region's mounts; unseal material:
               {bao.dir / "LOCAL-ONLY-unseal.json"})
  policy       {policy.source} (revision {policy.revision}, {len(policy.purposes)} purposes)
  admin        {five.layout.admin_credential} (0600)

Next: issue a purpose token and follow the README quickstart:
  pdvault token issue --data-dir {args.data_dir} --purpose essential.service \\
      --categories user.name,user.contact.email --ops read,write
  (other tools: --ca {pki.ca} --cert {cert} --key {key})
Stop with Ctrl-C.""",
        flush=True,
    )

"""``--workers N``: N server processes of one node on one port (SO_REUSEPORT).

Python serves a gRPC call on one core at a time; a node uses more of a
machine's cores by running several processes that each bind the same port
with ``SO_REUSEPORT``, the kernel spreading incoming connections over them.
Each worker builds its own vault from the same configuration: the same cell
databases, control plane and OpenBao, its own in-process caches (data keys,
token verifications). Nothing that decides access lives only in a cache — an
erasure is refused from the cell database, a revocation from the control
store — so a worker knows at once what another did, as two nodes do.

The first worker is the process that was started (``pdvault up`` /
``pdvault serve``); it spawns the others once it listens, hands each its
configuration and OpenBao credentials over a pipe (never the command line or
the environment), and stops them before itself. A worker dies with it.

Any process of the same user may bind a port marked ``SO_REUSEPORT`` too (the
kernel refuses other users): run the node under a user of its own.
"""

from __future__ import annotations

import asyncio
import pickle
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vault.config import NodeSettings, RegionsConfig
from vault.keys import OpenBaoCredential


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build the same vault as the first one."""

    regions: RegionsConfig
    settings: NodeSettings
    openbao_token: OpenBaoCredential
    eraser_token: OpenBaoCredential | None
    policy_file: Path
    admin_credential_file: Path | None
    serve_regions: frozenset[str] | None


class Workers:
    """The extra worker processes of a node (the first worker is the caller)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, spec: WorkerSpec, count: int, timeout: float = 120.0) -> None:
        """Starts ``count`` workers on ``spec.settings.port`` and waits until each
        listens; raises RuntimeError (after stopping them) if one does not."""
        from vault.cli._five import _die_with_parent

        payload = pickle.dumps(spec)
        for _ in range(count):
            proc = subprocess.Popen(
                [sys.executable, "-m", "vault.cli._workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches the first worker, which stops these
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
            self.procs.append(proc)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            wait = max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([proc.stdout], [], [], wait)
            # "ready\n" once it listens; "" if it died first.
            if not ready or proc.stdout.readline().strip() != b"ready":
                code = proc.poll()
                self.stop()
                why = "timeout" if code is None else f"exit {code}"
                raise RuntimeError(f"a worker process did not start ({why}; see its log above)")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def _serve(spec: WorkerSpec) -> int:
    from vault.policy import load_policy
    from vault.server import VaultServer, build_vault

    vault = build_vault(
        spec.regions,
        spec.settings,
        openbao_token=spec.openbao_token,
        eraser_token=spec.eraser_token,
        policy=load_policy(spec.policy_file),
        admin_credential_file=spec.admin_credential_file,
        serve_regions=spec.serve_regions,
    )
    server = VaultServer(vault, spec.settings)
    try:
        await server.start()
    except BaseException:
        vault.close()
        raise
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5.0)
    return 0


def main() -> int:  # pragma: no cover - runs in the worker process
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # stdin is the pipe the parent process created for this child; nothing
    # else can write to it, so what is unpickled is the parent's own WorkerSpec.
    spec = pickle.loads(sys.stdin.buffer.read())  # noqa: S301
    if not isinstance(spec, WorkerSpec):
        return 2
    return asyncio.run(_serve(spec))


if __name__ == "__main__":  # pragma: no cover
    # Through the package, not this __main__ copy: the pickled WorkerSpec is
    # vault.cli._workers.WorkerSpec.
    from vault.cli._workers import main as _main

    sys.exit(_main())

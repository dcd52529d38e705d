"""``pdvault up --workers 2``: two server processes on one port (SO_REUSEPORT),
each with its own caches, one vault: an erasure through one worker is refused
by the other at once, whatever its data-key cache holds."""

from __future__ import annotations

from pathlib import Path

import grpc
import psutil
import pytest

from tests.integration.conftest import PdvaultUp
from vault.client import VaultClient, VaultClientError

pytestmark = pytest.mark.integration

#: Every client its own TCP connection (grpc shares connections between
#: channels to one target otherwise), so that the kernel spreads them over
#: the workers.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


def _connections(pid: int, port: int) -> int:
    """Established connections to ``port`` accepted by the process ``pid``."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port
    )


def test_erasure_through_one_worker_is_refused_by_every_other_at_once(tmp_path: Path) -> None:
    up = PdvaultUp(tmp_path / "data", tmp_path / "up.log", "--workers", "2")
    clients: list[VaultClient] = []
    try:
        workers = [
            p for p in psutil.Process(up.proc.pid).children() if "vault.cli._workers" in p.cmdline()
        ]
        assert len(workers) == 1, "--workers 2: the first process and one more"
        pids = [up.proc.pid, workers[0].pid]
        port = int(up.target.rsplit(":", 1)[1])
        token = up.token(
            "--purpose",
            "essential.subject_rights",
            "--categories",
            "user.name",
            "--ops",
            "read,write,erase",
        )
        clients = [VaultClient(up.target, token=token, options=OWN_CONNECTION) for _ in range(16)]
        s = clients[0].create_subject("DE")
        r = clients[0].put_record(s.subject_id, "user.name", {"first": "Ada"})
        for c in clients:  # every worker reads it: its data key is in each one's cache
            assert c.get_record(r.record_id).fields == {"first": "Ada"}
        per_worker = [_connections(pid, port) for pid in pids]
        assert all(per_worker), f"connections per worker {per_worker}: one worker got none"

        clients[0].erase_subject(s.subject_id)
        for c in clients:  # at once: no wait, no retry
            with pytest.raises(VaultClientError) as e:
                c.get_record(r.record_id)
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(VaultClientError) as e:
                c.list_records(s.subject_id)
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        for c in clients:
            c.close()
        assert up.stop() == 0
    assert not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids[1:]
    )

"""PostgreSQL restarted under load: a cluster of this test's own (initdb in a
temporary directory, so the machine's shared server is never touched) holds
the ``de`` cell; writes run in the background while the cluster is stopped
the hard way (``pg_ctl stop -m immediate``: no shutdown checkpoint, as a
crash) and started again.

While it is down every write fails closed (``UNAVAILABLE``, nothing half
written); once it is back the node serves again without a restart; every
write it acknowledged reads back as written (lost = 0), and every record in
the database opens (no row of a failed write left behind).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.conftest import Bao, start_stack
from tests.fault_tally import TALLY
from vault.client import VaultClient, VaultClientError

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pg_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists() and (root / "pg_ctl").exists():
            return root
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class OwnPostgres:
    """A PostgreSQL cluster in ``base`` on a free loopback port, trust auth.

    initdb refuses to run as root: as root, the cluster belongs to the
    ``postgres`` user and its commands run as that user (runuser)."""

    def __init__(self, bin_dir: Path, base: Path) -> None:
        self.bin = bin_dir
        self.data = base / "pgdata"
        self.log = base / "pg.log"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(base, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._run(
            "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "pdvault_de"
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/pdvault_de"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{tool}: {done.stderr.strip()}"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def crash(self) -> None:
        """Stops the server at once: connections cut, no shutdown checkpoint."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"],
            capture_output=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    bin_dir = _pg_bin()
    if bin_dir is None:  # pragma: no cover - the machine has PostgreSQL's server
        pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl) are required")
    # Not under pytest's temporary root: that is private to this user, and the
    # cluster may belong to another (see OwnPostgres).
    base = Path(tempfile.mkdtemp(prefix="pdvault-pg-"))
    try:
        pg = OwnPostgres(bin_dir, base)
        try:
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Writes:
    """PutRecord in the background, every answer kept."""

    def __init__(self, client: VaultClient, subject: str) -> None:
        self.client, self.subject = client, subject
        self.acked: dict[str, str] = {}
        self.refused: list[grpc.StatusCode] = []
        self.done_after_return = 0
        self.back = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            value = f"write-{i}"
            try:
                rid = self.client.put_record(self.subject, "user.name", {"first": value}).record_id
                self.acked[rid] = value
                if self.back.is_set():
                    self.done_after_return += 1
            except VaultClientError as e:
                self.refused.append(e.code)
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def test_postgresql_restarted_under_load_fails_closed_and_loses_no_write(
    bao: Bao, tmp_path: Path, own_postgres: OwnPostgres
) -> None:
    stack = start_stack(
        bao, tmp_path, database_urls={"de": own_postgres.url}, health_probe_seconds=3600
    )
    try:
        c = stack.client(stack.issue("essential.subject_rights"))
        subject = c.create_subject("DE").subject_id
        writes = Writes(c, subject)
        time.sleep(1.0)
        acked_before = len(writes.acked)
        own_postgres.crash()
        time.sleep(1.5)  # writes keep coming while it is down
        with pytest.raises(VaultClientError) as down:
            c.put_record(subject, "user.name", {"first": "while-down"})
        assert down.value.code == grpc.StatusCode.UNAVAILABLE
        assert "127.0.0.1" not in down.value.message
        own_postgres.start()
        writes.back.set()
        deadline = time.monotonic() + 30
        while writes.done_after_return < 20:
            assert time.monotonic() < deadline, "the node did not serve again by itself"
            time.sleep(0.1)
        writes.stop()

        assert acked_before > 0 and writes.refused, "the load did not span the restart"
        assert set(writes.refused) <= {grpc.StatusCode.UNAVAILABLE}, writes.refused
        # Every acknowledged write reads back as written.
        lost = sum(1 for rid, v in writes.acked.items() if c.get_record(rid).fields["first"] != v)
        # Every record the database holds opens: no row of a failed write.
        engine = stack.vault.parts.stores["de"].engine
        with engine.connect() as conn:
            stored = [str(r[0]) for r in conn.execute(text("SELECT id FROM records"))]
        for rid in stored:
            assert c.get_record(rid).subject_id == subject
        assert set(writes.acked) <= set(stored)
        TALLY.fault("PostgreSQL restarted under load (immediate stop)")
        TALLY.acknowledged_writes += len(writes.acked)
        TALLY.acknowledged_lost += lost
        assert lost == 0
    finally:
        stack.stop()

"""`pdvault up` as a user runs it: a real process, started, stopped and started again."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import PdvaultUp
from vault.client import VaultClient
from vault.tokens import signed_kid

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _bao_processes(data_dir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if "server" in line and str(data_dir) in line and "bao" in line
    ]


def test_up_serves_stops_cleanly_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "pdv"
    up = PdvaultUp(data_dir, tmp_path / "up.log")
    try:
        with grpc.insecure_channel(up.target) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        token = up.token(
            "--purpose",
            "essential.service",
            "--categories",
            "user.contact.email",
            "--ops",
            "read,write",
        )
        with VaultClient(up.target, token=token) as c:
            written = {}
            for country in ("DE", "US", "CN", "RU", "SG"):
                s = c.create_subject(country)
                r = c.put_record(
                    s.subject_id, "user.contact.email", {"address": f"{country}@example.org"}
                )
                written[r.record_id] = (s.subject_id, f"{country}@example.org")
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert "pdvault: stopped" in up.output
    # No TLS flags on loopback: plaintext, and said so loudly (banner and log).
    assert up.output.count("INSECURE: local development only, plaintext on loopback") == 2
    assert _bao_processes(data_dir) == [], "OpenBao outlived pdvault up"

    unseal = data_dir / "openbao" / "LOCAL-ONLY-unseal.json"
    assert unseal.stat().st_mode & 0o777 == 0o600
    assert "LOCAL DEVELOPMENT ONLY" in unseal.read_text()

    up = PdvaultUp(data_dir, tmp_path / "up.log")
    try:
        # The signing key was unwrapped again through OpenBao: old tokens still verify.
        with VaultClient(up.target, token=token) as c:
            for rid, (sid, address) in written.items():
                got = c.get_record(rid)
                assert got.subject_id == sid and got.fields["address"] == address
        demo = subprocess.run(
            [sys.executable, "-m", "vault.cli", "demo", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "CONSENT_REQUIRED" in demo.stdout and "verified offline" in demo.stdout
        assert "the key no longer exists" in demo.stdout
        assert "7. Key rotation" in demo.stdout and "still verified" in demo.stdout

        # Signing key rotation against the running node: no restart.
        rotated = _cli("token", "rotate-key", "--data-dir", str(data_dir))
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        new_kid = rotated.stdout.split("new signing key: ")[1].split()[0]
        history = _cli("receipt", "keys", "--data-dir", str(data_dir))
        assert history.returncode == 0, history.stderr
        assert new_kid in history.stdout and "chain verified" in history.stdout
        deadline = time.monotonic() + 10
        while signed_kid(fresh := up.token(*ISSUE)) != new_kid:
            assert time.monotonic() < deadline, "the node still signs with the old key"
            time.sleep(0.2)
        for t in (token, fresh):  # the old token stays valid until it expires
            with VaultClient(up.target, token=t) as c:
                assert c.get_record(next(iter(written))).subject_id

        # Subject key rotation of one region, then the status of every region.
        rotate = _cli(
            "keys", "rotate", "--region", "de", "--rate", "50/s", "--data-dir", str(data_dir)
        )
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        assert re.search(r"^de: [1-9]\d* rotated, .* 0 failed", rotate.stdout), rotate.stdout
        assert "finished" in rotate.stdout
        status = _cli("keys", "status", "--data-dir", str(data_dir))
        assert status.returncode == 0, status.stderr
        de = next(line for line in status.stdout.splitlines() if line.startswith("de "))
        assert "100.0%" in de and "v2..v2" in de, status.stdout
        assert "receipt key history: 3 key(s)" in status.stdout  # demo, then here
        assert "lookup index key: v1 (age" in status.stdout, status.stdout
        # Blind-index re-index of de while the node serves (the demo's lookups):
        # a new index key version, the old one retired; counts only in the output.
        reindex = _cli(
            "keys", "reindex", "--region", "de", "--rate", "50/s", "--data-dir", str(data_dir)
        )
        assert reindex.returncode == 0, reindex.stdout + reindex.stderr
        assert "de: index key v1 -> v2" in reindex.stdout, reindex.stdout
        assert "v1 retired" in reindex.stdout
        assert "@" not in reindex.stdout + reindex.stderr
        status = _cli("keys", "status", "--data-dir", str(data_dir))
        assert "lookup index key: v2 (age" in status.stdout, status.stdout
        with VaultClient(up.target, token=fresh) as c:  # every record still opens
            for rid, (_, address) in written.items():
                assert c.get_record(rid).fields["address"] == address
        # It ends with the audit verified and Ada's access report.
        assert "pdvault audit verify" in demo.stdout and "FAILED:" not in demo.stdout
        assert "Ada's access report" in demo.stdout and "SUBJECT_ERASED" in demo.stdout
    finally:
        assert up.stop() == 0


ISSUE = ("--purpose", "essential.service", "--categories", "user.contact.email", "--ops", "read")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vault.cli", *args], capture_output=True, text=True, timeout=60
    )


def test_second_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    up = PdvaultUp(tmp_path / "pdv", tmp_path / "up.log")
    try:
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "vault.cli",
                "up",
                "--data-dir",
                str(tmp_path / "pdv"),
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert "already using" in second.stderr
    finally:
        assert up.stop() == 0

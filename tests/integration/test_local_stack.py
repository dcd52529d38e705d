"""`pdvault up` as a user runs it: a real process, started, stopped and started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vault.client import VaultClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Up:
    def __init__(self, data_dir: Path, *flags: str) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "vault.cli", "up"),
                *("--data-dir", str(data_dir), "--port", "0", *flags),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.output: list[str] = []
        deadline = time.monotonic() + 90
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            m = re.search(r"endpoint\s+((?:grpcs://)?127\.0\.0\.1:\d+)", line)
            if m:
                self.target = m.group(1)
            if "Stop with Ctrl-C." in line:  # the banner is read whole
                return
        self.proc.kill()
        raise AssertionError("pdvault up did not start:\n" + "".join(self.output))

    def token(self, *flags: str) -> str:
        """A token issued with the CLI, as a script would (administrator credential)."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "vault.cli",
                "token",
                "issue",
                "--data-dir",
                str(self.data_dir),
                *flags,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.output.append(out)
        return self.proc.returncode


def _bao_processes(data_dir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if "server" in line and str(data_dir) in line and "bao" in line
    ]


def test_up_serves_stops_cleanly_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "pdv"
    up = Up(data_dir)
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
    assert code == 0, "".join(up.output)
    assert "pdvault: stopped" in "".join(up.output)
    # No TLS flags on loopback: plaintext, and said so loudly (banner and log).
    assert "".join(up.output).count("INSECURE: local development only, plaintext on loopback") == 2
    assert _bao_processes(data_dir) == [], "OpenBao outlived pdvault up"

    unseal = data_dir / "openbao" / "LOCAL-ONLY-unseal.json"
    assert unseal.stat().st_mode & 0o777 == 0o600
    assert "LOCAL DEVELOPMENT ONLY" in unseal.read_text()

    up = Up(data_dir)
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
    finally:
        assert up.stop() == 0


def test_second_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    up = Up(tmp_path / "pdv")
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

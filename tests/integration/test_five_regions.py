"""`pdvault up --regions-mode five` as a user runs it: five node processes,
one OpenBao, mutual TLS, forwarding and the transfer rules between real
processes; stopped, nothing is left running."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import PdvaultUp
from vault.client import VaultClient, VaultClientError
from vault.config import load_regions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGIONS = ("cn", "us", "de", "ru", "sg")


def _processes(data_dir: Path) -> list[str]:
    """`bao server` and `pdvault serve` processes of this data dir."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [
        line
        for line in out.splitlines()
        if str(data_dir) in line and ("bao server" in line or " serve --region" in line)
    ]


def _ids(db: Path, table: str) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute(f"select id from {table}")}
    finally:
        con.close()


def test_five_region_topology_serves_forwards_follows_the_rules_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "pdv"
    up = PdvaultUp(data_dir, tmp_path / "up.log", "--regions-mode", "five")
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        assert sorted(endpoints) == sorted(REGIONS)
        assert up.target == endpoints["de"] == (data_dir / "endpoint").read_text().strip()
        pki = data_dir / "pki"
        for key in pki.glob("*-key.pem"):
            assert key.stat().st_mode & 0o777 == 0o600, key
        tls = {
            "ca": (pki / "ca.pem").read_bytes(),
            "cert": (pki / "client.pem").read_bytes(),
            "key": (pki / "client-key.pem").read_bytes(),
        }
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls["ca"], private_key=tls["key"], certificate_chain=tls["cert"]
        )
        for region, endpoint in endpoints.items():
            with grpc.secure_channel(endpoint.removeprefix("grpcs://"), creds) as ch:
                status = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
                assert status.status == health_pb2.HealthCheckResponse.SERVING, region
        # Without a client certificate the handshake is refused.
        with (
            grpc.secure_channel(
                endpoints["us"].removeprefix("grpcs://"),
                grpc.ssl_channel_credentials(root_certificates=tls["ca"]),
            ) as ch,
            pytest.raises(grpc.RpcError),
        ):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)

        # The CLI finds the entry node and the data dir's TLS files by itself.
        flags = ("--purpose", "essential.service", "--categories", "user.name")
        plain = up.token(*flags, "--ops", "read,write")
        scc = up.token(*flags, "--ops", "read", "--transfer-basis", "scc")

        def client(region: str, token: str) -> VaultClient:
            return VaultClient(endpoints[region], token=token, timeout=15, **tls)

        with client("de", plain) as via_de:
            bob = via_de.create_subject("US")  # no lookups: nothing personal crosses
        assert bob.region == "us" and bob.subject_id.startswith("us_sub_")
        cells = data_dir / "cells"
        holders = [r for r in REGIONS if bob.subject_id in _ids(cells / f"{r}.db", "subjects")]
        assert holders == ["us"]

        with client("us", plain) as at_home:
            rec = at_home.put_record(bob.subject_id, "user.name", {"first": "Bob"})
        rules = load_regions(
            data_dir / "five" / "regions.yaml", data_dir=str(data_dir), openbao_addr="-"
        ).transfers
        for entry in ("de", "sg", "ru"):
            for basis, token in ((None, plain), ("scc", scc)):
                d = rules.decide("us", entry, basis, "essential.service", "user.name")
                with client(entry, token) as c:
                    if d.allowed:
                        assert c.get_record(rec.record_id).fields == {"first": "Bob"}
                    else:
                        with pytest.raises(VaultClientError) as e:
                            c.get_record(rec.record_id)
                        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
                        assert e.value.reason == d.reason and d.rule in e.value.message
        # Both outcomes were exercised: us -> de under scc is allowed, without a basis not.
        assert rules.decide("us", "de", "scc", "essential.service", "user.name").allowed
        assert not rules.decide("us", "de", None, "essential.service", "user.name").allowed
        assert holders == [
            r for r in REGIONS if rec.record_id in _ids(cells / f"{r}.db", "records")
        ]

        demo = subprocess.run(
            [sys.executable, "-m", "vault.cli", "demo", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "read through another region's node, for real" in demo.stdout
        assert "TRANSFER_BASIS_MISSING" in demo.stdout and "de->us:scc" in demo.stdout
        assert "pdvault audit verify" in demo.stdout and "FAILED:" not in demo.stdout
        assert "verified offline" in demo.stdout
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert "pdvault: stopped" in up.output
    assert _processes(data_dir) == [], "a node or OpenBao outlived pdvault up"
    logs = "".join(p.read_text() for p in (data_dir / "five" / "logs").glob("*.log"))
    assert "Bob" not in logs and "Lovelace" not in logs and "v4.public." not in logs

    # Started again: the same data, new ports, the old tokens still verify;
    # the node flags of `pdvault up` reach every node.
    logs_before = {p.name: p.stat().st_size for p in (data_dir / "five" / "logs").glob("*.log")}
    up = PdvaultUp(
        data_dir,
        tmp_path / "up.log",
        *("--regions-mode", "five", "--log-format", "json"),
        *("--metrics-port", "0", "--audit-batch-ms", "3"),
    )
    try:
        endpoints = json.loads((data_dir / "endpoints.json").read_text())
        with client("de", scc) as via_de:
            assert via_de.get_record(rec.record_id).fields == {"first": "Bob"}
        assert "metrics      each node on a free port" in up.output
        for region in REGIONS:
            log = data_dir / "five" / "logs" / f"{region}.log"
            text = log.read_bytes()[logs_before[log.name] :].decode()
            lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            served = [x for x in lines if x["msg"].startswith("metrics on http://")]
            assert served, (region, text[-2000:])
            port = int(served[0]["msg"].rsplit(":", 1)[1].split("/")[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                body = r.read().decode()
            assert "pdvault_grpc_requests_total" in body, region
            if region in ("de", "us"):
                # The forwarded read, counted where it entered and where it was served.
                counted = [
                    line
                    for line in body.splitlines()
                    if line.startswith("pdvault_grpc_requests_total{")
                    and 'method="GetRecord"' in line
                    and 'code="OK"' in line
                ]
                assert counted, region
    finally:
        assert up.stop() == 0
    assert _processes(data_dir) == []

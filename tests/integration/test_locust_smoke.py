"""The locust load test as an SRE runs it: a real ``pdvault up``, locust headless.

The mix must run without a single failure and exercise every operation. Its
latencies are printed, not gated: this machine's two cores are shared, and the
SLO gate (loadtests/slo.yaml) is for the reference setup at rest.

locust monkey-patches the standard library with gevent when it is imported, so
it only ever runs here as a subprocess, never inside pytest.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import files_containing
from tests.integration.conftest import PdvaultUp
from vault.devstack import UNSEAL_FILE
from vault.tokens.authority import ensure_admin_credential

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
#: The RPCs of the default mix: read, write, create (CreateSubject + PutRecord), erase.
MIX = ("GetRecord", "PutRecord", "CreateSubject", "EraseSubject")


def test_locust_mix_runs_without_failures(tmp_path: Path) -> None:
    data_dir = tmp_path / "pdv"
    up = PdvaultUp(data_dir, tmp_path / "pdvault-up.log")
    try:
        env = {**os.environ, "PDVAULT_DATA_DIR": str(data_dir)}
        env.pop("PDVAULT_TOKEN", None)  # the locustfile issues its own with the admin credential
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--users",
                "4",
                "--spawn-rate",
                "4",
                "--run-time",
                "15s",
                "--host",
                up.target,
                "--csv",
                str(tmp_path / "run"),
                "--only-summary",
                "--pdv-subjects",
                "50",
                "--pdv-slo",
                "none",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        report = run.stderr[-6000:]
        assert run.returncode == 0, f"locust exited {run.returncode}:\n{report}"

        with (tmp_path / "run_stats.csv").open(newline="") as f:
            rows = {row["Name"]: row for row in csv.DictReader(f)}
        for name in (*MIX, "Aggregated"):
            if name in rows:
                r = rows[name]
                print(
                    f"{name}: {r['Request Count']} requests, {r['Failure Count']} failures, "
                    f"p50 {r['50%']} ms, p99 {r['99%']} ms"
                )
        for rpc in MIX:
            assert rpc in rows, f"{rpc} was never called:\n{report}"
            assert int(rows[rpc]["Request Count"]) > 0, rpc
        total = rows["Aggregated"]
        assert int(total["Request Count"]) >= 100, report
        assert int(total["Failure Count"]) == 0, (tmp_path / "run_failures.csv").read_text()
    finally:
        code = up.stop()
    assert code == 0, up.output[-6000:]
    # No log of the run (the node's, locust's) holds a token, a credential or a key.
    (tmp_path / "locust.log").write_text(run.stdout + run.stderr)
    unseal = json.loads((data_dir / "openbao" / UNSEAL_FILE).read_text())
    secrets = [ensure_admin_credential(data_dir), unseal["root_token"], unseal["unseal_key"]]
    logs = [tmp_path / "pdvault-up.log", tmp_path / "locust.log"]
    assert files_containing(logs, *secrets, "v4.public.", "vault:v1:") == []

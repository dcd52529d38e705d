"""``pdvault serve --region R``: one node, one region, a credential for R's mounts only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
import yaml

from tests.conftest import Bao
from tests.integration._mesh import free_port
from vault.client import VaultClient, VaultClientError
from vault.devstack import node_policy
from vault.errors import KeyServiceUnavailable
from vault.keys import KeyRef, TransitKeyProvider
from vault.tokens.authority import ensure_admin_credential

pytestmark = pytest.mark.integration


def region_token(bao: Bao, region: str) -> str:
    """An OpenBao token that can use only ``region``'s Transit mount (and the
    control mount's signing key): the HCL `pdvault serve` documents."""
    root = bao.root()
    name = f"pdvault-node-{region}"
    root.sys.create_or_update_policy(name, node_policy([f"transit-{region}"], "transit-control"))
    created = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")
    return str(created["auth"]["client_token"])


def test_a_region_limited_openbao_token_is_refused_on_another_regions_mount(bao: Bao) -> None:
    keys = TransitKeyProvider.connect(bao.address, region_token(bao, "de"))
    name = f"subject-test-{uuid.uuid4().hex}"
    keys.create_key(KeyRef("transit-de", name))
    assert keys.wrap(KeyRef("transit-de", name), b"k" * 32, b"ad")
    for other in ("transit-us", "transit-ru", "transit-cn", "transit-sg"):
        with pytest.raises(KeyServiceUnavailable, match="permission"):
            keys.create_key(KeyRef(other, name))


def test_pdvault_serve_serves_its_region_and_forwards_the_others(bao: Bao, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    raw = yaml.safe_load(Path(bao.regions_template).read_text())
    for r in raw["regions"]:
        r["endpoint"] = f"127.0.0.1:{free_port()}"  # nobody listens for the other regions
    (config / "regions.yaml").write_text(yaml.safe_dump(raw))
    data_dir = tmp_path / "data"
    admin = ensure_admin_credential(data_dir)
    token_file = tmp_path / "bao-token"
    token_file.write_text(region_token(bao, "de"))
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "vault.cli", "serve", "--region", "de"),
            *("--config", str(config), "--data-dir", str(data_dir), "--port", "0"),
            *("--openbao-token-file", str(token_file), "--openbao-addr", bao.address),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "BAO_TOKEN"} | {"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        target = None
        output = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and target is None:
            line = proc.stdout.readline()
            if not line:
                break
            output.append(line)
            m = re.search(r"serving region de on (127\.0\.0\.1:\d+)", line)
            target = m.group(1) if m else None
        assert target, "".join(output)
        with VaultClient(target, token=admin) as a:
            token = a.issue_token(
                service="svc",
                purpose="essential.service",
                categories=["user.name"],
                operations=["read", "write"],
                regions=["de", "us"],
            ).token
        with VaultClient(target, token=token) as c:
            sid = c.create_subject("DE").subject_id
            rec = c.put_record(sid, "user.name", {"first": "Ada"})
            assert c.get_record(rec.record_id).fields == {"first": "Ada"}
            with pytest.raises(VaultClientError) as e:
                c.create_subject("US")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert e.value.reason == "REGION_UNAVAILABLE"
        assert (data_dir / "cells" / "de.db").exists()
        assert not (data_dir / "cells" / "us.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0

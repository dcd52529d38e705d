"""A three-node OpenBao raft cluster on loopback, with TLS, under a real node.

The cluster runs deploy/openbao/raft-node.hcl, rendered for three nodes as
envsubst would render it. The vault is given all three addresses
(``openbao.address`` with commas) and its AppRole logins; it writes through
the cluster while the leader is killed (SIGKILL). While the survivors elect a
new leader the writes fail closed (UNAVAILABLE, nothing half-written); then
they resume by themselves, and every write that was acknowledged is read back
by a fresh node (empty caches) after the election: none was lost.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hvac
import pytest
import requests

from tests.conftest import Bao, Stack, start_stack
from tests.integration._mesh import free_port
from vault.client import VaultClientError
from vault.config import load_regions
from vault.devpki import ensure_local_pki
from vault.devstack import Provisioner, bao_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "openbao" / "raft-node.hcl"


def envsubst(text: str, env: dict[str, str]) -> str:
    """``${VAR}`` replaced as envsubst does; an unset variable is an error here."""

    def value(m: re.Match[str]) -> str:
        return env[m.group(1)]

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", value, text)


@dataclass
class Node:
    node_id: str
    api: int
    cluster: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api}"


@dataclass
class Cluster:
    nodes: list[Node]
    ca: Path
    root_token: str = ""
    unseal_key: str = ""
    clients: dict[tuple[int, str | None, float], hvac.Client] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """All three, as a regions file lists them."""
        return ",".join(n.url for n in self.nodes)

    def client(self, node: Node, token: str | None = None, timeout: float = 5) -> hvac.Client:
        key = (node.api, token, timeout)
        if key not in self.clients:
            self.clients[key] = hvac.Client(
                url=node.url, token=token, verify=str(self.ca), timeout=timeout
            )
        return self.clients[key]

    def start(self, node: Node) -> None:
        log = open(node.dir / "bao.log", "ab")  # noqa: SIM115 - owned by the child
        node.proc = subprocess.Popen(
            [bao_binary(), "server", f"-config={node.dir / 'server.hcl'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def kill(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    def stop(self) -> None:
        for c in self.clients.values():
            c.adapter.close()
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.terminate()
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait()

    def leader(self) -> Node | None:
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            with contextlib.suppress(requests.RequestException, ValueError):
                health = requests.get(f"{n.url}/v1/sys/health", verify=str(self.ca), timeout=2)
                if health.status_code == 200:
                    return n
        return None

    def voters(self) -> int:
        leader = self.leader()
        if leader is None:
            return 0
        config = self.client(leader, self.root_token).read("sys/storage/raft/configuration")
        return sum(1 for s in config["data"]["config"]["servers"] if s["voter"])


def _wait(what: str, check: object, timeout: float, detail: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.2)
    more = f": {detail()}" if callable(detail) else ""
    raise AssertionError(f"timed out waiting for {what}{more}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    pki = ensure_local_pki(tmp_path / "pki", {"de": "pdvault-node.de"})
    nodes = [
        Node(f"openbao-de-{i}", free_port(), free_port(), tmp_path / f"openbao-{i}")
        for i in (1, 2, 3)
    ]
    c = Cluster(nodes, pki.ca)
    template = TEMPLATE.read_text()
    cert, key = pki.server("de")  # issued for 127.0.0.1 by the test CA
    for n in nodes:
        tls = n.dir / "tls"
        tls.mkdir(parents=True)
        (n.dir / "raft").mkdir()
        shutil.copy(cert, tls / "tls.crt")
        shutil.copy(key, tls / "tls.key")
        shutil.copy(pki.ca, tls / "ca.crt")
        env = {
            "BAO_NODE_ID": n.node_id,
            "BAO_NODE_HOST": "127.0.0.1",
            "BAO_LISTEN": "127.0.0.1",
            "BAO_API_PORT": str(n.api),
            "BAO_CLUSTER_PORT": str(n.cluster),
            "BAO_DATA_DIR": str(n.dir / "raft"),
            "BAO_TLS_DIR": str(tls),
            **{f"BAO_PEER_{i + 1}": f"127.0.0.1:{m.api}" for i, m in enumerate(nodes)},
        }
        config = envsubst(template, env)
        # Raft's timing at 1 rather than the production default (5): an election
        # in about a second instead of five or more; nothing else differs.
        assert config.count('storage "raft" {\n') == 1
        config = config.replace(
            'storage "raft" {\n', 'storage "raft" {\n  performance_multiplier = 1\n'
        )
        (n.dir / "server.hcl").write_text(config)
    try:
        for n in nodes:
            c.start(n)
        for n in nodes:
            _wait(
                f"{n.node_id} listening",
                lambda n=n: c.client(n).sys.read_health_status(method="GET") is not None,
                30,
            )
        first = c.client(nodes[0], timeout=60)  # initialising writes the raft bootstrap
        init = first.sys.initialize(secret_shares=1, secret_threshold=1)
        c.root_token, c.unseal_key = init["root_token"], init["keys_base64"][0]
        first.sys.submit_unseal_key(c.unseal_key)
        _wait("a leader", lambda: c.leader() is nodes[0], 30)
        # Promote joining nodes to voters after 1 s of health instead of 10 s.
        c.client(nodes[0], c.root_token).write(
            "sys/storage/raft/autopilot/configuration", server_stabilization_time="1s"
        )
        for n in nodes[1:]:
            # retry_join joins the leader once the node has the unseal key.
            _wait(
                f"{n.node_id} unsealed",
                lambda n=n: not c.client(n).sys.submit_unseal_key(c.unseal_key)["sealed"],
                30,
            )
        _wait("three voters", lambda: c.voters() == 3, 40)
        yield c
    finally:
        c.stop()


@dataclass
class Load:
    """Writers creating subjects and records through the node, in threads."""

    stack: Stack
    token: str
    acknowledged: dict[str, str] = field(default_factory=dict)
    failures: list[tuple[float, grpc.StatusCode]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    successes: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self, since: float) -> str:
        with self.lock:
            ok = [round(t - since, 1) for t in self.successes if t > since]
            failed = [(round(t - since, 1), c.name) for t, c in self.failures if t > since]
            reasons = sorted(set(self.reasons))
        return f"successes after the kill at {ok[-30:]}, failures at {failed[-30:]} ({reasons})"

    def resumed(self, since: float, count: int = 10) -> bool:
        """Did writes fail after ``since``, and then succeed ``count`` times?"""
        with self.lock:
            failed = [t for t, _ in self.failures if t > since]
            return bool(failed) and sum(1 for t in self.successes if t > min(failed)) >= count

    def writer(self, w: int) -> None:
        client = self.stack.client(self.token)
        i = 0
        while not self.stop.is_set():
            i += 1
            value = f"w{w}-{i}@example.org"
            try:
                sid = client.create_subject("DE").subject_id
                rid = client.put_record(sid, "user.contact.email", {"address": value}).record_id
            except VaultClientError as e:
                with self.lock:
                    self.failures.append((time.monotonic(), e.code))
                    self.reasons.append(f"{e.reason}: {e}")
                time.sleep(0.05)
                continue
            with self.lock:
                self.acknowledged[rid] = value
                self.successes.append(time.monotonic())


def test_writes_fail_closed_while_the_leader_is_replaced_and_none_acknowledged_is_lost(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node trusts the cluster's CA as a production node does (REQUESTS_CA_BUNDLE).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cluster.ca))
    leader = cluster.leader()
    assert leader is cluster.nodes[0]  # first in the address list: the node must move on
    regions = load_regions(data_dir=str(tmp_path), openbao_addr=cluster.address)
    creds = Provisioner(cluster.client(leader, cluster.root_token, timeout=30)).configure(regions)

    def login(role: object) -> str:
        resp = cluster.client(leader).auth.approle.login(
            role_id=role.role_id,  # type: ignore[attr-defined]
            secret_id=role.secret_id,  # type: ignore[attr-defined]
        )
        return str(resp["auth"]["client_token"])

    bao = Bao(cluster, Path(regions.source), login(creds.node), login(creds.eraser), Path())  # type: ignore[arg-type]
    data_dir = tmp_path / "node"
    stack = start_stack(bao, data_dir)
    try:
        load = Load(stack, stack.issue(categories=["user.contact.email"], ops=["read", "write"]))
        writers = [threading.Thread(target=load.writer, args=(w,)) for w in range(4)]
        for t in writers:
            t.start()
        try:
            _wait("writes before the kill", lambda: len(load.successes) >= 10, 30)
            killed_at = time.monotonic()
            cluster.kill(leader)
            # Until the survivors have a leader, writes fail; then they resume alone.
            _wait(
                "writes failing, then resuming",
                lambda: load.resumed(killed_at),
                60,
                lambda: load.summary(killed_at) + f"; leader {cluster.leader()}",
            )
        finally:
            load.stop.set()
            for t in writers:
                t.join(30)
        new_leader = cluster.leader()
        assert new_leader is not None and new_leader is not leader
        codes = {code for _, code in load.failures}
        assert codes == {grpc.StatusCode.UNAVAILABLE}, codes  # fail closed, nothing else
        assert any(s < killed_at for s in load.successes)
        assert any(f > killed_at for f, _ in load.failures)
        acknowledged = dict(load.acknowledged)
    finally:
        stack.stop()

    # A fresh node on the same data (no data-key cache) reads every acknowledged
    # write back: the keys the cluster acknowledged survived the leader.
    fresh = start_stack(bao, data_dir)
    try:
        reader = fresh.client(fresh.issue(categories=["user.contact.email"], ops=["read"]))
        for rid, value in acknowledged.items():
            assert reader.get_record(rid).fields == {"address": value}
    finally:
        fresh.stop()

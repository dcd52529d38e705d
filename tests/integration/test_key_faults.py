"""Key-service faults under load, against a real OpenBao: sealed, frozen
(SIGSTOP) past the node's deadline, slow (a delaying proxy), and answering
503 (a proxy in front of it). OpenBao stopped outright is
tests/integration/test_key_service.py.

During each fault, with writes running in the background:

* every call that needs the key service fails closed — ``UNAVAILABLE`` (or
  the caller's ``DEADLINE_EXCEEDED``) — and writes nothing: no subject
  without its key, no key without its subject, no record of a failed write;
* subjects whose data key is cached keep being served (README: the data-key
  cache keeps OpenBao off the hot path) — reads and writes alike;
* no plaintext reaches any file of the data dir;

and once the fault is lifted the node serves every call again, without a
restart, and every write it acknowledged reads back as written.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import text

from tests.conftest import Bao, Stack, files_containing, start_stack
from tests.fault_tally import TALLY
from tests.integration.conftest import TcpProxy
from vault.client import VaultClient, VaultClientError
from vault.config import load_regions
from vault.devstack import OpenBaoServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The node gives up on a key-service call after this long (seconds).
OPENBAO_TIMEOUT = 0.75
FAILED_CLOSED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
MOUNT = "transit-de"


@dataclass
class ProxiedBao(Bao):
    """An OpenBao the node reaches through a proxy."""

    via: str = ""

    @property
    def address(self) -> str:
        return self.via


@dataclass
class Rig:
    bao: Bao
    proxy: TcpProxy
    stack: Stack
    client: VaultClient


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """An OpenBao of this module alone (it is sealed, frozen, slowed and replaced)."""
    tmp_path = tmp_path_factory.mktemp("key-faults")
    server = OpenBaoServer(tmp_path, log=False)
    server.start()
    try:
        regions = load_regions(data_dir=str(tmp_path), openbao_addr=server.address)
        creds = server.configure(regions)
        own = Bao(server, Path(regions.source), creds.node, creds.eraser, server.audit_log)
        yield from _rig(own, tmp_path)
    finally:
        server.stop()


def _rig(own_bao: Bao, tmp_path: Path) -> Iterator[Rig]:
    host, port = own_bao.server.address.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    proxy.start()
    proxied = ProxiedBao(
        own_bao.server,
        own_bao.regions_template,
        own_bao.node_token,
        own_bao.eraser_token,
        own_bao.audit_log,
        via=f"http://127.0.0.1:{proxy.port}",
    )
    stack = start_stack(proxied, tmp_path / "node", openbao_timeout=OPENBAO_TIMEOUT)
    try:
        yield Rig(own_bao, proxy, stack, stack.client())
    finally:
        stack.stop()
        proxy.stop()


def _sealed(r: Rig) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: r.bao.root().sys.seal(), r.bao.server.unseal)


def _frozen(r: Rig) -> tuple[Callable[[], None], Callable[[], None]]:
    pid = r.bao.server.pid
    assert pid is not None
    return (lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT))


def _proxy(r: Rig, delay: float = 0.0, answer_503: bool = False) -> None:
    r.proxy.delay, r.proxy.answer_503 = delay, answer_503
    r.proxy.cut()  # the node's open connections see the change at once


def _slow(r: Rig) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: _proxy(r, delay=OPENBAO_TIMEOUT * 2), lambda: _proxy(r))


def _503(r: Rig) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: _proxy(r, answer_503=True), lambda: _proxy(r))


FAULTS = {"sealed": _sealed, "frozen": _frozen, "slow": _slow, "answering 503": _503}


class Load:
    """Writes in the background: new records of a warm subject, and new subjects."""

    def __init__(self, client: VaultClient, subject: str, canary: str) -> None:
        self.client, self.subject, self.canary = client, subject, canary
        self.acked: dict[str, dict[str, str]] = {}
        self.subjects_acked: list[str] = []
        self.refused: list[grpc.StatusCode] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            fields = {"first": f"{self.canary}-{i}"}
            try:
                rid = self.client.put_record(self.subject, "user.name", fields).record_id
                self.acked[rid] = fields
                if i % 3 == 0:
                    self.subjects_acked.append(self.client.create_subject("DE").subject_id)
            except VaultClientError as e:
                self.refused.append(e.code)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _fails_closed(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(VaultClientError) as e:
        call()
    assert e.value.code in FAILED_CLOSED, e.value
    assert "127.0.0.1" not in e.value.message and "http" not in e.value.message
    return e.value.code


def _rows(stack: Stack) -> tuple[set[str], int]:
    with stack.vault.parts.stores["de"].engine.connect() as c:
        keys = {str(r[0]) for r in c.execute(text("SELECT key_name FROM subjects"))}
        records = int(c.execute(text("SELECT count(*) FROM records")).scalar_one())
    return keys, records


@pytest.mark.parametrize("fault", list(FAULTS))
def test_key_service_fault_under_load_fails_closed_and_recovers(
    rig: Rig, fault: str, canary: str
) -> None:
    c, stack = rig.client, rig.stack
    warm = c.create_subject("DE").subject_id  # its data key stays cached
    warm_rec = c.put_record(warm, "user.name", {"first": "Ada"}).record_id
    cold = c.create_subject("DE").subject_id
    cold_rec = c.put_record(cold, "user.name", {"first": "Grace"}).record_id
    stack.vault.parts.data_keys["de"].evict(cold)  # its key must come from OpenBao
    root = rig.bao.root()
    keys_before = set(root.secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"])

    load = Load(c, warm, canary)
    inject, lift = FAULTS[fault](rig)
    time.sleep(0.3)
    inject()
    try:
        time.sleep(0.2)
        subjects, _ = _rows(stack)
        codes = [
            _fails_closed(lambda: c.create_subject("DE")),
            _fails_closed(lambda: c.create_subject("DE", lookups={"email": f"{canary}@x.org"})),
            _fails_closed(lambda: c.put_record(cold, "user.name", {"first": canary})),
            _fails_closed(
                lambda: c.put_record(
                    cold, "user.name", {"first": canary}, record_id=cold_rec, expected_version=1
                )
            ),
            _fails_closed(lambda: c.get_record(cold_rec)),
        ]
        # Warm subjects are served from the data-key cache, reads and writes alike.
        assert dict(c.get_record(warm_rec).fields) == {"first": "Ada"}
        after_subjects, _ = _rows(stack)
        assert after_subjects - subjects <= set(f"subject-{s}" for s in load.subjects_acked)
        TALLY.fault(f"key service {fault}", len(codes))
    finally:
        lift()
    # Recovery without a restart.
    deadline = time.monotonic() + 30
    while True:
        try:
            assert dict(c.get_record(cold_rec).fields) == {"first": "Grace"}
            created = c.create_subject("DE").subject_id
            break
        except VaultClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    load.stop()
    assert c.get_subject(created).region == "de"
    assert load.acked, "the load wrote nothing"
    for rid, fields in load.acked.items():  # every acknowledged write reads back
        assert dict(c.get_record(rid).fields) == fields
    for sid in load.subjects_acked:
        assert c.get_subject(sid).region == "de"
    # A fault that strikes between a key's creation and its data key's wrap
    # leaves a key that guards nothing (the key service is gone for the
    # cleanup too); the node's orphan-key reaper destroys it (here at once,
    # no create being in flight any more).
    reaped = stack.vault.parts.cells["de"].reap_orphan_keys(0)
    if reaped:
        TALLY.fault(f"key service {fault}: key left between create and wrap, reaped", reaped)
    # Nothing written without its key, no key without its subject (of this node).
    subjects, _ = _rows(stack)
    keys_now = set(root.secrets.transit.list_keys(mount_point=MOUNT)["data"]["keys"])
    assert subjects <= keys_now, "a subject without its Transit key"
    orphans = {k for k in keys_now - keys_before if k.startswith("subject-")} - subjects
    assert not orphans, f"{len(orphans)} Transit key(s) without their subject"
    # No plaintext at rest.
    files = [p for p in stack.data_dir.rglob("*") if p.is_file()]
    found = files_containing(files, canary)
    TALLY.canaries(len(found))
    assert found == []

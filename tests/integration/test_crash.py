"""Crash safety of ``pdvault up``, Jepsen-set style: kill -9 under a mixed write
load, restart, and account for every write.

Each round, workers write (new subjects and new records, each with its own
idempotency key, and compare-and-set updates of one record per worker) until
the node is killed with SIGKILL at a random moment. After the restart:

* every acknowledged write reads back as written (lost = 0);
* every write in doubt (sent, never answered) is fully there or absent — an
  update shows the old version and content or the new ones, nothing between;
* retrying a write in doubt with its idempotency key answers it without
  creating a duplicate: at the end the cell holds exactly one subject per
  create request and one record per new-record request.

Erasure is killed at each of its steps (``PDVAULT_FAILPOINTS``, see
``vault/failpoints.py``): after the ledger entry, after the state change, and
after the key destruction. After the restart the erasure completes by itself,
the receipt is signed and the ledger entry complete.

CI runs one kill round under load and the two erasure steps that a restart
finishes at once; ``--long`` (or ``PDVAULT_LONG=1``) runs ten rounds and also
the kill after the key destruction, whose claim a restarted node takes over
only once it is stale (60 s).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hvac
import pytest

from tests.conftest import live_sql, long_runs
from tests.fault_tally import TALLY
from tests.integration.conftest import PdvaultUp
from vault.client import VaultClient, VaultClientError
from vault.datadir import DataDir
from vault.devstack import UNSEAL_FILE, OpenBaoServer
from vault.failpoints import ENV as FAILPOINTS
from vault.v1 import vault_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATEGORY = "user.name"
#: The erasure steps a kill interrupts (vault/failpoints.py). After the key
#: destruction the dead node's claim is taken over only once stale (60 s): long form.
STEPS_CI = ["erasure.after_ledger", "erasure.after_hide"]
STEPS_LONG = [*STEPS_CI, "erasure.after_destroy"]


@dataclass
class Op:
    """One write as the client saw it; ``acked`` False: sent, never answered."""

    kind: str  # create | put | update
    key: str = ""
    subject: str = ""
    record: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    version: int = 0  # update: the version the write would create
    acked: bool = False
    resolved: bool = False  # an update in doubt, checked after its restart


@dataclass
class Worker:
    n: int
    subject: str
    record: str
    version: int
    contents: dict[int, dict[str, str]]  # the record's content at each version
    ops: list[Op] = field(default_factory=list)


def _token(up: PdvaultUp, purpose: str, ops: str) -> str:
    """A token from the node's IssueToken with the data dir's administrator credential."""
    admin = DataDir(up.data_dir).read_admin_credential()
    with VaultClient(up.target, token=admin) as c:
        return str(
            c.issue_token(
                service="crash-test",
                purpose=purpose,
                categories=[CATEGORY],
                operations=ops.split(","),
                ttl_seconds=3600,
            ).token
        )


def _work(w: Worker, client: VaultClient, stop: threading.Event, rng: random.Random) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        roll = rng.random()
        if roll < 0.2:
            op = Op("create", key=uuid.uuid4().hex)
        elif roll < 0.6:
            op = Op("put", key=uuid.uuid4().hex, subject=w.subject)
            op.fields = {"first": f"w{w.n}-{i}", "last": uuid.uuid4().hex[:8]}
        else:
            op = Op("update", subject=w.subject, record=w.record, version=w.version + 1)
            op.fields = {"first": f"w{w.n}-v{w.version + 1}"}
            w.contents[op.version] = op.fields
        w.ops.append(op)
        try:
            if op.kind == "create":
                op.subject = client.create_subject("DE", idempotency_key=op.key).subject_id
            elif op.kind == "put":
                op.record = client.put_record(
                    w.subject, CATEGORY, op.fields, idempotency_key=op.key
                ).record_id
            else:
                client.put_record(
                    w.subject, CATEGORY, op.fields, record_id=w.record, expected_version=w.version
                )
                w.version += 1
        except VaultClientError:
            return  # the node is gone: this write is in doubt, the round is over
        op.acked = True


def _check_round(workers: list[Worker], client: VaultClient) -> tuple[int, int]:
    """Reads back every write after a restart; retries those in doubt. Returns
    (acknowledged writes checked, lost)."""
    checked = lost = 0
    for w in workers:
        for op in w.ops:
            if op.acked:
                checked += 1
                try:
                    if op.kind == "create":
                        ok = client.get_subject(op.subject).subject_id == op.subject
                    elif op.kind == "put":
                        ok = dict(client.get_record(op.record).fields) == op.fields
                    else:
                        ok = client.get_record(w.record).version >= op.version
                except VaultClientError:
                    ok = False
                lost += 0 if ok else 1
            elif op.kind == "create":  # in doubt: the retry answers, never duplicates
                op.subject = client.create_subject("DE", idempotency_key=op.key).subject_id
                op.acked = True
            elif op.kind == "put":
                op.record = client.put_record(
                    w.subject, CATEGORY, op.fields, idempotency_key=op.key
                ).record_id
                assert dict(client.get_record(op.record).fields) == op.fields
                op.acked = True
            elif not op.resolved:  # an update in doubt happened entirely or not at all
                op.resolved = True
                rec = client.get_record(w.record)
                assert rec.version in (op.version - 1, op.version), (rec.version, op.version)
                assert dict(rec.fields) == w.contents[rec.version]
                w.version = rec.version
        # The record every update went to holds the content of its version.
        rec = client.get_record(w.record)
        assert dict(rec.fields) == w.contents[rec.version]
    return checked, lost


def _erase_until_killed(up: PdvaultUp, svc: str, rights: str) -> tuple[str, str]:
    """Erases a new subject on a node started with a failpoint; the node dies."""
    with VaultClient(up.target, token=svc) as c:
        sid = c.create_subject("DE").subject_id
        rid = c.put_record(sid, CATEGORY, {"first": "Ada"}).record_id
    with VaultClient(up.target, token=rights) as c, pytest.raises(VaultClientError) as e:
        c.erase_subject(sid, reason="crash-test")
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert up.proc.wait(30) == -9  # the failpoint killed it
    TALLY.crashes += 1
    return sid, rid


def _erasure_completes(
    up: PdvaultUp, svc: str, rights: str, sid: str, rid: str, within: float
) -> None:
    """After the restart the erasure completes by itself: ledger, receipt, rows."""
    deadline = time.monotonic() + within
    while True:
        rows = live_sql(
            up.data_dir / "control.db",
            "SELECT destroyed_at IS NOT NULL, receipt IS NOT NULL FROM erasures "
            "WHERE subject_id = ?",
            sid,
        )
        if rows == [[1, 1]]:
            break
        assert time.monotonic() < deadline, f"the erasure did not complete: {rows}"
        time.sleep(0.5)
    with VaultClient(up.target, token=rights) as c:
        receipt = c.erase_subject(sid)  # idempotent: the stored, signed receipt
        assert receipt.state == pb.ERASURE_STATE_COMPLETED and receipt.signed_receipt
        assert c.get_subject(sid).state == pb.SUBJECT_STATE_ERASED
    with VaultClient(up.target, token=svc) as c, pytest.raises(VaultClientError) as gone:
        c.get_record(rid)
    assert gone.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    rows = live_sql(
        up.data_dir / "cells" / "de.db", "SELECT count(*) FROM records WHERE subject_id = ?", sid
    )
    assert rows == [[0]]
    TALLY.fault("erasure killed mid-way, completed after restart")


def test_kill_9_under_load_and_mid_erasure_loses_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = long_runs(request.config)
    rounds = 10 if long else 1
    steps = STEPS_LONG if long else STEPS_CI
    rng = random.Random(4242)
    data_dir, log = tmp_path / "pdv", tmp_path / "up.log"

    def restart(failpoint: str = "") -> PdvaultUp:
        if failpoint:
            monkeypatch.setenv(FAILPOINTS, failpoint)
        try:
            return PdvaultUp(data_dir, log)
        finally:
            monkeypatch.delenv(FAILPOINTS, raising=False)

    up = restart()
    token = _token(up, "essential.service", "read,write")
    rights = _token(up, "essential.subject_rights", "read,erase")
    workers: list[Worker] = []
    try:
        with VaultClient(up.target, token=token) as c:
            for n in range(3):
                s = c.create_subject("DE").subject_id
                r = c.put_record(s, CATEGORY, {"first": f"w{n}-v1"})
                workers.append(Worker(n, s, r.record_id, 1, {1: {"first": f"w{n}-v1"}}))
        for _ in range(rounds):
            stop = threading.Event()
            clients = [VaultClient(up.target, token=token, timeout=5) for _ in workers]
            threads = [
                threading.Thread(target=_work, args=(w, cl, stop, random.Random(rng.random())))
                for w, cl in zip(workers, clients, strict=True)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.5))
            up.proc.kill()  # kill -9
            up.proc.wait(30)
            stop.set()
            for t in threads:
                t.join(30)
            for cl in clients:
                cl.close()
            TALLY.crashes += 1
            up = restart()
            with VaultClient(up.target, token=token) as c:
                checked, lost = _check_round(workers, c)
            TALLY.acknowledged_writes += checked
            TALLY.acknowledged_lost += lost
            assert lost == 0, f"{lost} acknowledged write(s) lost"
        creates = sum(1 for w in workers for op in w.ops if op.kind == "create") + len(workers)
        puts = sum(1 for w in workers for op in w.ops if op.kind == "put") + len(workers)
        db = data_dir / "cells" / "de.db"
        # One row per request, however often it was retried.
        assert live_sql(db, "SELECT count(*) FROM subjects") == [[creates]]
        assert live_sql(db, "SELECT count(*) FROM records") == [[puts]]
        # A kill between a subject key's creation and its row's insert leaves a
        # key that guards no data (reported, not yet reaped).
        unseal = json.loads((data_dir / "openbao" / UNSEAL_FILE).read_text())
        root = hvac.Client(
            url=OpenBaoServer(data_dir, log=False).address, token=unseal["root_token"]
        )
        listed = root.secrets.transit.list_keys(mount_point="transit-de")["data"]["keys"]
        keys = {k for k in listed if k.startswith("subject-")}
        rows = {str(r[0]) for r in live_sql(db, "SELECT key_name FROM subjects")}
        assert rows <= keys, "a subject without its Transit key"
        TALLY.orphan_keys += len(keys - rows)

        # Erasure killed at each step; the restarted node completes it by itself.
        for step in steps:
            up.stop()
            up = restart(step)
            sid, rid = _erase_until_killed(up, token, rights)
            up = restart()
            # A dead node's claim (after the key destruction) is taken over once stale.
            _erasure_completes(up, token, rights, sid, rid, 90 if step in STEPS_LONG[2:] else 20)
    finally:
        up.stop()

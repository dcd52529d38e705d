"""Blind-index lookups and retention, against the real stack."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, files_containing, start_stack
from vault.client import VaultClientError

pytestmark = pytest.mark.integration

RIGHTS = "essential.subject_rights"


@pytest.fixture(scope="module")
def stack(db_stack: Stack) -> Stack:
    """Each test of this module runs on SQLite and on PostgreSQL, but for those
    that read the cell's SQLite files (``sqlite_stack``)."""
    return db_stack


def test_find_subjects_by_normalised_values_without_storing_them(sqlite_stack: Stack) -> None:
    c = sqlite_stack.client(sqlite_stack.issue("essential.subject_rights"))
    marker = f"ada.{time.time_ns()}"
    email = f"{marker}@Example.ORG"
    s = c.create_subject("DE", lookups={"email": email, "phone": "+49 (30) 1234-5678"})
    other = c.create_subject("US", lookups=[("account_id", marker)])

    assert c.find_subjects("email", f"  {marker}@example.org ", region="de") == [s.subject_id]
    assert s.subject_id in c.find_subjects("phone", "+493012345678", all_regions=True)
    assert c.find_subjects("email", email, region="us") == []
    assert c.find_subjects("account_id", marker, all_regions=True) == [other.subject_id]
    assert c.set_lookups(s.subject_id, {"email": email.upper()}) == 0  # same normalised value

    files = [p for r in ("de", "us") for p in sqlite_stack.db_path(r).parent.glob(f"{r}.db*")]
    assert files_containing(files, marker) == []

    c.erase_subject(s.subject_id)
    assert c.find_subjects("email", email, all_regions=True) == []
    with sqlite3.connect(sqlite_stack.db_path("de")) as db:
        n = db.execute("SELECT count(*) FROM lookups WHERE subject_id = ?", (s.subject_id,))
        assert n.fetchone() == (0,)


def test_bad_lookup_creates_nothing(sqlite_stack: Stack) -> None:
    c = sqlite_stack.client(sqlite_stack.issue("essential.subject_rights"))
    with sqlite3.connect(sqlite_stack.db_path("de")) as db:
        before = db.execute("SELECT count(*) FROM subjects").fetchone()
    for bad in ({"ssn": "1"}, {"email": "not-an-address"}, {"phone": "call me"}):
        with pytest.raises(VaultClientError) as e:
            c.create_subject("DE", lookups=bad)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not-an-address" not in e.value.message and "call me" not in e.value.message
    with sqlite3.connect(sqlite_stack.db_path("de")) as db:
        assert db.execute("SELECT count(*) FROM subjects").fetchone() == before


def test_subject_limited_token_finds_only_its_subjects(stack: Stack) -> None:
    c = stack.client(stack.issue("essential.subject_rights"))
    shared = f"shared-{time.time_ns()}"
    a = c.create_subject("DE", lookups={"account_id": shared})
    b = c.create_subject("DE", lookups={"account_id": shared})
    assert sorted(c.find_subjects("account_id", shared, region="de")) == sorted(
        [a.subject_id, b.subject_id]
    )
    only_a = stack.client(stack.issue("essential.subject_rights", subjects=[a.subject_id]))
    assert only_a.find_subjects("account_id", shared, region="de") == [a.subject_id]
    no_de = stack.client(stack.issue("essential.subject_rights", regions=["us"]))
    with pytest.raises(VaultClientError) as e:
        no_de.find_subjects("account_id", shared, region="de")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_records_expire_by_policy_and_the_sweeper_deletes_them(sqlite_stack: Stack) -> None:
    payments = sqlite_stack.client(
        sqlite_stack.issue(
            "essential.service.payment_processing", ["user.financial.purchase_history"]
        )
    )
    everyday = sqlite_stack.client()
    s = everyday.create_subject("SG")
    orders = [
        payments.put_record(
            s.subject_id, "user.financial.purchase_history", {"order_id": f"o{i}"}
        ).record_id
        for i in range(6)
    ]
    keep = everyday.put_record(s.subject_id, "user.name", {"first": "Tan"}).record_id
    now_us = time.time_ns() // 1000
    with sqlite3.connect(sqlite_stack.db_path("sg")) as db:
        exp = dict(
            db.execute("SELECT id, expires_at FROM records WHERE subject_id = ?", (s.subject_id,))
        )
        # essential.service.payment_processing keeps orders 730 days; essential.service: no limit.
        for rid in orders:
            assert abs(exp[rid] - (now_us + 730 * 86_400_000_000)) < 120_000_000
        assert exp[keep] is None
        # Time passes: the retention of the orders ends.
        db.executemany(
            "UPDATE records SET expires_at = ? WHERE id = ?", [(now_us - 1, rid) for rid in orders]
        )

    cmd = [
        sys.executable,
        "-m",
        "vault.cli",
        "retention",
        "sweep",
        "--data-dir",
        str(sqlite_stack.data_dir),
        "--batch",
        "2",
    ]
    runs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # two sweepers at once, as on two nodes
    outs = [p.communicate(timeout=120) for p in runs]
    assert all(p.returncode == 0 for p in runs), outs
    deleted = sum(int(out.split("total: ")[1].split()[0]) for out, _ in outs)
    assert deleted == 6
    for rid in orders:
        with pytest.raises(VaultClientError) as e:
            everyday.get_record(rid)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert everyday.get_record(keep).fields == {"first": "Tan"}


def test_a_node_sweeps_soon_after_it_starts_not_a_sweep_period_later(
    bao: Bao, tmp_path: Path
) -> None:
    """Nodes restarted more often than the sweep period (an hour) still sweep:
    the first sweep comes ``retention_first_sweep_seconds`` after start."""
    node = start_stack(bao, tmp_path, retention_first_sweep_seconds=0.3)
    try:
        c = node.client(node.issue(RIGHTS))
        sid = c.create_subject("SG").subject_id
        rid = c.put_record(sid, "user.name", {"first": "Tan"}).record_id
        with sqlite3.connect(node.db_path("sg")) as db:
            db.execute("UPDATE records SET expires_at = ? WHERE id = ?", (1, rid))
        deadline = time.monotonic() + 15
        while True:
            with sqlite3.connect(node.db_path("sg")) as db:
                left = db.execute("SELECT count(*) FROM records WHERE id = ?", (rid,)).fetchone()
            if left == (0,):
                break
            assert time.monotonic() < deadline, "the first sweep did not come"
            time.sleep(0.1)
    finally:
        node.stop()

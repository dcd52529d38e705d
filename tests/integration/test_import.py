"""Bulk import (ImportSubjects, ``pdvault import``) against real OpenBao and
SQLite: people with their records, keys from the pool, idempotent per person,
and an import killed half-way and run again creates nobody twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Bao, Stack, live_sql, start_stack
from vault.client import VaultClientError
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration

CATEGORIES = ["user.name", "user.contact.email"]


def _person(key: str, first: str, country: str = "DE") -> pb.ImportSubjectRequest:
    return pb.ImportSubjectRequest(
        subject=pb.CreateSubjectRequest(
            country=country,
            idempotency_key=key,
            lookups=[pb.Lookup(kind="email", value=f"{key}@example.org")],
        ),
        records=[
            pb.ImportRecord(category="user.name", fields={"first": first}),
            pb.ImportRecord(category="user.contact.email", fields={"address": f"{key}@x.org"}),
        ],
    )


def _count(stack: Stack, table: str, region: str = "de") -> int:
    ((n,),) = live_sql(stack.db_path(region), f"SELECT count(*) FROM {table}")
    return int(n)


@pytest.fixture(scope="module")
def import_stack(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("import-node"))
    yield s
    s.stop()


def test_import_writes_people_and_records_once(import_stack: Stack, canary: str) -> None:
    stack = import_stack
    stack.vault.parts.pools["de"].mint(3)
    pooled = {r[0] for r in live_sql(stack.db_path("de"), "SELECT id FROM subject_pool")}
    c = stack.client(stack.issue(categories=CATEGORIES))
    people = [_person(f"imp-{i}", f"{canary}-{i}") for i in range(4)]
    reply = c.import_subjects(people)
    sids = [r.subject_id for r in reply.results]
    assert [r.records_written for r in reply.results] == [2, 2, 2, 2]
    assert len(set(sids)) == 4 and pooled < set(sids)  # three from the pool, one inline
    # Both paths make derived subject keys (rotation re-wraps them inside OpenBao).
    for sid in sids:
        assert live_sql(
            stack.db_path("de"), "SELECT key_derived FROM subjects WHERE id = ?", sid
        ) == [[1]]
        key = stack.bao.root().secrets.transit.read_key(
            name=f"subject-{sid}", mount_point="transit-de"
        )
        assert key["data"]["derived"]
    for i, sid in enumerate(sids):
        got = {r.category: dict(r.fields) for r in c.list_records(sid).records}
        assert got == {
            "user.name": {"first": f"{canary}-{i}"},
            "user.contact.email": {"address": f"imp-{i}@x.org"},
        }
        assert c.find_subjects("email", f"imp-{i}@example.org", region="de") == [sid]
    subjects, records = _count(stack, "subjects"), _count(stack, "records")

    again = c.import_subjects(people)  # a resumed import sends them again
    assert [r.subject_id for r in again.results] == sids
    assert [r.records_written for r in again.results] == [0, 0, 0, 0]
    assert (_count(stack, "subjects"), _count(stack, "records")) == (subjects, records)


def test_a_person_sent_again_with_other_content_is_refused(
    import_stack: Stack, canary: str
) -> None:
    stack = import_stack
    c = stack.client(stack.issue(categories=CATEGORIES))
    (first,) = c.import_subjects([_person("imp-changed", "Ada")]).results
    records = _count(stack, "records")
    with pytest.raises(VaultClientError) as e:
        c.import_subjects([_person("imp-changed", canary)])
    assert (e.value.code, e.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert canary not in str(e.value)
    assert _count(stack, "records") == records
    names = c.list_records(first.subject_id, category="user.name").records
    assert [dict(r.fields) for r in names] == [{"first": "Ada"}]  # the first import's, unchanged


def test_an_import_needs_a_key_and_bounded_people(import_stack: Stack) -> None:
    stack = import_stack
    c = stack.client(stack.issue(categories=CATEGORIES))
    subjects = _count(stack, "subjects")
    no_key = _person("k", "Ada")
    no_key.subject.idempotency_key = ""
    with pytest.raises(VaultClientError) as e:
        c.import_subjects([no_key])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.violations == [("subject.idempotency_key", "is required for an import")]
    too_many = _person("imp-many", "Ada")
    del too_many.records[:]
    too_many.records.extend(
        pb.ImportRecord(category="user.name", fields={"first": str(i)}) for i in range(101)
    )
    with pytest.raises(VaultClientError) as e:
        c.import_subjects([too_many])
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    bad_record = _person("imp-bad", "Ada")
    bad_record.records[1].category = "user.not_a_category"
    with pytest.raises(VaultClientError) as e:
        c.import_subjects([bad_record])
    assert e.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
    assert _count(stack, "subjects") == subjects  # nothing created by any refusal


def _write_people(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            doc = {
                "key": f"crm-{i:06d}",
                "country": ("DE", "US", "SG")[i % 3],
                "records": [
                    {"category": "user.name", "fields": {"first": f"Person {i}"}},
                    {"category": "user.contact.email", "fields": {"address": f"p{i}@x.org"}},
                ],
            }
            f.write(json.dumps(doc) + "\n")


def test_an_import_killed_half_way_and_run_again_creates_nobody_twice(
    bao: Bao, tmp_path: Path
) -> None:
    stack = start_stack(bao, tmp_path / "node")
    try:
        n = 240
        people = tmp_path / "people.jsonl"
        _write_people(people, n)
        cmd = [
            *(sys.executable, "-m", "vault.cli", "import", str(people)),
            *("--target", stack.target, "--data-dir", str(tmp_path / "node")),
            *("--token", stack.issue(categories=CATEGORIES)),
            *("--batch", "10", "--parallel", "2", "--ids", str(tmp_path / "ids.jsonl")),
        ]
        progress = people.with_name("people.jsonl.progress")
        first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not progress.exists() or json.loads(progress.read_text())["lines_done"] < 30:
            assert first.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        done_at_kill = json.loads(progress.read_text())["lines_done"]
        assert 0 < done_at_kill < n, "killed too late to test a resume"

        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert f"resuming after line {done_at_kill}" in out.stderr
        assert json.loads(progress.read_text())["lines_done"] == n

        # Every person exactly once, with exactly their two records.
        per_region = {
            r: (_count(stack, "subjects", r), _count(stack, "records", r))
            for r in ("de", "us", "sg")
        }
        assert sum(s for s, _ in per_region.values()) == n
        assert sum(r for _, r in per_region.values()) == 2 * n
        acked = [json.loads(line) for line in (tmp_path / "ids.jsonl").read_text().splitlines()]
        by_key: dict[str, set[str]] = {}
        for a in acked:
            by_key.setdefault(a["key"], set()).add(a["subject_id"])
        assert len(by_key) == n and all(len(v) == 1 for v in by_key.values())
    finally:
        stack.stop()

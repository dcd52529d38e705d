"""Subject key rotation against a real OpenBao and a real cell database.

Rotate, re-wrap, retire and trim the old versions; the job resumes, never
double-processes, and loses to an erasure racing it. Every run rotates every
live subject of the module's cell, so the tests with few subjects come first.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from prometheus_client import REGISTRY

from tests.conftest import Bao, Stack, start_stack
from vault.config import load_regions
from vault.crypto import dek_associated_data
from vault.keys import KeyRef, TransitKeyRotator
from vault.rotation import SubjectKeyRotation
from vault.store import RotationStore

RIGHTS = "essential.subject_rights"


@pytest.fixture(scope="module")
def node(bao: Bao, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(bao, tmp_path_factory.mktemp("subject-rotation"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rotator(bao: Bao, node: Stack) -> TransitKeyRotator:
    return TransitKeyRotator.connect(bao.address, bao.server.rotator_token(node.regions))


def _job(node: Stack, rotator: object) -> SubjectKeyRotation:
    store = RotationStore(node.vault.parts.stores["de"].engine)
    return SubjectKeyRotation(store, rotator, "de")  # type: ignore[arg-type]


def _people(node: Stack, n: int) -> dict[str, str]:
    """n subjects of de with one record each: subject id -> record id."""
    c = node.client(node.issue(RIGHTS))
    out = {}
    for i in range(n):
        sid = c.create_subject("DE").subject_id
        out[sid] = c.put_record(
            sid, "user.contact.email", {"address": f"p{i}@example.org"}
        ).record_id
    return out


def _wrap(node: Stack, sid: str) -> tuple[str, int]:
    with sqlite3.connect(node.db_path("de")) as db:
        row = db.execute(
            "SELECT wrapped_dek, key_version FROM subjects WHERE id = ?", (sid,)
        ).fetchone()
    return str(row[0]), int(row[1])


def _versions(bao: Bao, sid: str) -> list[int]:
    key = bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    return sorted(int(v) for v in key["data"]["keys"])


def _all_readable(node: Stack, people: dict[str, str]) -> None:
    node.vault.parts.data_keys["de"].clear()  # every read unwraps again
    c = node.client(node.issue(RIGHTS))
    for sid, rid in people.items():
        assert c.get_record(rid).subject_id == sid


@pytest.mark.parametrize("stage", ["rewrap", "retire_below"])
def test_an_erasure_racing_a_rotation_ends_erased_with_the_ledger_complete(
    bao: Bao, node: Stack, rotator: TransitKeyRotator, stage: str
) -> None:
    sid = next(iter(_people(node, 1)))
    eraser = node.client(node.issue(RIGHTS))

    class Racing:
        """The real rotator, with the subject's erasure landing before ``stage``."""

        def rotate(self, ref: KeyRef) -> int:
            return rotator.rotate(ref)

        def rewrap(self, ref: KeyRef, wrapped: str, aad: bytes) -> str:
            if stage == "rewrap" and ref.name == f"subject-{sid}":
                eraser.erase_subject(sid)
            return rotator.rewrap(ref, wrapped, aad)

        def retire_below(self, ref: KeyRef, version: int) -> None:
            if stage == "retire_below" and ref.name == f"subject-{sid}":
                eraser.erase_subject(sid)
            rotator.retire_below(ref, version)

    outcomes: dict[str, str] = {}
    _job(node, Racing()).run(0, progress=outcomes.__setitem__)
    assert outcomes[sid] == "gone"
    entry = node.vault.control.erasure(sid)
    assert entry is not None and entry.destroyed_at is not None and entry.receipt
    with sqlite3.connect(node.db_path("de")) as db:
        assert db.execute("SELECT state FROM subjects WHERE id = ?", (sid,)).fetchone() == (
            "erased",
        )
    with pytest.raises(hvac.exceptions.InvalidPath):
        bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")


def test_after_rotate_rewrap_and_trim_the_old_wrap_from_a_backup_is_refused(
    bao: Bao, node: Stack, rotator: TransitKeyRotator, tmp_path: Path
) -> None:
    people = _people(node, 2)
    backup = {sid: _wrap(node, sid)[0] for sid in people}
    assert all(w.startswith("vault:v1:") for w in backup.values())

    summary = _job(node, rotator).run(0)
    assert summary.finished and summary.rotated >= 2 and summary.failed == 0

    for sid, old in backup.items():
        new, version = _wrap(node, sid)
        assert version == 2 and new.startswith("vault:v2:") and new != old
        assert _versions(bao, sid) == [2]  # version 1 is trimmed: destroyed
        with pytest.raises(hvac.exceptions.InvalidRequest):
            bao.root().secrets.transit.decrypt_data(
                name=f"subject-{sid}",
                ciphertext=old,
                associated_data=base64.b64encode(dek_associated_data(sid, "de")).decode(),
                mount_point="transit-de",
            )
    _all_readable(node, people)  # the records were never re-encrypted, and open


def test_the_node_credential_cannot_rotate_reconfigure_or_trim(bao: Bao, node: Stack) -> None:
    sid = next(iter(_people(node, 1)))
    from vault.errors import KeyServiceUnavailable

    as_node = TransitKeyRotator.connect(bao.address, bao.node_token)
    ref = KeyRef("transit-de", f"subject-{sid}")
    with pytest.raises(KeyServiceUnavailable, match="permission"):
        as_node.retire_below(ref, 1)
    with pytest.raises(KeyServiceUnavailable, match="permission"):
        as_node.rotate(ref)
    assert _versions(bao, sid) == [1]


def test_the_rotator_credential_cannot_delete_export_or_back_up_a_key(
    node: Stack, rotator: TransitKeyRotator
) -> None:
    sid = next(iter(_people(node, 1)))
    transit = rotator._client.secrets.transit
    for attempt in (
        lambda: transit.update_key_configuration(
            name=f"subject-{sid}", deletion_allowed=True, mount_point="transit-de"
        ),
        lambda: transit.update_key_configuration(
            name=f"subject-{sid}", exportable=True, mount_point="transit-de"
        ),
        lambda: transit.update_key_configuration(
            name=f"subject-{sid}", allow_plaintext_backup=True, mount_point="transit-de"
        ),
        lambda: transit.delete_key(name=f"subject-{sid}", mount_point="transit-de"),
        lambda: transit.export_key(
            name=f"subject-{sid}", key_type="encryption-key", mount_point="transit-de"
        ),
        lambda: transit.backup_key(name=f"subject-{sid}", mount_point="transit-de"),
        lambda: transit.read_key(name="token-signing", mount_point="transit-control"),
    ):
        with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)) as e:
            attempt()
        assert "permission denied" in str(e.value) or isinstance(e.value, hvac.exceptions.Forbidden)
    key = node.bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    assert _versions(node.bao, sid) == [1]  # the key is whole, and as it was made
    assert not key["data"]["exportable"] and not key["data"]["allow_plaintext_backup"]
    assert not key["data"]["deletion_allowed"]


def test_a_job_killed_midway_resumes_where_it_stopped(
    bao: Bao, node: Stack, rotator: TransitKeyRotator
) -> None:
    people = _people(node, 6)
    done: list[str] = []

    class Killed(Exception):
        pass

    def kill_after_three(sid: str, outcome: str) -> None:
        done.append(sid)
        if len(done) == 3:
            raise Killed

    def rotated() -> float:  # the job's progress, as Prometheus shows it
        return (
            REGISTRY.get_sample_value(
                "pdvault_key_rotation_subjects_total", {"region": "de", "outcome": "rotated"}
            )
            or 0.0
        )

    # The job goes through every due subject of the cell (the module's earlier
    # ones too): the metric must count exactly the ones it reports rotated.
    outcomes: list[str] = []

    def kill_after_three_counting(sid: str, outcome: str) -> None:
        outcomes.append(outcome)
        kill_after_three(sid, outcome)

    before = rotated()
    with pytest.raises(Killed):
        _job(node, rotator).run(0, progress=kill_after_three_counting)
    first = outcomes.count("rotated")
    assert rotated() - before == first
    summary = _job(node, rotator).run(0)
    assert summary.resumed and summary.finished
    assert rotated() - before == first + summary.rotated
    for sid in people:  # each rotated exactly once: a second rotation would make v3
        assert _wrap(node, sid)[1] == 2 and _versions(bao, sid) == [2]
    _all_readable(node, people)


def test_two_jobs_at_once_never_process_a_subject_twice(
    bao: Bao, node: Stack, rotator: TransitKeyRotator
) -> None:
    people = _people(node, 8)
    outcomes: dict[str, list[str]] = {sid: [] for sid in people}
    lock = threading.Lock()

    def note(sid: str, outcome: str) -> None:
        with lock:
            if sid in outcomes:
                outcomes[sid].append(outcome)

    jobs = [_job(node, rotator) for _ in range(2)]
    threads = [threading.Thread(target=j.run, args=(0,), kwargs={"progress": note}) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for sid in people:
        assert outcomes[sid].count("rotated") == 1, outcomes[sid]
        assert _wrap(node, sid)[1] == 2 and _versions(bao, sid) == [2]
    _all_readable(node, people)


def test_rotation_under_read_write_load_fails_no_read_and_loses_no_write(
    bao: Bao, rotator: TransitKeyRotator, tmp_path: Path
) -> None:
    """No data-key cache: every read and write unwraps through OpenBao, so
    each one can land between a re-wrap and the trim of the version it read."""
    from vault.config import CacheSettings

    loaded = start_stack(bao, tmp_path, cache=CacheSettings(max_entries=0))
    try:
        people = _people(loaded, 4)
        token = loaded.issue(RIGHTS)
        acked: dict[str, str] = {}
        errors: list[BaseException] = []
        stop = threading.Event()
        reads = [0]

        def reader() -> None:
            c = loaded.client(token)
            while not stop.is_set():
                for rid in people.values():
                    try:
                        c.get_record(rid)
                        reads[0] += 1
                    except BaseException as e:
                        errors.append(e)

        def writer() -> None:
            c = loaded.client(token)
            n = 0
            while not stop.is_set():
                for sid, rid in people.items():
                    n += 1
                    value = f"w{n}@example.org"
                    try:
                        c.put_record(sid, "user.contact.email", {"address": value}, record_id=rid)
                    except BaseException as e:
                        errors.append(e)
                        continue
                    acked[rid] = value  # acknowledged

        threads = [threading.Thread(target=f) for f in (reader, writer)]
        for t in threads:
            t.start()
        try:
            job = _job(loaded, rotator)
            first = job.run(0)
            second = _job(loaded, rotator).run(0)  # twice: versions 2, then 3
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert errors == [], errors[:3]
        assert first.rotated == second.rotated == len(people) and reads[0] > 0
        c = loaded.client(token)
        for sid, rid in people.items():
            assert _wrap(loaded, sid)[1] == 3 and _versions(bao, sid) == [3]
            assert c.get_record(rid).fields["address"] == acked[rid]
    finally:
        loaded.stop()


def test_a_node_rotates_keys_on_its_region_schedule(bao: Bao, tmp_path: Path) -> None:
    """A one-second period for de, none elsewhere: the node's worker rotates
    de's subject keys by itself, and no other region's."""
    from vault.config import KeyRotationPolicy

    none = {r: None for r in ("cn", "us", "ru", "sg")}
    scheduled = start_stack(
        bao,
        tmp_path,
        key_rotation={"de": KeyRotationPolicy(1, 50.0), **none},  # type: ignore[dict-item]
        rotator_token=bao.server.rotator_token(load_regions(openbao_addr=bao.address)),
        rotation_check_seconds=0.2,
    )
    try:
        c = scheduled.client(scheduled.issue(RIGHTS))
        de = c.create_subject("DE").subject_id
        us = c.create_subject("US").subject_id
        deadline = time.monotonic() + 15
        while _wrap(scheduled, de)[1] < 2:
            assert time.monotonic() < deadline, "the scheduled rotation did not run"
            time.sleep(0.1)
        assert _versions(bao, de)[0] >= 2  # old versions trimmed
        key = bao.root().secrets.transit.read_key(name=f"subject-{us}", mount_point="transit-us")
        assert key["data"]["latest_version"] == 1
    finally:
        scheduled.stop()

"""Subject key rotation against a real OpenBao and a real cell database.

Rotate, re-wrap, retire and trim the old versions; the job resumes, never
double-processes, and loses to an erasure racing it. Every run rotates every
live subject of the module's cell, so the tests with few subjects come first.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from prometheus_client import REGISTRY

from tests.conftest import Bao, Stack, live_sql, start_stack
from vault import ids
from vault.client import VaultClientError
from vault.config import load_regions
from vault.crypto import dek_associated_data, new_data_key
from vault.db import now_us
from vault.errors import DecryptionFailed
from vault.keys import KeyRef, TransitKeyRotator
from vault.openbao import role_policy
from vault.rotation import SubjectKeyRotation
from vault.store import RotationStore
from vault.store._cellstore import SubjectRow, SubjectState

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


def _binding(sid: str, derived: bool) -> dict[str, str]:
    """How the wrap of ``sid``'s data key is bound, as a Transit parameter."""
    b = base64.b64encode(dek_associated_data(sid, "de")).decode()
    return {"context": b} if derived else {"associated_data": b}


def _root_unwraps(bao: Bao, sid: str, wrapped: str, *, derived: bool = True) -> bool:
    """Whether OpenBao (the root token) opens ``wrapped`` with its subject's binding."""
    try:
        bao.root().secrets.transit.decrypt_data(
            name=f"subject-{sid}",
            ciphertext=wrapped,
            mount_point="transit-de",
            **_binding(sid, derived),
        )
    except hvac.exceptions.InvalidRequest:
        return False
    return True


def _legacy_subject(node: Stack) -> tuple[str, str]:
    """A subject made the way subjects were before derived keys: a non-derived
    key, the data key wrapped with associated data, ``key_derived`` false; and
    one record of it, written through the API. (subject id, record id)"""
    sid = ids.new_subject_id("de")
    ref = KeyRef("transit-de", f"subject-{sid}")  # not derived
    node.provider.create_key(ref)
    wrapped = node.provider.wrap(ref, new_data_key(), dek_associated_data(sid, "de"))
    now = now_us()
    row = SubjectRow(
        sid, "de", SubjectState.ACTIVE, False, ref.mount, ref.name, wrapped, now, now, False
    )
    node.vault.parts.stores["de"].insert_subject(row, None)
    c = node.client(node.issue(RIGHTS))
    rid = c.put_record(sid, "user.contact.email", {"address": "legacy@example.org"}).record_id
    return sid, rid


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
    # Derived keys, and their wraps open with their context now: the refusal
    # below is the trim's, not a wrong binding's.
    assert all(_root_unwraps(bao, sid, w) for sid, w in backup.items())

    summary = _job(node, rotator).run(0)
    assert summary.finished and summary.rotated >= 2 and summary.failed == 0

    for sid, old in backup.items():
        new, version = _wrap(node, sid)
        assert version == 2 and new.startswith("vault:v2:") and new != old
        assert _versions(bao, sid) == [2]  # version 1 is trimmed: destroyed
        assert _root_unwraps(bao, sid, new)
        with pytest.raises(hvac.exceptions.InvalidRequest, match="version"):
            bao.root().secrets.transit.decrypt_data(
                name=f"subject-{sid}",
                ciphertext=old,
                mount_point="transit-de",
                **_binding(sid, derived=True),
            )
    _all_readable(node, people)  # the records were never re-encrypted, and open


def test_a_new_subject_key_is_derived_and_its_wrap_opens_only_with_its_own_context(
    bao: Bao, node: Stack
) -> None:
    people = _people(node, 2)
    a, b = people
    for sid in people:
        key = bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
        assert key["data"]["derived"] and not key["data"]["convergent_encryption"]
        assert live_sql(
            node.db_path("de"), "SELECT key_derived FROM subjects WHERE id = ?", sid
        ) == [[1]]
    wrapped_a = _wrap(node, a)[0]
    ref_a = KeyRef("transit-de", f"subject-{a}", derived=True)
    assert len(node.provider.unwrap(ref_a, wrapped_a, dek_associated_data(a, "de"))) == 32
    # A's wrap under A's key, with B's binding: refused by OpenBao.
    with pytest.raises(DecryptionFailed):
        node.provider.unwrap(ref_a, wrapped_a, dek_associated_data(b, "de"))
    # Nor does associated data stand in for the context.
    with pytest.raises(DecryptionFailed):
        legacy_ref = KeyRef(ref_a.mount, ref_a.name)
        node.provider.unwrap(legacy_ref, wrapped_a, dek_associated_data(a, "de"))

    # Someone with write access to the database points B's row at A's key and
    # wrap: B's read asks OpenBao to open A's wrap with B's context, and it refuses.
    (row_b,) = live_sql(
        node.db_path("de"), "SELECT key_name, wrapped_dek FROM subjects WHERE id = ?", b
    )
    live_sql(
        node.db_path("de"),
        "UPDATE subjects SET key_name = ?, wrapped_dek = ? WHERE id = ?",
        f"subject-{a}",
        wrapped_a,
        b,
    )
    try:
        node.node.cells["de"].forget(b)
        before = len(bao.answers(f"transit-de/decrypt/subject-{a}"))
        with pytest.raises(VaultClientError) as e:
            node.client(node.issue(RIGHTS)).get_record(people[b])
        assert e.value.code.name == "DATA_LOSS"
        answers = bao.answers(f"transit-de/decrypt/subject-{a}")[before:]
        assert answers and answers[-1]  # OpenBao's refusal (its audit log says "invalid request")
    finally:
        live_sql(
            node.db_path("de"),
            "UPDATE subjects SET key_name = ?, wrapped_dek = ? WHERE id = ?",
            row_b[0],
            row_b[1],
            b,
        )
        node.node.cells["de"].forget(b)
    _all_readable(node, people)


def test_a_legacy_subject_key_is_still_rotated_by_decrypt_and_encrypt(
    bao: Bao, node: Stack, rotator: TransitKeyRotator
) -> None:
    sid, rid = _legacy_subject(node)
    key = bao.root().secrets.transit.read_key(name=f"subject-{sid}", mount_point="transit-de")
    assert not key["data"]["derived"]
    old = _wrap(node, sid)[0]
    assert _root_unwraps(bao, sid, old, derived=False)
    decrypts = len(bao.answers(f"transit-de/decrypt/subject-{sid}"))

    outcomes: dict[str, str] = {}
    summary = _job(node, rotator).run(0, progress=outcomes.__setitem__)
    assert outcomes[sid] == "rotated" and summary.failed == 0
    new, version = _wrap(node, sid)
    assert version == 2 and new.startswith("vault:v2:") and _versions(bao, sid) == [2]
    # The legacy path: an unwrap and a wrap, no Transit rewrap.
    assert len(bao.answers(f"transit-de/decrypt/subject-{sid}")) == decrypts + 1
    assert bao.answers(f"transit-de/rewrap/subject-{sid}") == []
    assert _root_unwraps(bao, sid, new, derived=False)
    assert not _root_unwraps(bao, sid, old, derived=False)  # trimmed
    assert live_sql(node.db_path("de"), "SELECT key_derived FROM subjects WHERE id = ?", sid) == [
        [0]
    ]
    _all_readable(node, {sid: rid})


def _rewrap_only_token(bao: Bao, stack: Stack) -> str:
    """A token whose policy is the rotation role's without its decrypt and
    encrypt paths (what a region with no legacy key left may apply)."""
    mounts = [m for r in stack.regions.regions.values() for m in r.transit_mounts]
    policy = role_policy("rotation", mounts)
    policy, n = re.subn(r'path "[^"]+/(decrypt|encrypt)/\+" \{[^}]*\}', "", policy)
    assert n == 2 * len(mounts)
    assert "/decrypt/" not in policy and "/encrypt/" not in policy
    assert "/rewrap/" in policy
    root = bao.root()
    root.sys.create_or_update_policy("pdvault-rotation-rewrap-only", policy)
    token = root.auth.token.create(
        policies=["pdvault-rotation-rewrap-only"], no_default_policy=True, ttl="1h"
    )
    return str(token["auth"]["client_token"])


def test_derived_keys_rotate_with_a_credential_that_can_neither_decrypt_nor_encrypt(
    bao: Bao, tmp_path: Path
) -> None:
    """The proof that a derived key's data key never leaves OpenBao during
    rotation: the job's credential cannot decrypt (nor encrypt) at all."""
    stack = start_stack(bao, tmp_path)
    try:
        people = _people(stack, 3)
        legacy, legacy_rid = _legacy_subject(stack)
        backup = {sid: _wrap(stack, sid)[0] for sid in people}
        token = _rewrap_only_token(bao, stack)
        rewrap_only = TransitKeyRotator.connect(bao.address, token)

        # The credential is refused by OpenBao itself on decrypt and encrypt.
        sid0 = next(iter(people))
        t = hvac.Client(url=bao.address, token=token, timeout=10).secrets.transit
        with pytest.raises(hvac.exceptions.Forbidden):
            t.decrypt_data(
                name=f"subject-{sid0}",
                ciphertext=backup[sid0],
                mount_point="transit-de",
                **_binding(sid0, derived=True),
            )
        with pytest.raises(hvac.exceptions.Forbidden):
            t.encrypt_data(
                name=f"subject-{sid0}",
                plaintext=base64.b64encode(b"k" * 32).decode(),
                mount_point="transit-de",
                **_binding(sid0, derived=True),
            )

        decrypts = {sid: len(bao.answers(f"transit-de/decrypt/subject-{sid}")) for sid in people}
        outcomes: dict[str, str] = {}
        summary = _job(stack, rewrap_only).run(0, progress=outcomes.__setitem__)
        for sid, old in backup.items():
            assert outcomes[sid] == "rotated"
            new, version = _wrap(stack, sid)
            assert version == 2 and new.startswith("vault:v2:") and _versions(bao, sid) == [2]
            # One Transit rewrap, not one decrypt.
            assert bao.answers(f"transit-de/rewrap/subject-{sid}") == [""]
            assert len(bao.answers(f"transit-de/decrypt/subject-{sid}")) == decrypts[sid]
            assert _root_unwraps(bao, sid, new) and not _root_unwraps(bao, sid, old)
        # A legacy key needs decrypt and encrypt: its rotation fails with this
        # credential (and the job says so), and it still reads.
        assert outcomes[legacy] == "failed" and summary.failed == 1 and not summary.finished
        _all_readable(stack, {**people, legacy: legacy_rid})
        # The full rotation credential rotates it, in a new job: the failed
        # one's cursor is past the legacy subject already (a resumed job does
        # not go back to the subjects it failed), so it is closed here first.
        store = RotationStore(stack.vault.parts.stores["de"].engine)
        store.finish(summary.job_id, now_us())
        full = TransitKeyRotator.connect(bao.address, bao.server.rotator_token(stack.regions))
        again = _job(stack, full).run(0)
        assert again.finished and again.failed == 0
        assert _wrap(stack, legacy)[1] == _versions(bao, legacy)[-1] >= 2
        _all_readable(stack, {**people, legacy: legacy_rid})
    finally:
        stack.stop()


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

"""Blind-index re-index (``pdvault keys reindex``) against a real OpenBao and
real cell databases (SQLite and PostgreSQL).

The module runs on an OpenBao of its own: a re-index trims old versions of the
Transit key ``lookup-index``, which the session's other nodes share.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, delete, func, insert, select, text

from tests.conftest import (
    Bao,
    Stack,
    cell_migration_head,
    configured_bao,
    files_containing,
    postgres_database,
    start_stack,
)
from vault.cell._lookup import BlindIndex, digest_with, index_key_aad, index_key_name
from vault.config import KeyRotationPolicy, load_regions
from vault.crypto import dek_associated_data, open_lookup_value
from vault.devstack import OpenBaoServer
from vault.errors import DecryptionFailed, KeyServiceUnavailable
from vault.keys import KeyGone, KeyRef, TransitKeyProvider, TransitKeyRotator
from vault.rotation import LookupReindex, ReindexSummary
from vault.store import CellStore, IndexStore, RotationStore, make_engine, migrate
from vault.store._models import cell_keys, key_jobs, lookup_values, lookups
from vault.store._models import subjects as subjects_t
from vault.v1 import vault_pb2 as pb

pytestmark = pytest.mark.integration
RIGHTS = "essential.subject_rights"
MOUNT = "transit-de"


@pytest.fixture(scope="module")
def rbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    d = tmp_path_factory.mktemp("reindex-openbao")
    server = OpenBaoServer(d, log=False)
    server.start()
    try:
        yield configured_bao(server, d)
    finally:
        server.stop()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def node(
    request: pytest.FixtureRequest, rbao: Bao, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp(f"reindex-{request.param}")
    if request.param == "sqlite":
        s = start_stack(rbao, data)
        yield s
        s.stop()
        return
    with postgres_database("pdvault_reindex") as url:
        s = start_stack(rbao, data, database_urls={"de": url})
        try:
            yield s
        finally:
            s.stop()


@pytest.fixture(scope="module")
def rotation_token(rbao: Bao, node: Stack) -> str:
    return rbao.server.rotator_token(node.regions)


def _engine(node: Stack) -> Engine:
    return node.vault.parts.stores["de"].engine


def _job(node: Stack, token: str) -> LookupReindex:
    engine = _engine(node)
    return LookupReindex(
        RotationStore(engine),
        IndexStore(engine),
        TransitKeyProvider.connect(node.bao.address, token),
        TransitKeyRotator.connect(node.bao.address, token),
        "de",
        MOUNT,
    )


def _email() -> str:
    return f"p.{uuid.uuid4().hex}@example.org"


def _people(node: Stack, n: int) -> dict[str, str]:
    """n subjects of de, each with an e-mail lookup: subject id -> e-mail."""
    c = node.client(node.issue(RIGHTS))
    out = {}
    for _ in range(n):
        email = _email()
        out[c.create_subject("DE", lookups={"email": email}).subject_id] = email
    return out


def _found(node: Stack, kind: str, value: str) -> list[str]:
    return node.client(node.issue(RIGHTS)).find_subjects(kind, value, region="de")


def _all_found(node: Stack, people: dict[str, str]) -> None:
    for sid, email in people.items():
        assert _found(node, "email", email) == [sid]


def _old_key(node: Stack) -> tuple[int, str, bytes]:
    """The active index key version, its wrapped key and the key itself."""
    index = IndexStore(_engine(node))
    (version,) = index.active()
    wrapped = index.wrapped(index_key_name(version))
    assert wrapped is not None
    key = node.provider.unwrap(
        KeyRef(MOUNT, "lookup-index"), wrapped, index_key_aad(MOUNT, version)
    )
    return version, wrapped, key


def _digests(node: Stack, version: int | None = None) -> list[tuple[str, str, int]]:
    q = select(lookups.c.subject_id, lookups.c.digest, lookups.c.key_version)
    if version is not None:
        q = q.where(lookups.c.key_version == version)
    with _engine(node).connect() as c:
        return [(str(a), str(b), int(v)) for a, b, v in c.execute(q)]


def test_lookups_work_during_a_reindex_and_the_old_key_matches_nothing_after(
    node: Stack, rotation_token: str
) -> None:
    people = _people(node, 6)
    old, old_wrapped, old_key = _old_key(node)
    c = node.client(node.issue(RIGHTS))
    added: dict[str, str] = {}
    phones: dict[str, str] = {}

    def step(sid: str, outcome: str) -> None:
        # Lookups interleaved with the job's steps: all found, old and new.
        assert outcome == "reindexed"
        _all_found(node, people)
        _all_found(node, added)
        email = _email()
        added[c.create_subject("DE", lookups={"email": email}).subject_id] = email
        phone = f"+4930{time.time_ns() % 10**9}"
        assert c.set_lookups(sid, {"phone": phone}) == 1
        phones[sid] = phone
        assert _found(node, "email", email) == [next(reversed(added))]
        assert _found(node, "phone", phone) == [sid]

    s = _job(node, rotation_token).run(progress=step)
    assert s.finished and s.retired and s.failed == 0 and s.unsealed_subjects == 0, s
    assert (s.old_version, s.version) == (old, old + 1)
    _all_found(node, people)
    _all_found(node, added)
    for sid, phone in phones.items():
        assert _found(node, "phone", phone) == [sid]

    # The old version: no wrapped key, no digests, marked retired.
    index = IndexStore(_engine(node))
    assert index.wrapped(index_key_name(old)) is None
    assert _digests(node, old) == []
    assert index.active() == [old + 1]
    assert [v.state for v in index.versions() if v.version == old] == ["retired"]
    # A digest made with the old key (an attacker holding it, or a backup's)
    # matches nothing; the old wrapped key (a backup's) no longer unwraps.
    stored = {d for _, d, _ in _digests(node)}
    for email in people.values():
        assert digest_with(old_key, "email", email) not in stored
        assert _found(node, "email", email)  # ...while the new one does
    with pytest.raises(DecryptionFailed):
        node.provider.unwrap(KeyRef(MOUNT, "lookup-index"), old_wrapped, index_key_aad(MOUNT, old))


class _Stop(Exception):
    pass


def test_a_killed_job_resumes_at_its_cursor_and_two_jobs_insert_no_duplicates(
    node: Stack, rotation_token: str
) -> None:
    people = _people(node, 8)
    seen: list[str] = []

    def die_after_three(sid: str, _: str) -> None:
        seen.append(sid)
        if len(seen) == 3:
            raise _Stop

    with pytest.raises(_Stop):
        _job(node, rotation_token).run(progress=die_after_three)
    with _engine(node).connect() as conn:
        cursor = conn.execute(
            select(key_jobs.c.cursor).where(
                key_jobs.c.kind == "reindex", key_jobs.c.finished_at.is_(None)
            )
        ).scalar_one()
    assert cursor == seen[2]
    _all_found(node, people)  # two versions active: still found
    rest: list[str] = []
    s = _job(node, rotation_token).run(progress=lambda sid, _: rest.append(sid))
    assert s.resumed and s.finished and s.retired, s
    assert all(sid > cursor for sid in rest) and not set(rest) & set(seen)
    _all_found(node, people)

    # Two jobs at once (one re-index): both finish, each digest once.
    results: list[ReindexSummary] = []
    errors: list[BaseException] = []

    # Both jobs decide the version they build before either may retire one.
    both_started = threading.Barrier(2, timeout=60)
    started: set[int] = set()

    def wait_for_the_other(_: str, __: str) -> None:
        me = threading.get_ident()
        if me not in started:
            started.add(me)
            both_started.wait()

    def run() -> None:
        try:
            results.append(_job(node, rotation_token).run(progress=wait_for_the_other))
        except BaseException as e:  # kept for the test thread
            errors.append(e)

    before = IndexStore(_engine(node)).active()
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert all(r.finished for r in results), results
    assert sum(r.retired for r in results) == 1
    (now,) = IndexStore(_engine(node)).active()
    assert now == before[0] + 1
    rows = _digests(node)
    assert {v for _, _, v in rows} == {now}
    per_subject: dict[str, int] = {}
    for sid, _, _ in rows:
        per_subject[sid] = per_subject.get(sid, 0) + 1
    with _engine(node).connect() as conn:
        sealed = dict(
            conn.execute(
                select(lookup_values.c.subject_id, func.count()).group_by(
                    lookup_values.c.subject_id
                )
            ).all()
        )
    assert per_subject == sealed
    _all_found(node, people)


def test_an_erased_subject_leaves_no_sealed_value_and_the_job_skips_it(
    node: Stack, rotation_token: str
) -> None:
    people = _people(node, 3)
    erased = next(iter(people))
    c = node.client(node.issue(RIGHTS))
    c.erase_subject(erased)
    with _engine(node).connect() as conn:
        for t in (lookup_values, lookups):
            n = conn.execute(
                select(func.count()).select_from(t).where(t.c.subject_id == erased)
            ).scalar_one()
            assert n == 0, t.name
    seen: list[str] = []
    s = _job(node, rotation_token).run(progress=lambda sid, _: seen.append(sid))
    assert s.finished and erased not in seen
    assert _found(node, "email", people[erased]) == []
    _all_found(node, {k: v for k, v in people.items() if k != erased})


def test_lookups_without_sealed_values_keep_the_old_version_unless_dropped(
    node: Stack, rotation_token: str
) -> None:
    people = _people(node, 3)
    legacy = next(iter(people))
    with _engine(node).begin() as conn:  # as if set before values were sealed
        conn.execute(delete(lookup_values).where(lookup_values.c.subject_id == legacy))
    old = IndexStore(_engine(node)).active()[0]
    s = _job(node, rotation_token).run()
    assert not s.finished and not s.retired and s.unsealed_subjects == 1, s
    assert s.unsealed_entries == 1
    assert IndexStore(_engine(node)).active() == [old, old + 1]
    _all_found(node, people)  # nothing lost yet
    s = _job(node, rotation_token).run(drop_unsealed=True)
    assert s.finished and s.retired and s.dropped_entries == 1 and s.unsealed_subjects == 1, s
    assert IndexStore(_engine(node)).active() == [old + 1]
    assert _found(node, "email", people[legacy]) == []
    _all_found(node, {k: v for k, v in people.items() if k != legacy})


def test_attacker_view_no_value_in_clear_and_a_copied_sealed_value_does_not_open(
    node: Stack, rotation_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    marker = uuid.uuid4().hex
    c = node.client(node.issue(RIGHTS))
    phone = f"{int(marker[:8], 16) % 10**8:08d}"
    a = c.create_subject(
        "DE", lookups={"email": f"canary.{marker}@example.org", "phone": f"+49 30 {phone}"}
    ).subject_id
    b = c.create_subject("DE", lookups={"email": _email()}).subject_id
    if node.regions.regions["de"].database_url.startswith("sqlite"):
        files = list(node.db_path("de").parent.glob("de.db*"))
        assert files_containing(files, f"canary.{marker}") == []
        assert files_containing(files, f"4930{phone}") == []
        assert files_containing(files, phone) == []
    engine = _engine(node)
    store = CellStore(engine)
    sealed_a = store.lookup_values(a)
    assert len(sealed_a) == 2
    row_b = store.get_subject(b)
    assert row_b is not None
    dek_b = node.provider.unwrap(
        KeyRef(row_b.key_mount, row_b.key_name, row_b.key_derived),
        row_b.wrapped_dek,
        dek_associated_data(b, "de"),
    )
    for x in sealed_a:
        with pytest.raises(DecryptionFailed):
            open_lookup_value(dek_b, b, "de", x.kind, x.sealed)
    with engine.begin() as conn:  # copied onto b's row
        conn.execute(
            insert(lookup_values).values(
                subject_id=b, value_id="f" * 64, kind="email", sealed=sealed_a[0].sealed
            )
        )
    with caplog.at_level("DEBUG", logger="vault"):
        s = _job(node, rotation_token).run()
    assert s.finished and s.retired, s
    assert _found(node, "email", f"canary.{marker}@example.org") == [a]  # not b
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("vault"))
    assert "does not open" in ours  # said, without the value or whose
    for secret in (marker, phone, a, b):
        assert secret not in ours


def test_the_node_credential_cannot_reindex(node: Stack) -> None:
    """A stolen node credential may use the index key, never add or trim its
    versions: the job fails before changing anything."""
    before = IndexStore(_engine(node)).versions()
    with pytest.raises((KeyGone, KeyServiceUnavailable)):
        _job(node, node.bao.node_token).run()
    assert IndexStore(_engine(node)).versions() == before


def test_migration_from_0007_keeps_existing_lookups(rbao: Bao, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'de.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(__file__).parents[2] / "vault" / "store" / "migrations")
    )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007_scale_pool")
    provider = TransitKeyProvider.connect(rbao.address, rbao.node_token)
    ref = KeyRef(MOUNT, "lookup-index")
    provider.create_key(ref)
    key = b"k" * 32
    wrapped = provider.wrap(ref, key, index_key_aad(MOUNT, 1))
    digest = digest_with(key, "email", "old@example.org")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subjects (id, region, state, minor, key_mount, key_name, "
                "wrapped_dek, created_at, updated_at) VALUES ('de_sub_old', 'de', 'active', 0, "
                "'transit-de', 'subject-x', 'w', 1, 1)"
            )
        )
        conn.execute(
            insert(cell_keys).values(
                name="lookup-index", key_mount=MOUNT, key_name="lookup-index", wrapped=wrapped
            )
        )
        conn.execute(
            text(
                "INSERT INTO lookups (kind, digest, subject_id) VALUES ('email', :d, 'de_sub_old')"
            ),
            {"d": digest},
        )
    assert migrate(engine) == cell_migration_head()
    store = CellStore(engine)
    index = BlindIndex(store, provider, MOUNT)
    assert index.versions() == (1,)
    assert store.find_lookup("email", [index.digest("email", "old@example.org")]) == ["de_sub_old"]
    assert _versions_of(engine) == [1]
    engine.dispose()


def _versions_of(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [int(v) for (v,) in conn.execute(select(lookups.c.key_version))]


def test_a_node_reindexes_on_its_region_schedule(own_bao: Bao, tmp_path: Path) -> None:
    """A one-second index_rotation period for de, none elsewhere: the node's
    worker re-indexes de's lookups by itself (old versions retired), and lookups
    keep finding their subjects all along. (An OpenBao of its own: the job trims
    the Transit key lookup-index that other nodes of an OpenBao would share.)"""
    none = {r: None for r in ("cn", "us", "ru", "sg")}
    scheduled = start_stack(
        own_bao,
        tmp_path / "node",
        index_rotation={"de": KeyRotationPolicy(1, 50.0), **none},
        rotator_token=own_bao.server.rotator_token(load_regions(openbao_addr=own_bao.address)),
        rotation_check_seconds=0.2,
    )
    try:
        people = _people(scheduled, 3)
        index = IndexStore(_engine(scheduled))
        deadline = time.monotonic() + 30
        while min(index.active()) < 3:
            assert time.monotonic() < deadline, "the scheduled re-index did not run"
            _all_found(scheduled, people)
            time.sleep(0.2)
        _all_found(scheduled, people)
        assert [v.state for v in index.versions()][:2] == ["retired", "retired"]
        us = IndexStore(scheduled.vault.parts.stores["us"].engine)
        assert us.active() == [1]
    finally:
        scheduled.stop()


def test_pending_erasures_and_imported_subjects_are_reindexed(
    node: Stack, rotation_token: str
) -> None:
    """A subject whose erasure is pending keeps its lookups (the erasure may
    be cancelled): re-indexed, found again once cancelled. Lookups set by
    ImportSubjects are sealed like CreateSubject's."""
    people = _people(node, 2)
    pending = next(iter(people))
    c = node.client(node.issue(RIGHTS))
    c.erase_subject(pending, grace_period_seconds=3600)
    email = _email()
    imported = c.import_subjects(
        [
            pb.ImportSubjectRequest(
                subject=pb.CreateSubjectRequest(
                    country="DE",
                    idempotency_key=uuid.uuid4().hex,
                    lookups=[pb.Lookup(kind="email", value=email)],
                )
            )
        ]
    ).results[0]
    assert len(CellStore(_engine(node)).lookup_values(imported.subject_id)) == 1
    s = _job(node, rotation_token).run()
    assert s.finished and s.retired and s.unsealed_subjects == 0, s
    assert _found(node, "email", people[pending]) == []  # hidden while pending
    c.cancel_erasure(pending)
    _all_found(node, people)
    assert _found(node, "email", email) == [imported.subject_id]


def test_a_subject_key_rotated_under_the_job_is_read_again(
    node: Stack, rotation_token: str
) -> None:
    """The job read a subject's wrap; a key rotation re-wraps it and retires
    the old version before the job unwraps: the job reads the new wrap."""
    people = _people(node, 2)
    target = next(iter(people))
    rotator = TransitKeyRotator.connect(node.bao.address, rotation_token)
    engine = _engine(node)
    job = _job(node, rotation_token)
    real = job._keys  # type: ignore[attr-defined]

    class RotateFirst:
        done = False

        def unwrap(self, ref: KeyRef, wrapped: str, aad: bytes) -> bytes:
            if ref.name == f"subject-{target}" and not self.done:
                self.done = True
                version = rotator.rotate(ref)
                new = rotator.rewrap(ref, wrapped, aad)
                with engine.begin() as c:
                    c.execute(
                        subjects_t.update()
                        .where(subjects_t.c.id == target)
                        .values(wrapped_dek=new, key_version=version)
                    )
                rotator.retire_below(ref, version)
            return real.unwrap(ref, wrapped, aad)  # type: ignore[no-any-return]

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    stale = RotateFirst()
    job._keys = stale  # type: ignore[attr-defined]
    s = job.run()
    assert stale.done and s.failed == 0 and s.finished and s.retired, s
    node.vault.parts.data_keys["de"].clear()
    _all_found(node, people)

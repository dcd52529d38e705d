"""Index key versions in the cell repository, on a real SQLite file and a real
PostgreSQL database (no key service needed): a write made for other versions
writes nothing; retiring a version is all or nothing and happens once."""

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from vault.store import (
    CellStore,
    IndexStore,
    IndexVersionsChanged,
    LookupWrite,
    SealedLookup,
    SubjectRow,
    SubjectState,
    make_engine,
    migrate,
)
from vault.store._models import cell_keys, lookups, subjects

SID = "de_sub_a"


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[CellStore, IndexStore]]:
    engine = make_engine(database_url)
    migrate(engine)
    s = CellStore(engine)
    s.insert_subject(SubjectRow(SID, "de", SubjectState.ACTIVE, False, "m", "k", "w", 1, 1), None)
    s.add_cell_key("lookup-index", "m", "lookup-index", "vault:v1:old")
    yield s, IndexStore(engine)
    s.close()


def _count(store: CellStore, table: object, **where: object) -> int:
    t = table  # a Table
    q = select(func.count()).select_from(t)  # type: ignore[arg-type]
    for k, v in where.items():
        q = q.where(t.c[k] == v)  # type: ignore[attr-defined]
    with store.engine.connect() as c:
        return int(c.execute(q).scalar_one())


def _sealed(value_id: str) -> SealedLookup:
    return SealedLookup(value_id, "email", b"\x01" + b"s" * 40)


def test_a_write_made_for_other_index_versions_writes_nothing(
    stores: tuple[CellStore, IndexStore],
) -> None:
    store, index = stores
    stale = LookupWrite((1,), (("email", "a" * 64, 1),), (_sealed("1" * 64),))
    assert index.add_version(2, "lookup-index/v2", "m", "lookup-index", "vault:v2:new", 5)
    assert not index.add_version(2, "lookup-index/v2", "m", "lookup-index", "other", 6)
    assert index.active() == [1, 2]
    with pytest.raises(IndexVersionsChanged):
        store.add_lookups(SID, stale, 32)
    row = SubjectRow("de_sub_b", "de", SubjectState.ACTIVE, False, "m", "k", "w", 1, 1)
    with pytest.raises(IndexVersionsChanged):
        store.insert_subject(row, None, None, stale)
    assert store.get_subject("de_sub_b") is None
    assert _count(store, lookups) == 0 and store.lookup_values(SID) == []
    both = LookupWrite(
        (1, 2), (("email", "a" * 64, 1), ("email", "b" * 64, 2)), (_sealed("1" * 64),)
    )
    assert store.add_lookups(SID, both, 32) == 1
    assert store.find_lookup("email", ["b" * 64]) == [SID]
    assert store.find_lookup("email", ["a" * 64, "b" * 64]) == [SID]  # one subject, once
    assert len(store.lookup_values(SID)) == 1


def test_retiring_a_version_is_all_or_nothing_and_happens_once(
    stores: tuple[CellStore, IndexStore],
) -> None:
    store, index = stores
    # Made under version 1 only, with its sealed value: not re-indexed yet.
    store.add_lookups(SID, LookupWrite((1,), (("email", "a" * 64, 1),), (_sealed("1" * 64),)), 32)
    index.add_version(2, "lookup-index/v2", "m", "lookup-index", "vault:v2:new", 5)
    done = index.retire(1, 2, "lookup-index", 9, drop_unsealed=True)
    assert done.repair == (SID,) and not done.retired
    assert index.active() == [1, 2] and index.wrapped("lookup-index") is not None
    assert index.add_digests(SID, 2, [("email", "b" * 64)]) == 1
    assert index.add_digests(SID, 2, [("email", "b" * 64)]) == 0  # idempotent
    # A legacy entry (no sealed value) of another subject.
    store.insert_subject(
        SubjectRow("de_sub_c", "de", SubjectState.ACTIVE, False, "m", "k", "w", 1, 1), None
    )
    both = LookupWrite((1, 2), (("phone", "c" * 64, 1),))
    assert store.add_lookups("de_sub_c", both, 32) == 0  # no digest under v2: counted under v2
    with store.engine.begin() as c:
        c.execute(lookups.delete().where(lookups.c.digest == "c" * 64))
        c.execute(lookups.insert().values(kind="phone", digest="c" * 64, subject_id="de_sub_c"))
    assert index.shortfall(1, 2) == [("de_sub_c", 1)]
    refused = index.retire(1, 2, "lookup-index", 9, drop_unsealed=False)
    assert (refused.retired, refused.unsealed_subjects, refused.unsealed_entries) == (False, 1, 1)
    assert index.active() == [1, 2]
    done = index.retire(1, 2, "lookup-index", 9, drop_unsealed=True)
    assert done.retired and done.unsealed_entries == 1
    assert index.active() == [2]
    assert [(v.version, v.state, v.retired_at) for v in index.versions()] == [
        (1, "retired", 9),
        (2, "active", None),
    ]
    assert index.wrapped("lookup-index") is None and index.wrapped("lookup-index/v2")
    assert _count(store, lookups, key_version=1) == 0
    assert _count(store, cell_keys) == 1
    assert index.retire(1, 2, "lookup-index", 10, drop_unsealed=True).already
    # Erased: nothing is added for it any more.
    store.erase_subject_data(SID, 11)
    assert index.add_digests(SID, 2, [("email", "d" * 64)]) is None
    assert store.lookup_values(SID) == []
    assert _count(store, subjects, id=SID, state="erased") == 1


def test_a_subjects_sealed_values_are_replaced_whole_while_it_is_live(
    stores: tuple[CellStore, IndexStore],
) -> None:
    """What a re-key (a new data key) uses to seal the values again."""
    store, _ = stores
    store.add_lookups(SID, LookupWrite((1,), (("email", "a" * 64, 1),), (_sealed("1" * 64),)), 32)
    again = [SealedLookup("2" * 64, "email", b"\x01" + b"t" * 40)]
    assert store.replace_lookup_values(SID, again)
    assert store.lookup_values(SID) == again
    assert store.find_lookup("email", "a" * 64) == [SID]  # digests untouched
    store.hide(SID, 5)  # erasure pending: not live
    assert not store.replace_lookup_values(SID, [_sealed("3" * 64)])
    assert store.lookup_values(SID) == again

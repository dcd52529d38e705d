"""The cell repository on a real SQLite file and a real PostgreSQL database
(no key service needed)."""

from collections.abc import Iterator

import pytest

from vault.errors import TooLarge
from vault.store import (
    CellStore,
    LookupWrite,
    RecordRow,
    SubjectRow,
    SubjectState,
    make_engine,
    migrate,
)


def _lw(entries: list[tuple[str, str]]) -> LookupWrite:
    """Digests under index key version 1 (the one active version)."""
    return LookupWrite((1,), tuple((k, d, 1) for k, d in entries))


@pytest.fixture
def store(database_url: str) -> Iterator[CellStore]:
    engine = make_engine(database_url)
    migrate(engine)
    s = CellStore(engine)
    for sid in ("de_sub_a", "de_sub_b"):
        s.insert_subject(
            SubjectRow(sid, "de", SubjectState.ACTIVE, False, "m", "k", "w", 1, 1), None
        )
    yield s
    s.close()


def _rec(rid: str, sid: str, version: int = 1) -> RecordRow:
    return RecordRow(rid, sid, "user.name", version, b"\x01sealed", 1, 1)


def test_a_record_is_written_only_while_its_subject_is_live(store: CellStore) -> None:
    assert store.insert_record(_rec("de_rec_1", "de_sub_a"), None)
    store.hide("de_sub_a", 2)
    # An erasure that landed after the request's checks: nothing is written.
    assert not store.insert_record(_rec("de_rec_2", "de_sub_a"), None)
    assert store.add_lookups("de_sub_a", _lw([("email", "11" * 32)]), 32) is None
    assert store.find_lookup("email", "11" * 32) == []
    assert not store.update_record(_rec("de_rec_1", "de_sub_a", version=2), 1)
    assert store.get_record("de_rec_2") is None
    found = store.get_record("de_rec_1")
    assert found is not None and found[0].version == 1
    assert store.insert_record(_rec("de_rec_3", "de_sub_b"), None)  # others unaffected


def test_update_is_compare_and_set_on_version(store: CellStore) -> None:
    store.insert_record(_rec("de_rec_1", "de_sub_b"), None)
    assert store.update_record(_rec("de_rec_1", "de_sub_b", version=2), 1)
    assert not store.update_record(_rec("de_rec_1", "de_sub_b", version=2), 1)


def test_erase_subject_data_removes_everything_of_the_subject(store: CellStore) -> None:
    for i in range(3):
        store.insert_record(_rec(f"de_rec_{i}", "de_sub_a"), None)
    store.insert_record(_rec("de_rec_x", "de_sub_b"), None)
    store.set_consent("de_sub_a", "marketing.communications.email", True, "web", 1)
    assert store.add_lookups("de_sub_a", _lw([("email", "00" * 32)]), 32) == 1
    assert store.erase_subject_data("de_sub_a", 5) == 3
    assert store.all_records("de_sub_a") == []
    assert store.list_consents("de_sub_a") == []
    assert store.find_lookup("email", "00" * 32) == []
    subject = store.get_subject("de_sub_a")
    assert subject is not None and subject.state == "erased" and subject.wrapped_dek == ""
    assert [r.id for r in store.all_records("de_sub_b")] == ["de_rec_x"]


def test_restriction_guards_updates_like_inserts(store: CellStore) -> None:
    store.insert_record(_rec("de_rec_1", "de_sub_a"), None)
    assert store.set_state("de_sub_a", SubjectState.RESTRICTED, 2)
    active_only = (SubjectState.ACTIVE,)
    assert not store.insert_record(_rec("de_rec_2", "de_sub_a"), None, states=active_only)
    assert not store.update_record(_rec("de_rec_1", "de_sub_a", version=2), 1, states=active_only)
    assert store.update_record(
        _rec("de_rec_1", "de_sub_a", version=2), 1
    )  # a restricted-ok purpose


def test_lookups_are_bounded_per_subject_and_idempotent(store: CellStore) -> None:
    entries = [("email", f"{i:02x}" * 32) for i in range(4)]
    assert store.add_lookups("de_sub_a", _lw(entries), 4) == 4
    assert store.add_lookups("de_sub_a", _lw(entries), 4) == 0
    with pytest.raises(TooLarge):
        store.add_lookups("de_sub_a", _lw([("phone", "ff" * 32)]), 4)
    assert store.find_lookup("phone", "ff" * 32) == []


def test_hide_remembers_the_state_and_unhide_restores_it(store: CellStore) -> None:
    assert store.set_state("de_sub_a", SubjectState.RESTRICTED, 2)
    store.hide("de_sub_a", 3)
    store.hide("de_sub_a", 4)  # a second request keeps the first remembered state
    row = store.get_subject("de_sub_a")
    assert row is not None and row.state == SubjectState.ERASURE_PENDING
    assert store.unhide("de_sub_a", 5)
    row = store.get_subject("de_sub_a")
    assert row is not None and row.state == SubjectState.RESTRICTED
    assert not store.unhide("de_sub_a", 6)  # not pending any more


def test_consent_is_recorded_only_while_its_subject_is_live(store: CellStore) -> None:
    assert store.set_consent("de_sub_a", "marketing.communications.email", True, "web", 1)
    assert store.set_consent("de_sub_a", "marketing.communications.email", False, "web", 2)
    store.hide("de_sub_a", 3)
    assert not store.set_consent("de_sub_a", "marketing.communications.email", True, "web", 4)
    assert not store.set_consent("de_sub_a", "analytics.product", True, "web", 4)
    assert store.list_consents("de_sub_a") == [("marketing.communications.email", False, "web", 2)]
    assert not store.set_consent("de_sub_none", "analytics.product", True, "web", 4)

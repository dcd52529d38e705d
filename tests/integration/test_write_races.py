"""The live-subject guard of writes against an erasure committing at the same
moment, on SQLite and on PostgreSQL under READ COMMITTED.

Each test holds one transaction open right after a chosen statement (a hook on
the engine) while the other runs, then lets it commit. Whatever the order, an
erased subject keeps no record, consent or lookup entry: a write either lands
before the erasure (which then deletes it) or finds the subject erased.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select

from vault.errors import StoreUnavailable
from vault.store import (
    CellStore,
    LookupWrite,
    RecordRow,
    RekeyStore,
    SubjectRow,
    SubjectState,
    SwitchExtras,
    make_engine,
    migrate,
)
from vault.store._models import consents, lookups, records, subjects

pytestmark = pytest.mark.integration

SID = "de_sub_race"


class Pause:
    """Holds the transaction of one thread open after its first statement that
    starts with ``prefix``, until ``release`` is set."""

    def __init__(self, engine: Engine, prefix: str) -> None:
        self.prefix = prefix.upper()
        self.thread: int | None = None
        self.reached = threading.Event()
        self.release = threading.Event()
        event.listen(engine, "after_cursor_execute", self._after)

    def _after(self, _conn: Any, _cur: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() != self.thread or self.reached.is_set():
            return
        if statement.lstrip().upper().startswith(self.prefix):
            self.reached.set()
            self.release.wait(10)


class Run(threading.Thread):
    """``fn`` on its own thread; its result or exception kept."""

    def __init__(self, fn: Callable[[], object], pause: Pause | None = None) -> None:
        super().__init__(daemon=True)
        self.fn, self.pause = fn, pause
        self.result: object = None
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.pause is not None:
            self.pause.thread = threading.get_ident()
        try:
            self.result = self.fn()
        except BaseException as e:  # kept for the test thread to judge
            self.error = e


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = make_engine(database_url)
    migrate(e)
    CellStore(e).insert_subject(
        SubjectRow(SID, "de", SubjectState.ACTIVE, False, "m", "k", "w", 1, 1), None
    )
    yield e
    e.dispose()


#: Each guarded write: the call, and the statement after which it is held open.
WRITES: dict[str, tuple[Callable[[CellStore], object], str]] = {
    "record": (
        lambda s: s.insert_record(
            RecordRow("de_rec_race", SID, "user.name", 1, b"\x01sealed", 2, 2), None
        ),
        "INSERT INTO records",
    ),
    "consent": (
        lambda s: s.set_consent(SID, "marketing.email", True, "web", 2),
        "INSERT INTO consents",
    ),
    "lookup": (
        lambda s: s.add_lookups(SID, LookupWrite((1,), (("email", "d" * 64, 1),)), 10),
        "INSERT INTO lookups",
    ),
}


def _left_behind(engine: Engine) -> dict[str, object]:
    with engine.connect() as c:
        left: dict[str, object] = {
            t.name: c.execute(
                select(func.count()).select_from(t).where(t.c.subject_id == SID)
            ).scalar_one()
            for t in (records, consents, lookups)
        }
        left["state"] = c.execute(select(subjects.c.state).where(subjects.c.id == SID)).scalar_one()
    return left


NOTHING_LEFT = {"records": 0, "consents": 0, "lookups": 0, "state": "erased"}


def _not_written(w: Run) -> bool:
    """The write reported that it wrote nothing (or failed closed)."""
    return isinstance(w.error, StoreUnavailable) or (w.error is None and not w.result)


@pytest.mark.parametrize("kind", sorted(WRITES))
def test_a_write_during_an_uncommitted_erasure_writes_nothing(engine: Engine, kind: str) -> None:
    write, _ = WRITES[kind]
    pause = Pause(engine, "UPDATE subjects")
    eraser = Run(lambda: CellStore(engine).erase_subject_data(SID, 3), pause)
    eraser.start()
    assert pause.reached.wait(10)
    writer = Run(lambda: write(CellStore(engine)))
    writer.start()
    writer.join(0.5)  # a correct write waits for the erasure's lock
    pause.release.set()
    eraser.join(10)
    writer.join(10)
    assert eraser.error is None
    assert _not_written(writer), (writer.result, writer.error)
    assert _left_behind(engine) == NOTHING_LEFT


@pytest.mark.parametrize("kind", sorted(WRITES))
def test_an_erasure_during_an_uncommitted_write_deletes_what_it_wrote(
    engine: Engine, kind: str
) -> None:
    write, statement = WRITES[kind]
    pause = Pause(engine, statement)
    writer = Run(lambda: write(CellStore(engine)), pause)
    writer.start()
    assert pause.reached.wait(10)
    eraser = Run(lambda: CellStore(engine).erase_subject_data(SID, 3))
    eraser.start()
    eraser.join(0.5)  # a correct erasure waits for the write's lock
    pause.release.set()
    writer.join(10)
    eraser.join(10)
    assert writer.error is None and writer.result
    assert eraser.error is None
    assert _left_behind(engine) == NOTHING_LEFT


# -- record writes against a rekey's start (the next data key appears) ---------

#: Writes sealed under data-key generation 1: (call, statement held open after).
SEALED_WRITES: dict[str, tuple[Callable[[CellStore], object], str]] = {
    "insert": (
        lambda s: s.insert_record(
            RecordRow("de_rec_new", SID, "user.name", 1, b"\x01sealed-g1", 2, 2, 1), None
        ),
        "INSERT INTO records",
    ),
    "update": (
        lambda s: s.update_record(
            RecordRow("de_rec_old", SID, "user.name", 2, b"\x01sealed-g1-v2", 1, 2, 1), 1
        ),
        "UPDATE records",
    ),
}


@pytest.fixture
def claimed(engine: Engine) -> Engine:
    """The subject with one record of generation 1, claimed by a rekey job."""
    store = CellStore(engine)
    assert store.insert_record(
        RecordRow("de_rec_old", SID, "user.name", 1, b"\x01sealed-g1-v1", 1, 1, 1), None
    )
    assert RekeyStore(engine).claim(SID, "job", 1, 2**62)
    return engine


def _generations(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        rows = c.execute(
            select(records.c.id, records.c.dek_generation).where(records.c.subject_id == SID)
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}


@pytest.mark.parametrize("kind", sorted(SEALED_WRITES))
def test_a_write_sealed_under_the_old_generation_during_an_uncommitted_rekey_start_writes_nothing(
    claimed: Engine, kind: str
) -> None:
    write, _ = SEALED_WRITES[kind]
    pause = Pause(claimed, "UPDATE subjects")
    starter = Run(lambda: RekeyStore(claimed).start(SID, "job", 1, "vault:v1:next"), pause)
    starter.start()
    assert pause.reached.wait(10)
    writer = Run(lambda: write(CellStore(claimed)))
    writer.start()
    writer.join(0.5)  # a correct write waits for the start's lock
    pause.release.set()
    starter.join(10)
    writer.join(10)
    assert starter.error is None and starter.result is True
    assert _not_written(writer), (writer.result, writer.error)
    # Nothing sealed under generation 1 was written once the next key existed:
    # the write is the cell's to seal again (under generation 2).
    assert _generations(claimed) == {"de_rec_old": 1}
    with claimed.connect() as c:
        assert (
            c.execute(select(records.c.version).where(records.c.id == "de_rec_old")).scalar_one()
            == 1
        )


@pytest.mark.parametrize("kind", sorted(SEALED_WRITES))
def test_a_rekey_start_during_an_uncommitted_old_generation_write_leaves_it_to_the_job(
    claimed: Engine, kind: str
) -> None:
    write, statement = SEALED_WRITES[kind]
    pause = Pause(claimed, statement)
    writer = Run(lambda: write(CellStore(claimed)), pause)
    writer.start()
    assert pause.reached.wait(10)
    starter = Run(lambda: RekeyStore(claimed).start(SID, "job", 1, "vault:v1:next"))
    starter.start()
    starter.join(0.5)  # a correct start waits for the write's lock
    pause.release.set()
    writer.join(10)
    starter.join(10)
    assert writer.error is None and writer.result
    assert starter.error is None and starter.result is True
    # The write landed under generation 1, before the start: the job finds it,
    # and the switch is refused while it is there.
    store = RekeyStore(claimed)
    olds = store.old_records(SID, 1, "", 10)
    assert {r.id for r in olds} == set(_generations(claimed))
    extras = SwitchExtras(pseudonym_seal=b"\x01seal")
    assert not store.switch(SID, "job", 1, "vault:v1:next", extras)
    for r in olds:
        assert store.reseal(r, "vault:v1:next", r.envelope + b"-g2")
    assert store.switch(SID, "job", 1, "vault:v1:next", extras)
    assert set(_generations(claimed).values()) == {2}


def test_the_switch_waits_for_a_write_under_the_next_generation_and_keeps_it(
    claimed: Engine,
) -> None:
    store = RekeyStore(claimed)
    assert store.start(SID, "job", 1, "vault:v1:next")
    (old,) = store.old_records(SID, 1, "", 10)
    assert store.reseal(old, "vault:v1:next", b"\x01sealed-g2-v1")
    pause = Pause(claimed, "INSERT INTO records")
    writer = Run(
        lambda: CellStore(claimed).insert_record(
            RecordRow("de_rec_g2", SID, "user.name", 1, b"\x01sealed-g2", 2, 2, 2), None
        ),
        pause,
    )
    writer.start()
    assert pause.reached.wait(10)
    extras = SwitchExtras(pseudonym_seal=b"\x01seal")
    switcher = Run(lambda: store.switch(SID, "job", 1, "vault:v1:next", extras))
    switcher.start()
    switcher.join(0.5)
    pause.release.set()
    writer.join(10)
    switcher.join(10)
    assert writer.error is None and writer.result
    assert switcher.error is None and switcher.result is True
    assert _generations(claimed) == {"de_rec_old": 2, "de_rec_g2": 2}
    with claimed.connect() as c:
        row = c.execute(
            select(
                subjects.c.dek_generation, subjects.c.wrapped_dek, subjects.c.wrapped_dek_next
            ).where(subjects.c.id == SID)
        ).one()
    assert tuple(row) == (2, "vault:v1:next", None)

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
    SubjectRow,
    SubjectState,
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

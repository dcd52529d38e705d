"""What every database of the vault shares: engines, migrations, transactions.

Timestamps in every table are integer microseconds since the epoch (UTC),
identical on SQLite and PostgreSQL; columns say so in their comments.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from vault.config import PoolSettings
from vault.errors import StoreUnavailable


def now_us() -> int:
    """The wall clock in microseconds: the unit of every timestamp column."""
    return time.time_ns() // 1000


class DuplicateKey(Exception):
    """An insert hit a unique constraint (idempotency key or id)."""


@contextmanager
def transaction(engine: Engine, what: str) -> Iterator[Connection]:
    """One transaction; a unique-constraint violation is :class:`DuplicateKey`,
    any other database failure :class:`StoreUnavailable` naming ``what``."""
    try:
        with engine.begin() as conn:
            yield conn
    except IntegrityError as e:
        raise DuplicateKey() from e
    except (DBAPIError, SATimeoutError) as e:
        raise StoreUnavailable(f"{what} database unavailable") from e


def ping(engine: Engine) -> bool:
    """Whether the database answers ``SELECT 1`` now (readiness probes)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (DBAPIError, SATimeoutError):
        return False
    return True


def make_engine(url: str, pool: PoolSettings | None = None) -> Engine:
    """An engine for a database of the vault; SQLite files get WAL and a busy
    timeout, a server database a pool sized by ``pool`` (default: PoolSettings())."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        # Each thread keeps a read connection (CellStore._read) and writes
        # check one out: room for the loop thread, the worker threads and writes.
        engine = create_engine(
            url, connect_args={"timeout": 10}, pool_size=40, max_overflow=40, pool_timeout=10
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            # Deleted rows are overwritten with zeros rather than left in free pages.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    pool = pool or PoolSettings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.timeout_seconds,
    )


def migrate(engine: Engine, script_location: Path) -> str:
    """Brings the schema to the newest alembic revision (idempotent); returns it."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return str(ScriptDirectory.from_config(cfg).get_current_head())

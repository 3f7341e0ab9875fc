"""The hub database: an engine from a URL, sessions, and migrations.

SQLite (the default, one file in the hub's data folder) and PostgreSQL (for a fleet whose
ingest outgrows one file) are both supported. SQLite connections get WAL and a busy timeout,
so several ingest workers and the CLI can share the file, and synchronous=FULL: a commit is
on the disk when it returns. The ingest worker acknowledges a message to the broker after
its commit and the device then deletes it, so with NORMAL (durable only at checkpoints) a
power cut after the ack would lose it everywhere. `bench/ingest.py` measures the cost.

`migrate(url)` brings a database to the newest schema with Alembic; the migration scripts
ship inside the package (hub/migrations), no alembic.ini is needed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

from edge_agent.atomic import make_dirs

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_SYNCHRONOUS = "FULL"  # read at each connect; bench/ingest.py compares NORMAL
MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = ["DatabaseError", "default_url", "make_engine", "migrate", "session", "sqlite_url"]


class DatabaseError(RuntimeError):
    """A database URL the hub cannot use."""


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.expanduser().absolute()}"


def default_url(data_dir: Path) -> str:
    return sqlite_url(data_dir / "hub.sqlite3")


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {SQLITE_SYNCHRONOUS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`: sqlite:///path or postgresql+psycopg://user@host/db."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            make_dirs(Path(parsed.database).parent)  # a folder a power cut forgets loses the file
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() in ("psycopg2", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver the hub ships
        return create_engine(parsed, pool_pre_ping=True, **kwargs)
    raise DatabaseError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session that commits when the block ends normally and rolls back otherwise."""
    with Session(engine, expire_on_commit=False) as db:
        try:
            yield db
            db.commit()
        except BaseException:
            db.rollback()
            raise


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Upgrade the database to `revision` (the newest by default); safe to repeat."""
    from alembic import command

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        command.upgrade(alembic_config(engine), revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()

"""The migrations create exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from hub import db
from hub.config import HubConfig, load_config
from hub.fleet.models import METADATA


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, METADATA))


def _head(engine: Engine) -> str:
    head = ScriptDirectory.from_config(db.alembic_config(engine)).get_current_head()
    assert head is not None
    return head


def test_migration_creates_exactly_the_models_schema(engine: Engine) -> None:
    assert _diff(engine) == []
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    assert tables == set(METADATA.tables)


def test_migrating_again_changes_nothing(engine: Engine) -> None:
    db.migrate(engine)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert versions == [(_head(engine),)]
    assert _diff(engine) == []


def test_sqlite_connections_use_wal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = db.make_engine(db.sqlite_url(tmp_path / "sub" / "hub.sqlite3"))
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            # FULL: a commit the worker acknowledges must survive a power cut
            assert connection.execute(text("PRAGMA synchronous")).scalar() == 2
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
    finally:
        engine.dispose()


def test_database_url_comes_from_the_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert HubConfig().database_url.endswith("/edge-hub/hub.sqlite3")
    url = "postgresql+psycopg://hub@db.example/hub"
    (tmp_path / "none.toml").write_text("")
    assert load_config(tmp_path / "none.toml", {"EDGE_HUB__DATABASE__URL": url}).database_url == url
    with pytest.raises(db.DatabaseError, match="unsupported database"):
        db.make_engine("mysql://x@y/z")

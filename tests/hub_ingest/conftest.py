"""Fixtures: the hub database on SQLite and on a private PostgreSQL (tests/postgres.py),
migrated, and a private broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hub import db
from tests.mqtt_broker import BrokerMissing, MosquittoBroker
from tests.postgres import PrivatePostgres, database_url, postgres_server

__all__ = ["PrivatePostgres", "database_url", "engine", "mqtt_broker", "postgres_server"]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The hub database on each backend, migrated to the newest schema."""
    engine = db.make_engine(database_url)
    db.migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    try:
        broker = MosquittoBroker(tmp_path / "broker")
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with broker:
        yield broker

"""A migrated hub database on SQLite and PostgreSQL, enrolled devices, and a driver whose
clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine

from hub import db
from hub.fleet import registry
from tests.hub_telemetry.helpers import T0
from tests.postgres import database_url, postgres_server

__all__ = ["database_url", "postgres_server"]

LISTED = {("chat", "1.0.0"), ("chat", "2.0.0")}
REVOKED = {("chat", "1.5.0")}


def releases(model: str, version: str) -> str | None:
    """The repository's answer, as hub.rollouts.releases gives it."""
    if (model, version) in LISTED:
        return None
    if (model, version) in REVOKED:
        return f"{model} {version} is revoked"
    return f"{model} {version} is not a published release"


@dataclass
class Clock:
    at: datetime = field(default=T0 + timedelta(minutes=5))

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    db.migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def fleet(engine: Engine) -> list[str]:
    """50 enrolled devices in group 'shop'; every 5th carries the tag ring=canary."""
    registry.create_group(engine, "shop")
    ids = [f"box-{i:02d}" for i in range(50)]
    for i, device_id in enumerate(ids):
        tags = {"ring": "canary"} if i % 5 == 0 else {}
        registry.enroll(engine, device_id, group="shop", tags=tags, at=T0)
    return ids


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()

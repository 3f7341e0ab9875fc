"""The hub database on SQLite and PostgreSQL, and a private broker: the ingest tests'
fixtures, shared (not copied); and the hub's telemetry token seed as a file."""

from pathlib import Path

import pytest

from tests.hub_ingest.conftest import database_url, engine, mqtt_broker, postgres_server
from tests.hub_telemetry.helpers import TOKEN_SEED

__all__ = ["database_url", "engine", "mqtt_broker", "postgres_server", "token_seed_file"]


@pytest.fixture
def token_seed_file(tmp_path: Path) -> Path:
    path = tmp_path / "telemetry-token.seed"
    path.write_bytes(TOKEN_SEED)
    path.chmod(0o600)
    return path

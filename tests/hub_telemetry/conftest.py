"""The hub database on SQLite and PostgreSQL, and a private broker: the ingest tests'
fixtures, shared (not copied)."""

from tests.hub_ingest.conftest import database_url, engine, mqtt_broker, postgres_server

__all__ = ["database_url", "engine", "mqtt_broker", "postgres_server"]

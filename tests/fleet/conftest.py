"""The hub database on SQLite and on a private PostgreSQL (tests/postgres.py)."""

from tests.postgres import database_url, postgres_server

__all__ = ["database_url", "postgres_server"]

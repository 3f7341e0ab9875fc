"""Alembic environment: the engine comes from hub.db (config.attributes["engine"])."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from hub.console import models as _console_tables  # noqa: F401  (on METADATA)
from hub.fleet.models import METADATA
from hub.rollouts import models as _rollout_tables  # noqa: F401  (on METADATA)
from hub.telemetry import models as _telemetry_tables  # noqa: F401  (on METADATA)

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run the hub's migrations through hub.db.migrate()")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()

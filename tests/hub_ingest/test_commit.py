"""How the consumer's commit reacts to database trouble (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from hub.ingest import consumer as consumer_module
from hub.ingest.consumer import UNSTORABLE, IngestConsumer, IngestSettings
from hub.ingest.store import store
from tests.hub_ingest.helpers import count, event


def _consumer(engine: Engine) -> IngestConsumer:
    return IngestConsumer(engine, IngestSettings(host="127.0.0.1", port=1))


def test_a_database_outage_is_waited_out(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = [OperationalError("INSERT", {}, Exception("server closed the connection"))] * 2

    def flaky(*args: Any) -> int:
        if failures:
            raise failures.pop()
        return store(*args)

    monkeypatch.setattr(consumer_module, "store", flaky)
    assert _consumer(engine)._commit([event("dev-1", 1), event("dev-1", 2)]) == 2
    assert not failures and count(engine) == 2


def test_one_message_the_database_refuses_does_not_hold_up_the_rest(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = event("dev-1", 1)

    def picky(connection: Any, envelopes: Any, received_at: Any) -> int:
        if any(e.message_id == poison.message_id for e in envelopes):
            raise IntegrityError("INSERT", {}, Exception("value too long"))
        return store(connection, envelopes, received_at)

    monkeypatch.setattr(consumer_module, "store", picky)
    worker = _consumer(engine)
    assert worker._commit([event("dev-1", 0), poison, event("dev-1", 2)]) == 2
    assert worker.stats.refused == {UNSTORABLE: 1}
    assert count(engine) == 2

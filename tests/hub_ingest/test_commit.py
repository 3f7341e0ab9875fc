"""How the ingest's batch writer reacts to database trouble (no broker needed)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from hub.ingest import consumer as consumer_module
from hub.ingest.consumer import UNSTORABLE, BatchWriter
from hub.ingest.store import store
from tests.hub_ingest.helpers import count, event


def test_a_database_outage_is_waited_out(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    failures = [OperationalError("INSERT", {}, Exception("server closed the connection"))] * 2

    def flaky(*args: Any) -> int:
        if failures:
            raise failures.pop()
        return store(*args)

    monkeypatch.setattr(consumer_module, "store", flaky)
    assert BatchWriter(engine).commit([event("dev-1", 1), event("dev-1", 2)]) == 2
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
    writer = BatchWriter(engine)
    assert writer.commit([event("dev-1", 0), poison, event("dev-1", 2)]) == 2
    assert writer.refused == {UNSTORABLE: 1}
    assert count(engine) == 2

"""`edge-hub telemetry report`: a table or JSON, suppressed cells shown as such; `edge-hub
telemetry rollup`: the daily summary filled on demand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import typer
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from hub.cli import app
from hub.telemetry.cli import parse_since
from hub.telemetry.models import TELEMETRY_DAILY
from tests.hub_telemetry.helpers import T0, busy, store_all

runner = CliRunner()


def run(database_url: str, *args: str, k: int = 5) -> tuple[int, str]:
    env = {"EDGE_HUB__DATABASE__URL": database_url, "EDGE_HUB__TELEMETRY__K_ANONYMITY": str(k)}
    result = runner.invoke(app, ["telemetry", "report", "--model", "chat", *args], env=env)
    return result.exit_code, result.output


def test_report_as_a_table_and_as_json(engine: Engine, database_url: str) -> None:
    store_all(engine, [busy(d) for d in range(5)] + [busy(d, hour=1) for d in range(2)])
    code, output = run(database_url)
    assert code == 0, output
    assert "2030-01-08 00:00" in output and "500" in output and "10 (2.0%)" in output
    assert "suppressed" in output and "< 5" in output
    code, output = run(database_url, "--json", "--bucket", "hour", "--version", "1.0.0")
    assert code == 0, output
    cells = json.loads(output)
    assert [c["suppressed"] for c in cells] == [False, True]
    assert cells[0]["metrics"]["devices"] == 5 and "metrics" not in cells[1]
    code, output = run(database_url, "--json", "--k", "6")
    assert code == 0 and [c["suppressed"] for c in json.loads(output)] == [True, True]
    code, output = run(database_url, "--json", "--since", "2030-01-08T01:30Z")
    assert code == 0 and [c["start"] for c in json.loads(output)] == ["2030-01-08T01:00:00+00:00"]
    code, output = run(database_url, "--since", "yesterday")
    assert code == 2 and "neither an age" in output


def test_k_cannot_go_below_the_config(engine: Engine, database_url: str) -> None:
    code, output = run(database_url, "--k", "2")
    assert code == 1
    assert "--k 2 is below the hub's k_anonymity of 5" in output
    code, output = run(database_url, "--k", "2", k=2)
    assert code == 0 and "no telemetry for chat" in output
    code, output = run(database_url, "--bucket", "week")
    assert code == 1 and "choose hour or day" in output


def test_since() -> None:
    now = T0 + timedelta(days=3)
    assert parse_since("36h", now) == now - timedelta(hours=36)
    assert parse_since("2w", now) == now - timedelta(weeks=2)
    assert parse_since("2030-01-08", now) == T0
    assert parse_since("2030-01-08T02:00+02:00", now) == T0
    assert parse_since("2030-01-08T00:00Z", now).tzinfo is UTC
    with pytest.raises(typer.BadParameter, match="neither an age"):
        parse_since("yesterday", now)
    assert parse_since("1d", datetime(2030, 1, 2, tzinfo=UTC)) == datetime(2030, 1, 1, tzinfo=UTC)


def test_the_table_shows_rejections(engine: Engine, database_url: str) -> None:
    store_all(engine, [busy(d, rejections=7) for d in range(5)])
    code, output = run(database_url)
    assert code == 0, output
    assert "rejected (queue" in output
    row = next(line for line in output.splitlines() if "2030-01-08 00:00" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[5:7] == ["10 (2.0%)", "35"], cells


def test_rollup_summarises_closed_days_once(engine: Engine, database_url: str) -> None:
    # Four years before T0 (2030): a closed day now. The job's clock is the real one.
    store_all(engine, [busy(d, hour=-4 * 365 * 24) for d in range(5)])
    env = {"EDGE_HUB__DATABASE__URL": database_url}
    first = runner.invoke(app, ["telemetry", "rollup"], env=env)
    assert first.exit_code == 0, first.output
    # Every day from the report's to yesterday (the empty ones too, so none is read again).
    assert first.output.startswith("rolled up ")
    with engine.connect() as connection:
        rows = connection.execute(select(TELEMETRY_DAILY.c.version, TELEMETRY_DAILY.c.devices))
        assert rows.all() == [("1.0.0", 5)]
    again = runner.invoke(app, ["telemetry", "rollup"], env=env)
    assert again.output.strip() == "the summary is fresh"

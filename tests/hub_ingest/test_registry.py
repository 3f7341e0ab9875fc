"""Devices and groups, through the registry and the `edge-hub` commands."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from hub.cli import app
from hub.fleet import registry
from hub.ingest.store import now, store
from tests.hub_ingest.helpers import event


def test_groups_enrollment_and_revocation(engine: Engine) -> None:
    registry.create_group(engine, "field")
    with pytest.raises(registry.RegistryError):
        registry.create_group(engine, "field")
    registry.enroll(engine, "dev-1", tags={"site": "north"})
    registry.add_to_group(engine, "field", "dev-1")
    with pytest.raises(registry.RegistryError):
        registry.add_to_group(engine, "field", "nobody")
    assert [d.id for d in registry.list_devices(engine, group="field")] == ["dev-1"]
    revoked = registry.mark_revoked(engine, "dev-1")
    assert revoked.revoked_at is not None
    assert registry.get_device(engine, "dev-1").revoked_at == revoked.revoked_at
    assert registry.enroll(engine, "dev-1").revoked_at is None  # re-enrolled


def test_cli_device_and_group_commands(engine: Engine, database_url: str) -> None:
    with engine.begin() as connection:
        store(connection, [event("dev-7")], now())
    env = {"EDGE_HUB__DATABASE__URL": database_url}
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    assert run("group", "create", "lab") == "created group lab\n"
    assert run("group", "add", "lab", "dev-7") == "dev-7 is in group lab\n"
    listing = run("device", "list")
    assert listing.startswith("dev-7\tgroup=lab\tactive\tlast_seen=2026-01-01 00:00:00+00:00")
    shown = run("device", "show", "dev-7")
    assert "group:       lab" in shown and "event 2026-01-01" in shown and "installed" in shown
    missing = runner.invoke(app, ["device", "show", "nobody"], env=env)
    assert missing.exit_code == 1 and "no device 'nobody'" in missing.output

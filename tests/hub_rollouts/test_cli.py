"""`edge-hub rollout ...` against a real release repository (a published, a revoked and an
unknown release) and a real hub database: bad input names the field and stores nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hub import db
from hub.cli import app
from hub.fleet import registry
from hub.registry.repository import ReleaseRepository
from hub.rollouts import audit, store

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, tiny_model_dir: Path) -> dict[str, str]:
    repo = ReleaseRepository.create(tmp_path / "repo", tmp_path / "keys")
    for version in ("1.0.0", "1.5.0", "2.0.0"):
        repo.publish(tiny_model_dir, "chat", version)
    repo.revoke("chat", "1.5.0")
    url = db.sqlite_url(tmp_path / "hub.sqlite3")
    engine = db.make_engine(url)
    db.migrate(engine)
    registry.create_group(engine, "shop")
    for i in range(20):
        registry.enroll(engine, f"box-{i:02d}", group="shop")
    engine.dispose()
    return {
        "EDGE_HUB__DATABASE__URL": url,
        "EDGE_HUB__REPOSITORY__DIR": str(tmp_path / "repo"),
        "EDGE_HUB__REPOSITORY__KEYS_DIR": str(tmp_path / "keys"),
        "EDGE_HUB__BROKER__IDENTITY_DIR": str(tmp_path / "identity"),
        "EDGE_HUB__API__OPERATOR_TOKENS_FILE": str(tmp_path / "operators.json"),
    }


def hub(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["rollout", *args], env=env)
    return result.exit_code, result.stdout + result.stderr


def rows(env: dict[str, str]) -> tuple[int, int]:
    engine = db.make_engine(env["EDGE_HUB__DATABASE__URL"])
    try:
        return len(store.list_rollouts(engine)), len(audit.entries(engine))
    finally:
        engine.dispose()


CREATE = ("create", "--model", "chat", "--group", "shop", "--operator", "alice")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--version", "9.9.9"), "version: chat 9.9.9 is not a published release"),
        (("--version", "1.5.0"), "version: chat 1.5.0 is revoked"),
        (("--version", "2.0.0", "--waves", "10,50"), "wave_percent: the waves do not add up"),
        (("--version", "2.0.0", "--counts", "5,5"), "wave_counts: the waves do not add up"),
        (("--version", "2.0.0", "--min-success", "1.5"), "install.min_success_ratio"),
        (("--version", "2.0.0", "--window-cron", "0 3 30 2 *"), "window: window cron"),
        (("--version", "2.0.0", "--rate", "0"), "pacing.per_minute"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    env: dict[str, str], args: tuple[str, ...], words: str
) -> None:
    code, out = hub(env, *CREATE, *args)
    assert code == 2, out
    assert words in " ".join(out.split())
    assert rows(env) == (0, 0)


def test_an_empty_target_is_refused(env: dict[str, str]) -> None:
    code, out = hub(env, "create", "--model", "chat", "--version", "2.0.0")
    assert code == 2 and "target: the target is empty" in " ".join(out.split())
    code, out = hub(env, "create", "--model", "chat", "--version", "2.0.0", "--group", "none")
    assert code == 2 and "target.group" in out
    assert rows(env) == (0, 0)


def test_create_list_status_and_actions(env: dict[str, str]) -> None:
    code, out = hub(env, *CREATE, "--version", "2.0.0", "--approval", "--seed", "3")
    assert code == 0, out
    assert "created rollout 1" in out
    code, out = hub(env, "list")
    assert code == 0 and "chat 2.0.0" in out and "created" in out
    code, out = hub(env, "approve", "1", "--operator", "alice")
    assert code == 1 and "a second operator must approve it" in out
    code, out = hub(env, "pause", "1", "--operator", "bob")
    assert code == 1 and "needs a reason" in out
    code, out = hub(env, "pause", "1", "--operator", "bob", "--reason", "freeze week")
    assert code == 0 and "paused" in out
    code, out = hub(env, "status", "1")
    assert code == 0, out
    assert "paused by bob: freeze week" in " ".join(out.split())
    assert "wave" in out and "4" in out  # 1/10/50/100 of 20 devices: four waves
    code, out = hub(env, "rollback", "1", "--operator", "bob", "--reason", "wrong release")
    assert code == 0 and "rolled_back" in out
    code, out = hub(env, "token", "carol", "--role", "approver")
    assert code == 0 and "eop_" in out

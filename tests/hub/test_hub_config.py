"""The hub's typed config: file, then environment; errors name the source and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.config import ConfigError, load_config


def test_defaults_keep_keys_outside_the_served_folder() -> None:
    config = load_config(None, {})
    assert config.artifacts.host == "127.0.0.1"
    assert config.artifacts.port == 8070
    assert config.repository.refresh_interval_seconds == 3600
    assert config.keys_dir == config.repository_dir.parent / "keys"
    assert not config.keys_dir.is_relative_to(config.repository_dir)


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[repository]\ndir = "/srv/repo"\n[artifacts]\nport = 9000\n')
    config = load_config(path, {"EDGE_HUB__ARTIFACTS__PORT": "9100", "EDGE_AGENT__API__PORT": "1"})
    assert config.repository_dir == Path("/srv/repo")
    assert config.keys_dir == Path("/srv/keys")
    assert config.artifacts.port == 9100
    assert load_config(None, {"EDGE_HUB_CONFIG": str(path)}).artifacts.port == 9000


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"EDGE_HUB__ARTIFACTS__PORT": "high"}, "environment variable EDGE_HUB__ARTIFACTS__PORT"),
        ({"EDGE_HUB__ARTIFACTS__PROT": "1"}, "artifacts.prot: unknown key"),
        ({"EDGE_HUB__PORT": "1"}, "EDGE_HUB__PORT: expected EDGE_HUB__SECTION__KEY"),
    ],
)
def test_bad_environment(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, environ)


def test_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[repository]\nrefresh_interval_seconds = 0\n")
    with pytest.raises(ConfigError, match=rf"{path}: repository.refresh_interval_seconds"):
        load_config(path, {})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml", {})

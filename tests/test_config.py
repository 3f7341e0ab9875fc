"""The typed config: TOML file plus environment; errors name the source, key and problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback() -> None:
    config = load_config(None, {})
    assert config.api.host == "127.0.0.1"
    assert config.runtime.intra_op_threads == 0
    assert config.api.api_keys == ()


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nport = 9000\napi_keys = ["a"]\n[runtime]\nmax_batch_size = 2\n')
    config = load_config(
        path, {"EDGE_AGENT__API__PORT": "9100", "EDGE_AGENT__API__API_KEYS": '["b","c"]'}
    )
    assert config.api.port == 9100
    assert config.api.api_keys == ("b", "c")
    assert config.runtime.max_batch_size == 2


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nport = 9001\n")
    assert load_config(None, {"EDGE_AGENT_CONFIG": str(path)}).api.port == 9001


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[api]\nport = 'eighty'\n", "agent.toml: api.port: Input should be a valid integer"),
        ("[api]\nprot = 80\n", "agent.toml: api.prot: unknown key"),
        (
            "[runtime]\nmax_batch_size = 0\n",
            "runtime.max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            "[runtime]\nexecution_provider = 'tpu'\n",
            "runtime.execution_provider: String should match",
        ),
        ("[nonsense]\n", "nonsense: unknown key"),
        ("[api\n", "agent.toml: not valid TOML"),
    ],
)
def test_bad_file_names_file_key_and_problem(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert expected in str(info.value)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable EDGE_AGENT__API__PORT: api\.port"):
        load_config(None, {"EDGE_AGENT__API__PORT": "x"})


def test_malformed_environment_name() -> None:
    with pytest.raises(ConfigError, match="EDGE_AGENT__PORT: expected"):
        load_config(None, {"EDGE_AGENT__PORT": "1"})


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml", {})


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ('[""]', "api.api_keys: Value error, an API key is empty or blank"),
        ('["ok-key", "   "]', "an API key is empty or blank, which would let anyone in"),
        ('[" padded "]', "an API key starts or ends with whitespace"),
    ],
)
def test_blank_api_key_is_a_config_error(tmp_path: Path, keys: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"[api]\napi_keys = {keys}\n"), {})
    assert expected in str(info.value)
    with pytest.raises(ConfigError, match="EDGE_AGENT__API__API_KEYS"):
        load_config(None, {"EDGE_AGENT__API__API_KEYS": keys})


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cors_origins = ['*']", "'*' is not an origin"),
        ("cors_origins = ['app.example.org']", "write scheme://host[:port]"),
        ("allowed_hosts = ['*.example.org']", "not a host name or name:port"),
        ("allowed_hosts = ['http://agent.lan']", "not a host name or name:port"),
    ],
)
def test_hosts_and_origins_must_be_exact(tmp_path: Path, line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(write(tmp_path, f"[api]\n{line}\n"), {})


def test_hosts_and_origins_are_kept_in_lower_case(tmp_path: Path) -> None:
    text = "[api]\nallowed_hosts = ['Agent.LAN.']\ncors_origins = ['https://App.example.org']\n"
    api = load_config(write(tmp_path, text), {}).api
    assert api.allowed_hosts == ("agent.lan",)
    assert api.cors_origins == ("https://app.example.org",)

"""The edge-agent command line, run as a user runs it (a real process)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.ports import free_port

BIN = Path(sys.executable).parent


def agent(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-agent"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout,
    )


def test_version() -> None:
    from edge_agent import __version__

    result = agent("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge-agent {__version__}"


def test_run_streams_text_to_stdout(tiny_model_dir: Path) -> None:
    result = agent("run", str(tiny_model_dir), "def main():", "--max-tokens", "12", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "provider cpu" in result.stderr


def test_run_with_the_same_seed_repeats(tiny_model_dir: Path) -> None:
    args = ("run", str(tiny_model_dir), "x", "--max-tokens", "10", "--seed", "9")
    assert agent(*args).stdout == agent(*args).stdout


def test_chat_reads_turns_from_stdin(tiny_model_dir: Path) -> None:
    result = agent("chat", str(tiny_model_dir), "--max-tokens", "5", input="hello\nagain\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("model> ") == 2


def test_models_lists_installed_names(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "legal-assistant")
    env = {"EDGE_AGENT__STORE__DIR": str(tmp_path)}
    listing = agent("models", env=env)
    assert listing.returncode == 0
    assert listing.stdout.startswith("legal-assistant\t")
    by_name = agent("run", "legal-assistant", "hi", "--max-tokens", "3", env=env)
    assert by_name.returncode == 0, by_name.stderr


def test_unknown_model_name(tmp_path: Path) -> None:
    result = agent("run", "nosuch", "hi", env={"EDGE_AGENT__STORE__DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "no installed model named 'nosuch'" in result.stderr


def test_broken_model_folder_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "genai_config.json").write_text("{")
    result = agent("serve", "--model", str(tmp_path), "--port", "0")
    assert result.returncode == 2
    assert "genai_config.json: malformed JSON" in result.stderr


def test_bad_config_exits_non_zero_naming_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[api]\nport = -1\n")
    result = agent("--config", str(config), "models")
    assert result.returncode == 2
    assert f"{config}: api.port: Input should be greater than or equal to 0" in result.stderr


def test_bad_sampling_option_is_reported(tiny_model_dir: Path) -> None:
    result = agent("run", str(tiny_model_dir), "hi", "--temperature", "9")
    assert result.returncode == 1
    assert "temperature must be between 0 and 2" in result.stderr


def test_serve_answers_the_openai_client_and_stops_cleanly(tiny_model_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(str(BIN / "edge-agent"), "serve", "--model", str(tiny_model_dir)),
            *("--port", str(port), "--name", "assistant"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            except httpx.ConnectError:
                pass
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        with openai.OpenAI(base_url=url, api_key="x", max_retries=0) as client:
            assert [m.id for m in client.models.list()] == ["assistant"]
            reply = client.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert reply.usage is not None and reply.usage.completion_tokens == 5
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"http://127.0.0.1:{port}/v1" in err
    assert "curl" in err


def no_keys_config(tmp_path: Path) -> Path:
    """A config of its own, so no user or system config (with keys) changes the outcome."""
    config = tmp_path / "agent.toml"
    config.write_text(f"[store]\ndir = '{tmp_path / 'data'}'\n")
    return config


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "my-box.lan"])
def test_serve_beyond_loopback_without_keys_refuses_to_start(tmp_path: Path, host: str) -> None:
    # The refusal comes before any other work: with a model that does not exist the
    # answer is still the refusal, and a build without the check never binds the address.
    config = no_keys_config(tmp_path)
    args = ("serve", "--model", "no-such-model", "--host", host, "--port", str(free_port()))
    result = agent("--config", str(config), *args, timeout=30)
    assert result.returncode == 2, result.stderr
    assert f"refusing to listen on {host} without an API key" in result.stderr
    assert "api_keys" in result.stderr and "--insecure-no-auth" in result.stderr
    assert "serving model" not in result.stderr


def test_serve_beyond_loopback_goes_on_with_keys_or_the_insecure_flag(tmp_path: Path) -> None:
    # The model does not exist, so serve stops right after the address check: whatever it
    # says about the model proves the check let it through, and nothing binds 0.0.0.0.
    config = no_keys_config(tmp_path)
    args = ("--config", str(config), "serve", "--model", "no-such-model", "--host", "0.0.0.0")
    insecure = agent(*args, "--insecure-no-auth", timeout=30)
    assert "WARNING: the API listens on 0.0.0.0 with no API key" in insecure.stderr
    assert "no-such-model" in insecure.stderr
    with_keys = agent(*args, env={"EDGE_AGENT__API__API_KEYS": '["k-1234"]'}, timeout=30)
    assert "refusing" not in with_keys.stderr and "WARNING" not in with_keys.stderr
    assert "no-such-model" in with_keys.stderr
    loopback = agent("--config", str(config), "serve", "--model", "no-such-model", timeout=30)
    assert "refusing" not in loopback.stderr and "no-such-model" in loopback.stderr


def test_serve_refuses_a_blank_api_key(tmp_path: Path) -> None:
    config = no_keys_config(tmp_path)
    result = agent(
        *("--config", str(config), "serve", "--model", "x"),
        env={"EDGE_AGENT__API__API_KEYS": '[""]'},
        timeout=30,
    )
    assert result.returncode == 2
    assert "an API key is empty or blank" in result.stderr

"""What a new operator meets in the first hour: help screens, mistakes in the environment,
a folder that is not a model, enrolling at the wrong port. Real processes throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import agent


@pytest.mark.parametrize(
    ("args", "shown", "not_shown"),
    [
        (["--help"], ["--verbose  -v "], ["<bool>"]),
        (["enroll", "--help"], ["enroll [OPTIONS] [HUB_URL]"], ["{hub_url}", "<bool>"]),
        (["update", "--help"], ["update [OPTIONS] [MODEL]..."], ["[[MODEL]...]...", "<list"]),
        (["run", "--help"], ["--stop", "<str>", "run [OPTIONS] MODEL PROMPT"], ["<list[str]>"]),
    ],
)
def test_help_screens_use_the_usual_conventions(
    args: list[str], shown: list[str], not_shown: list[str]
) -> None:
    result = agent(*args, env={"COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    for text in shown:
        assert text in result.stdout, result.stdout
    for text in not_shown:
        assert text not in result.stdout, result.stdout


def test_an_unknown_section_in_the_environment_names_the_variable() -> None:
    result = agent("models", env={"EDGE_AGENT__NOPE__X": "1"})
    assert result.returncode == 2
    assert "environment variable EDGE_AGENT__NOPE__X: nope: unknown key" in result.stderr
    assert "defaults" not in result.stderr


def test_run_on_a_folder_that_is_not_a_model_says_so_once(tmp_path: Path) -> None:
    for command in (["run", str(tmp_path), "hi"], ["chat", str(tmp_path)]):
        result = agent(*command, input="")
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("this is not an onnxruntime-genai model folder") == 1


def test_status_says_the_real_telemetry_window(tmp_path: Path) -> None:
    env = {
        "EDGE_AGENT__STORE__DIR": str(tmp_path),
        "EDGE_AGENT__SYNC__BROKER_URL": "mqtt://127.0.0.1:1",
        "EDGE_AGENT__SYNC__DEVICE_ID": "d1",
        "EDGE_AGENT__TELEMETRY__WINDOW_SECONDS": "300",
    }
    result = agent("status", env=env)
    assert result.returncode == 0, result.stderr
    assert "counts and histograms per 5 minutes" in result.stdout
    assert "hourly" not in result.stdout


def test_enrolling_at_an_agents_port_says_it_is_not_the_hub(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    hub_url = f"https://127.0.0.1:{server.port}"
    token = "s3cret-s3cret-s3cret@sha256:" + "ab" * 32
    result = agent(
        "enroll",
        hub_url,
        "--device-id",
        "d1",
        "--token",
        token,
        env={"EDGE_AGENT__STORE__DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert f"{hub_url} is an edge-agent's API (plain HTTP), not the hub" in result.stderr
    assert "`edge-hub serve` printed" in result.stderr
    assert not (tmp_path / "identity").exists()
